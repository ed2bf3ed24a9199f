"""Config fields: every setting declared once, as a dataclass field that carries its help, how it appears on the
command line and its bounds; the checks of a config are generated from those bounds.

`setting(default, help=..., min=..., choices=..., ...)` declares a field. The bounds it may carry:

- `min` / `max`: inclusive bounds; `above` / `below`: exclusive ones (a rate that must be positive: `above=0`).
- `choices`: the values allowed (also the command line's choices).
- `nonblank=True`: a string (or list) that must not be empty or only spaces; None, where the type allows it, is
  fine. `endswith`: the suffixes a file name must have.
- `why`: the reason for a bound, said in its error message.

None is never out of bounds (an optional setting left unset). On a nested config field, `bounds={"steps":
{"min": 0}}` replaces bounds of the nested config's fields where it is used (train-bridge may run no LM steps).
The other metadata keys shape the command-line option (textjepa/cli/options.py).

A config class derives from `Checked`: its `validate()` checks every field's bounds, nested configs included,
then the config's `check()`, the only hand-written part: rules that relate two fields. An error names the
option as the user gives it (`--max-pairs`, or a positional's name) in one line.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from textjepa.errors import TextJepaError

T = TypeVar("T")

BOUND_KEYS = ("min", "max", "above", "below", "choices", "nonblank", "endswith", "why")


def setting(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, **metadata: Any) -> Any:
    """A config field with its help text (`help=`), its bounds (`min=`, `choices=`, ...; see above) and, optionally,
    how it appears on the command line (`flag=`, `positional=`, ...; see textjepa/cli/options.py)."""
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def field_bounds(fld: dataclasses.Field, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """A field's bounds: those declared with it, with a nesting config's `bounds` for it laid over them."""
    declared = {key: fld.metadata[key] for key in BOUND_KEYS if key in fld.metadata}
    return {**declared, **(overrides or {}).get(fld.name, {})}


def option_label(fld: dataclasses.Field) -> str:
    """How the user names a field: its flag (`--max-vocab`), or a positional's name (`prompt`)."""
    if fld.metadata.get("positional"):
        return fld.name.replace("_", " ")
    return "--" + (fld.metadata.get("flag") or fld.name.replace("_", "-"))


def _number(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def describe_range(bounds: Mapping[str, Any]) -> str:
    """The numeric bounds in words ("between 1 and 64", "at least 2", "positive"); "" when there are none."""
    low, high, above, below = (bounds.get(key) for key in ("min", "max", "above", "below"))
    if low is not None and high is not None:
        return f"between {_number(low)} and {_number(high)}"
    if above == 0 and high is None and below is None:
        return "positive"
    parts = [
        f"{words} {_number(bound)}"
        for words, bound in (("at least", low), ("above", above), ("at most", high), ("below", below))
        if bound is not None
    ]
    return " and ".join(parts)


def _inside(value: Any, bounds: Mapping[str, Any]) -> bool:
    # Each test is written so that NaN fails it.
    tests = (
        ("min", lambda bound: value >= bound),
        ("max", lambda bound: value <= bound),
        ("above", lambda bound: value > bound),
        ("below", lambda bound: value < bound),
    )
    return all(test(bounds[key]) for key, test in tests if bounds.get(key) is not None)


def bound_problem(value: Any, bounds: Mapping[str, Any]) -> str | None:
    """What is wrong with `value` under `bounds` (the message after the option's name), or None."""
    if value is None:
        return None
    why = f" ({bounds['why']})" if bounds.get("why") else ""
    if bounds.get("nonblank") and not (value.strip() if isinstance(value, str) else value):
        return f"is empty{why}"
    if "choices" in bounds and value not in bounds["choices"]:
        return f"must be one of {', '.join(map(str, bounds['choices']))}, got {value!r}"
    suffixes = bounds.get("endswith")
    if suffixes and not str(value).endswith(tuple(suffixes)):
        return f"must end in {' or '.join(suffixes)}, got {value!r}"
    if not _inside(value, bounds):
        return f"must be {describe_range(bounds)}{why}, got {value}"
    if isinstance(value, float) and describe_range(bounds) and not math.isfinite(value):
        return f"must be a finite number, got {value}"  # inf passes `above=0`, and would end in a NaN loss
    return None


def _check(fld: dataclasses.Field, value: Any, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    problem = bound_problem(value, field_bounds(fld, overrides))
    if problem:
        raise TextJepaError(f"{option_label(fld)} {problem}")


def check_value(config_type: type, name: str, value: Any) -> None:
    """Check a value against the bounds of the field `name` of `config_type` (a value read from a file, say)."""
    _check(next(fld for fld in dataclasses.fields(config_type) if fld.name == name), value)


def check_fields(
    config: Any, overrides: Mapping[str, Mapping[str, Any]] | None = None, skip: Iterable[str] = ()
) -> None:
    """Raise a TextJepaError for the first field of `config` (nested configs included, except those in `skip`)
    out of its bounds, then run each config's own `check()` of the rules between its fields."""
    for fld in dataclasses.fields(config):
        if fld.name in skip:
            continue
        value = getattr(config, fld.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_fields(value, fld.metadata.get("bounds"))
        else:
            _check(fld, value, overrides)
    check = getattr(config, "check", None)
    if check is not None:
        check()


class Checked:
    """A config whose `validate()` is generated from its fields' bounds; `check()` holds rules between fields."""

    def validate(self) -> None:
        check_fields(self)

    def check(self) -> None:
        """Rules that relate two or more fields (a single field's bounds are declared with it)."""


def with_values(config: T, values: Mapping[str, Any]) -> T:
    """`config` with the settings named by dotted paths (`"train.lr"`, as the command line's dests) replaced."""
    nested: dict[str, dict[str, Any]] = {}
    direct: dict[str, Any] = {}
    for path, value in values.items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    for head, inner in nested.items():
        direct[head] = with_values(getattr(config, head), inner)
    return dataclasses.replace(config, **direct)
