"""The environment, read in one place: every variable textjepa looks at, with what it means.

The command line builds one `Settings` at its entry (`Settings.from_env()`) and passes it down; library functions
take a `Settings` argument and, when called without one (from Python), behave as if no variable were set: a Python
caller who wants the environment passes `Settings.from_env()`. No other module reads `os.environ`. Values are
parsed when asked for, so a malformed variable is an error only for the command that uses it (as before this
object existed), and the error names the variable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from textjepa.errors import TextJepaError

T = TypeVar("T")

# Every variable, and what it does. README/docs list the user-facing ones; this is the source.
VARIABLES: dict[str, str] = {
    "TEXTJEPA_NUM_THREADS": "torch threads per process (default: the cores, divided among local torchrun processes)",
    "TEXTJEPA_API_KEY": "serve: the API key, when --api-key is not given (keeps it out of `ps`)",
    "TEXTJEPA_DIST_TIMEOUT": "seconds a distributed collective may wait for the other ranks (default 600)",
    "TEXTJEPA_EMULATE_WORLD_SIZE": "testing aid: one process draws the batches of N torchrun processes",
    "TEXTJEPA_DEBUG_DIR": "testing aid: each rank writes the record numbers it drew and its loss here",
    "TEXTJEPA_GGUF_CACHE": "where GGUF files converted for transformers are cached ('off' disables the cache)",
    "JEPA_DECODER_MODEL": "the LLM decoder's model when --decoder-model is not given",
    "JEPA_DECODER_BIN": "an external llama.cpp binary for the llamacpp decoder (text conditioning only)",
    "JEPA_DECODER_CTX": "LLM decoder context tokens",
    "JEPA_DECODER_NGL": "LLM layers offloaded to the GPU (llama.cpp)",
    "JEPA_DECODER_TEMP": "LLM sampling temperature (0: greedy)",
    "JEPA_DECODER_REPEAT_PENALTY": "LLM repeat penalty",
    "JEPA_DECODER_COND_FORMAT": "text form of the conditioning when there is no bridge",
    "JEPA_WIKI_MAX_FILES": "hub:wikimedia/wikipedia: at most this many parquet files",
    "ARROW_DEFAULT_MEMORY_POOL": "pyarrow's allocator; when set, textjepa leaves the choice to it",
    # Set by torchrun.
    "WORLD_SIZE": "torchrun: processes in the job",
    "RANK": "torchrun: this process's rank",
    "LOCAL_RANK": "torchrun: this process's rank on its node",
    "LOCAL_WORLD_SIZE": "torchrun: processes on this node",
    "MASTER_ADDR": "torchrun: the rendezvous host",
    "MASTER_PORT": "torchrun: the rendezvous port",
}

# JEPA_DECODER_* -> (DecoderSettings field, type), as the original system read them.
DECODER_VARIABLES: dict[str, tuple[str, type]] = {
    "JEPA_DECODER_CTX": ("ctx", int),
    "JEPA_DECODER_NGL": ("ngl", int),
    "JEPA_DECODER_TEMP": ("temperature", float),
    "JEPA_DECODER_REPEAT_PENALTY": ("repeat_penalty", float),
    "JEPA_DECODER_COND_FORMAT": ("cond_format", str),
}


@dataclass(frozen=True)
class Settings:
    """A snapshot of the variables in `VARIABLES` (unset and empty ones left out), with typed accessors."""

    values: Mapping[str, str] = field(default_factory=dict)
    blank: frozenset[str] = frozenset()  # variables that are set, but empty or only spaces

    def __hash__(self) -> int:  # a decoder is cached per (name, options), and the settings are one of its options
        return hash((tuple(sorted(self.values.items())), self.blank))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        source = os.environ if environ is None else environ
        known = {name: source[name].strip() for name in VARIABLES if source.get(name, "").strip()}
        blank = frozenset(name for name in VARIABLES if name in source and not source[name].strip())
        return cls(MappingProxyType(known), blank)

    def get(self, name: str) -> str | None:
        if name not in VARIABLES:
            raise KeyError(f"{name} is not a variable textjepa reads (add it to settings.VARIABLES)")
        return self.values.get(name)

    def _parse(self, name: str, kind: Callable[[str], T], what: str) -> T | None:
        raw = self.get(name)
        if raw is None:
            return None
        try:
            return kind(raw)
        except ValueError:
            raise TextJepaError(f"{name}={raw!r} is not {what}") from None

    def _whole(self, name: str, default: int) -> int:
        value = self._parse(name, int, "a whole number")
        return default if value is None else value

    @property
    def num_threads(self) -> int | None:
        return self._parse("TEXTJEPA_NUM_THREADS", int, "a whole number")

    @property
    def api_key(self) -> str | None:
        if "TEXTJEPA_API_KEY" in self.blank:
            # Like --api-key "": an empty key is a mistake (a variable meant to hold one), not a wish for none.
            raise TextJepaError("TEXTJEPA_API_KEY is set but empty; set it to a key, or unset it to serve without one")
        return self.get("TEXTJEPA_API_KEY")

    @property
    def dist_timeout(self) -> float | None:
        return self._parse("TEXTJEPA_DIST_TIMEOUT", float, "a number of seconds")

    @property
    def emulate_world_size(self) -> int:
        return self._whole("TEXTJEPA_EMULATE_WORLD_SIZE", 1)

    @property
    def debug_dir(self) -> str | None:
        return self.get("TEXTJEPA_DEBUG_DIR")

    @property
    def gguf_cache(self) -> str:
        return self.get("TEXTJEPA_GGUF_CACHE") or ""

    @property
    def decoder_model(self) -> str | None:
        return self.get("JEPA_DECODER_MODEL")

    @property
    def decoder_bin(self) -> str | None:
        return self.get("JEPA_DECODER_BIN")

    @property
    def decoder_overrides(self) -> dict:
        """The JEPA_DECODER_* values that are set, by DecoderSettings field name."""
        out = {}
        for variable, (name, kind) in DECODER_VARIABLES.items():
            value = self._parse(variable, kind, f"a valid {kind.__name__}")
            if value is not None:
                out[name] = value
        return out

    @property
    def wiki_max_files(self) -> str | None:
        """Raw: the hub module checks it and says what it must be."""
        return self.get("JEPA_WIKI_MAX_FILES")

    @property
    def arrow_pool_chosen(self) -> bool:
        return self.get("ARROW_DEFAULT_MEMORY_POOL") is not None

    @property
    def world_size(self) -> int:
        return self._whole("WORLD_SIZE", 1)

    @property
    def local_world_size(self) -> int:
        return self._whole("LOCAL_WORLD_SIZE", 1)

    @property
    def local_rank(self) -> int:
        return self._whole("LOCAL_RANK", 0)
