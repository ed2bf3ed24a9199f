"""The seed's command style: `textjepa --latent DATA [steps] [batch] ...` with positional shape arguments.

"The seed" is the original system textjepa re-implements; its documented commands keep working. Each form is
rewritten to its subcommand with named options (a pure argv rewrite, before any parsing), so both styles share
one code path.
Positional values follow the flag in the seed's order; any later `--option` passes through unchanged.
"""

from __future__ import annotations

from textjepa.errors import TextJepaError

# flag -> (subcommand, required positionals -> how they are passed, optional positionals in seed order)
SEED_FORMS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "--latent": (
        "latent",
        ("DATA",),
        (
            "steps",
            "batch",
            "dim",
            "max-seq",
            "layers",
            "heads",
            "max-vocab",
            "max-spans",
            "max-span-len",
            "max-masked-ratio",
        ),
    ),
    "--eval-jepa": ("eval-jepa", ("MODEL", "--vocab", "DATA"), ("steps", "batch", "dim", "max-seq", "layers", "heads")),
    "--train-world": (
        "train-world",
        ("DATA",),
        ("steps", "batch", "dim", "max-seq", "layers", "heads", "max-vocab", "cond-dim"),
    ),
    "--eval-world": (
        "eval-world",
        ("MODEL", "--vocab", "DATA"),
        ("steps", "batch", "dim", "max-seq", "layers", "heads", "cond-dim"),
    ),
    "--infer-agent": (
        "infer",
        ("MODEL", "--vocab", "PROMPT"),
        ("dim", "max-seq", "layers", "heads", "cond-dim", "max-new-tokens"),
    ),
    "--serve": ("serve", ("MODEL", "--vocab"), ("bind", "dim", "max-seq", "layers", "heads", "cond-dim")),
    "--prepare-ultrachat": ("prepare", ("ultrachat",), ("OUTPUT", "context-window", "min-tokens", "max-rows")),
}

# The seed forms that train, and so write a run folder.
WRITES_RUN_FOLDER = ("latent", "train-world")


def translate_seed_form(argv: list[str]) -> list[str]:
    if not argv or argv[0] not in SEED_FORMS:
        return argv
    flag, rest = argv[0], argv[1:]
    command, required, optional = SEED_FORMS[flag]
    if any(a in ("-h", "--help") for a in rest):
        # Constant words (the "ultrachat" of --prepare-ultrachat) name the subcommand whose help is meant.
        return [command, *(r for r in required if r.islower() and not r.startswith("--")), "--help"]
    positionals: list[str] = []
    while rest and not (rest[0].startswith("--") and len(rest[0]) > 2):
        positionals.append(rest.pop(0))
    # Constant words (such as the "ultrachat" of --prepare-ultrachat) are not taken from the user.
    constant = [r for r in required if r.islower() and not r.startswith("--")]
    needed = [r for r in required if r not in constant]
    if len(positionals) < len(needed):
        missing = " ".join(f"<{n.lstrip('-').lower()}>" for n in needed[len(positionals) :])
        raise TextJepaError(f"{flag} needs {missing} (usage: textjepa {flag} {' '.join(needed)} ...)")
    if len(positionals) > len(needed) + len(optional):
        raise TextJepaError(f"{flag}: too many positional arguments ({len(positionals)})")
    # Positionals first, then options: argparse binds an optional positional only before options.
    words, options = [command, *constant], []
    for name, value in zip(needed, positionals):
        (options.extend([name, value]) if name.startswith("--") else words.append(value))
    for name, value in zip(optional, positionals[len(needed) :]):
        (words.append(value) if name.isupper() else options.extend([f"--{name}", value]))
    # The seed trained its own encoder (a BPE tokenizer on the data); the subcommands default to a pretrained
    # backbone. With --init-encoder the checkpoint says which encoder it is.
    if command in WRITES_RUN_FOLDER and not _given(rest, "--backbone", "--init-encoder"):
        options.extend(["--backbone", "scratch"])
    # The seed wrote its runs to the current folder, and its documented next step (`--train-world ...
    # --init-encoder model_latent_*.safetensors`) looks for them there; the subcommands keep `runs/`.
    if command in WRITES_RUN_FOLDER and not _given(rest, "--out-dir"):
        options.extend(["--out-dir", "."])
    return words + options + rest


def _given(args: list[str], *flags: str) -> bool:
    return any(a == flag or a.startswith(f"{flag}=") for a in args for flag in flags)
