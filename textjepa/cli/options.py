"""Command-line options generated from the config dataclasses, so that each setting is declared once: as a field.

A field's metadata (see `textjepa.fields.setting`) says how it appears on the command line:

- `help`: the help text; "(default X)" is appended from the command's defaults unless `show_default=False`, after
  the field's numeric bounds (`min`, `above`, ...; textjepa/fields.py).
- `flag`: the option's name when it is not the field's (`vocab_size` -> `max-vocab`). A bool that defaults to
  True is switched off by `--no-<flag>`; one that defaults to False is switched on by `--<flag>`.
- `aliases`: more spellings of the same option (`--input_dir`).
- `positional`: True for a required positional, "?" for an optional one, "+" for one or more.
- `metavar`, `choices`, `required`, `nargs`, `action` ("append": repeatable; given values replace the default).
- `cli=False`: not on the command line.
- `group`: the help section of the option; on a nested config field, the section of all its options (else the
  first line of the nested class's docstring). `only` / `exclude` on a nested config field: which of its
  fields become options.

Nested config dataclasses are flattened: their fields become options under their own names (so a config nested
into another keeps its flags), and two fields that would make the same option are an error when the parser is
built. Every option is added with `default=SUPPRESS`, so the parsed namespace holds exactly what the user gave:
`config_from_args` lays that over the command's defaults (which may differ per command, e.g. the world model's
faster teacher), and `given_options` tells which options were given.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from textjepa.fields import describe_range, field_bounds

ConfigT = TypeVar("ConfigT")


@dataclasses.dataclass(frozen=True)
class Option:
    """One field of a (possibly nested) config as it appears on the command line."""

    dest: str  # dotted path from the command's config: "train.steps"
    field: dataclasses.Field
    hint: Any  # the field's resolved type
    default: Any  # from the command's defaults
    bounds: Mapping[str, Any]  # the field's bounds where this command uses it

    @property
    def meta(self) -> Mapping[str, Any]:
        return self.field.metadata

    @property
    def flag(self) -> str:
        return self.meta.get("flag") or self.field.name.replace("_", "-")

    @property
    def name(self) -> str:
        """The option's user-facing name with underscores (`max_vocab`), as error messages spell it."""
        return self.flag.replace("-", "_")


def _is_config(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _scalar(hint: Any) -> tuple[Any, bool]:
    """(the element type, whether it is a list or tuple) of a field type such as `int | None` or `list[str]`."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _scalar(inner[0]) if len(inner) == 1 else (str, False)
    if origin in (list, tuple):
        return typing.get_args(hint)[0], True
    return hint, False


def iter_options(
    defaults: Any,
    prefix: str = "",
    only: typing.Iterable[str] | None = None,
    exclude: typing.Iterable[str] = (),
    bounds: Mapping[str, Mapping[str, Any]] | None = None,
) -> Iterator[Option]:
    """Every command-line option of a config instance, nested configs flattened, in declaration order; `bounds`:
    the nesting field's replacements of bounds (textjepa/fields.py)."""
    hints = typing.get_type_hints(type(defaults))
    keep, skip = (set(only) if only is not None else None), set(exclude)
    for fld in dataclasses.fields(defaults):
        if fld.metadata.get("cli", True) is False or fld.name in skip or (keep is not None and fld.name not in keep):
            continue
        value = getattr(defaults, fld.name)
        dest = f"{prefix}.{fld.name}" if prefix else fld.name
        if _is_config(value):
            meta = fld.metadata
            yield from iter_options(value, dest, meta.get("only"), meta.get("exclude", ()), meta.get("bounds"))
        elif typing.get_origin(hints[fld.name]) is not dict and hints[fld.name] is not dict:
            yield Option(dest, fld, hints[fld.name], value, field_bounds(fld, bounds))


def _help(option: Option, text: str) -> str:
    default = option.default
    if limits := describe_range(option.bounds):
        text = f"{text}, {limits}" if text else limits
    shown = option.meta.get("show_default", True) and default not in (None, "", [], ())
    if shown and not isinstance(default, bool) and option.meta.get("positional") in (None, "?"):
        rendered = " ".join(map(str, default)) if isinstance(default, list | tuple) else default
        text = f"{text} (default {rendered})" if text else f"default {rendered}"
    return text.replace("%", "%%")  # argparse formats help with %


def add_config_arguments(
    parser: argparse.ArgumentParser,
    defaults: Any,
    *,
    prefix: str = "",
    only: typing.Iterable[str] | None = None,
    exclude: typing.Iterable[str] = (),
    hidden: bool = False,
    group: argparse._ActionsContainer | None = None,
    tweaks: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Option]:
    """Add an option (or positional) for every field of `defaults`; `tweaks` adds argparse keywords per dest
    (for what only the command layer knows, such as choices from a data module). Top-level fields go into
    `group` (default: the parser), nested ones into a section each. Returns the options added."""
    options = list(iter_options(defaults, prefix, only, exclude))
    sections: dict[str, argparse._ActionsContainer] = {"": group or parser}
    for option in options:
        section = (option.dest[len(prefix) + 1 :] if prefix else option.dest).rpartition(".")[0]
        title = option.meta.get("group") if not hidden else None  # a top-level field's own help section
        if title:
            section = f"group:{title}"
        if section not in sections:
            sections[section] = parser.add_argument_group(title or _group_title(defaults, section))
        _add(sections[section], option, hidden, dict((tweaks or {}).get(option.dest, {})))
    return options


def _group_title(defaults: Any, section: str) -> str:
    """A nested config's help section: its field's `group` metadata, else its class docstring's first line."""
    owner, title = defaults, None
    for name in section.split("."):
        title = next(f for f in dataclasses.fields(owner) if f.name == name).metadata.get("group")
        owner = getattr(owner, name)
    return title or (type(owner).__doc__ or section).strip().splitlines()[0].rstrip(".")


def _add(container: argparse._ActionsContainer, option: Option, hidden: bool, extra: dict) -> None:
    meta, (kind, many) = option.meta, _scalar(option.hint)
    text = extra.pop("help", meta.get("help", ""))
    kwargs: dict[str, Any] = {
        "default": argparse.SUPPRESS,
        "help": argparse.SUPPRESS if hidden else _help(option, text),
    }
    for key in ("metavar", "choices", "required", "nargs", "action"):
        if key in meta:
            kwargs[key] = meta[key]
    if kind is bool:
        kwargs["action"] = "store_false" if option.default else "store_true"
    else:
        kwargs["type"] = kind
        if many and "nargs" not in kwargs and kwargs.get("action") != "append":
            kwargs["nargs"] = "+"
    kwargs.update(extra)
    positional = meta.get("positional")
    if positional:
        kwargs.pop("required", None)
        if positional in ("?", "+"):
            kwargs["nargs"] = positional
        kwargs.setdefault("metavar", option.field.name.upper())
        container.add_argument(option.dest, **kwargs)
        return
    if kind is not bool and "choices" not in kwargs:
        kwargs.setdefault("metavar", option.flag.upper().replace("-", "_"))  # not the dotted dest
    flag = f"--no-{option.flag}" if kind is bool and option.default else f"--{option.flag}"
    container.add_argument(flag, *meta.get("aliases", ()), dest=option.dest, **kwargs)


def config_from_args(defaults: ConfigT, namespace: argparse.Namespace, prefix: str = "") -> ConfigT:
    """`defaults` with every option the user gave laid over it (nested configs included)."""
    changes = {}
    for fld in dataclasses.fields(defaults):
        dest, value = (f"{prefix}.{fld.name}" if prefix else fld.name), getattr(defaults, fld.name)
        if _is_config(value):
            changes[fld.name] = config_from_args(value, namespace, dest)
        elif hasattr(namespace, dest):
            given = getattr(namespace, dest)
            changes[fld.name] = tuple(given) if isinstance(value, tuple) and isinstance(given, list) else given
    return dataclasses.replace(defaults, **changes)


def given_options(namespace: argparse.Namespace, options: typing.Iterable[Option]) -> dict[str, Any]:
    """The options among `options` that the user gave, by their user-facing names (`max_vocab`)."""
    return {option.name: getattr(namespace, option.dest) for option in options if hasattr(namespace, option.dest)}
