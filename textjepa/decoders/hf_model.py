"""A Hugging Face causal LM for the transformers decoder, bridge training and conditioning evaluation.

Loading a GGUF through transformers dequantizes every tensor and rebuilds the tokenizer from the GGUF
vocabulary, which takes 30-60 s on 2 cores for a 135M model; a small GGUF is therefore converted once
and cached as an ordinary model folder (float32 safetensors, ~1 s to load), keyed by the file's size,
mtime and a hash of its first megabytes. `TEXTJEPA_GGUF_CACHE=off` turns that off; the cache lives
in `TEXTJEPA_GGUF_CACHE` or `~/.cache/textjepa/gguf`.
"""

from __future__ import annotations

import hashlib
import inspect
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from textjepa.decoders.models import LLM_INSTALL, ModelSource, import_optional
from textjepa.decoders.prefix_bridge import DecoderFingerprint, fingerprint_from_embeddings
from textjepa.decoders.prompting import chat_prompt_text
from textjepa.errors import TextJepaError
from textjepa.io import atomic_directory
from textjepa.settings import Settings

# Only GGUFs up to this size are cached dequantized (float32 is ~5x a Q4 file).
GGUF_CACHE_MAX_BYTES = 600 * 1024 * 1024
_HASH_BYTES = 16 * 1024 * 1024


@dataclass
class CausalLM:
    """A loaded, frozen causal LM with its tokenizer."""

    source: ModelSource
    model: torch.nn.Module
    tokenizer: object  # a transformers tokenizer
    device: torch.device
    stop_ids: set[int] = field(default_factory=set)

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[0])

    @property
    def context_length(self) -> int:
        config = self.model.config
        return int(getattr(config, "max_position_embeddings", None) or 2048)

    def fingerprint(self) -> DecoderFingerprint:
        return fingerprint_from_embeddings(
            self.model.get_input_embeddings().weight.detach(), self.source.name, str(self.source.path)
        )

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids.to(self.device))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, messages: Sequence[dict]) -> list[int]:
        """The chat template applied to the messages, ending where the assistant's reply starts."""
        return self.encode(chat_prompt_text(self.tokenizer, messages))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @cached_property
    def _forward_parameters(self) -> frozenset[str]:
        return frozenset(inspect.signature(self.model.forward).parameters)

    def next_logits(self, cache=None, **inputs) -> tuple[torch.Tensor, object]:
        """Logits of the last position and the updated KV cache, across transformers versions (the
        cache argument is `cache` from 5.x, `past_key_values` before; only the last position's
        logits are computed when the model allows it)."""
        parameters = self._forward_parameters
        extra = {}
        if cache is not None:
            extra["cache" if "cache" in parameters else "past_key_values"] = cache
        for name in ("logits_to_keep", "num_logits_to_keep"):
            if name in parameters:
                extra[name] = 1
                break
        out = self.model(use_cache=True, **inputs, **extra)
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = out.past_key_values
        return out.logits[0, -1], new_cache


def gguf_cache_root(setting: str) -> Path | None:
    """TEXTJEPA_GGUF_CACHE: a folder, 'off', or unset (the default folder)."""
    if setting.lower() in ("off", "0", "no", "false"):
        return None
    return Path(setting).expanduser() if setting else Path.home() / ".cache" / "textjepa" / "gguf"


def gguf_cache_key(path: Path) -> str:
    stat = path.stat()
    digest = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}:".encode())
    with path.open("rb") as handle:
        digest.update(handle.read(_HASH_BYTES))
    return f"{path.stem}-{digest.hexdigest()[:16]}"


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _from_pretrained(folder: str, gguf_file: str | None, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs)
    return model, tokenizer


def _save_converted(model, tokenizer, target: Path) -> None:
    """Write the dequantized model as a plain folder, atomically (temp dir + rename)."""
    try:
        with atomic_directory(target) as tmp:
            # The GGUF "quantizer" transformers attaches is only a loading aid; the weights are float now.
            model.hf_quantizer = None
            model.config.__dict__.pop("quantization_config", None)
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
    except OSError as exc:  # a cache that cannot be written only costs time
        print(f"note: could not cache the converted GGUF in {target.parent}: {exc}", file=sys.stderr)


def _load_gguf(source: ModelSource, dtype: torch.dtype, settings: Settings):
    import_optional("gguf", f"loading a GGUF through transformers needs gguf: {LLM_INSTALL}")
    import_optional("accelerate", f"loading a GGUF through transformers needs accelerate: {LLM_INSTALL}")
    root = gguf_cache_root(settings.gguf_cache)
    cached = None
    if root is not None and source.path.stat().st_size <= GGUF_CACHE_MAX_BYTES:
        cached = root / gguf_cache_key(source.path)
        if (cached / "config.json").is_file():
            try:
                return _from_pretrained(str(cached), None, dtype)
            except Exception:  # a damaged cache entry is rebuilt from the GGUF
                shutil.rmtree(cached, ignore_errors=True)
    model, tokenizer = _from_pretrained(str(source.path.parent), source.path.name, dtype)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        _save_converted(model, tokenizer, cached)
    return model, tokenizer


def load_causal_lm(
    source: ModelSource, device: torch.device, dtype: torch.dtype = torch.float32, settings: Settings | None = None
) -> CausalLM:
    """Load and freeze an LM; a model that fails to load is a one-line error, not a traceback. `settings`: where a
    GGUF converted for transformers is cached (TEXTJEPA_GGUF_CACHE; none given: the default folder)."""
    import_optional("transformers", f"the transformers decoder needs it: {LLM_INSTALL}")
    _quiet_transformers()
    try:
        if source.kind == "gguf":
            model, tokenizer = _load_gguf(source, dtype, settings or Settings())
        else:
            model, tokenizer = _from_pretrained(str(source.path), None, dtype)
    except TextJepaError:
        raise
    except Exception as exc:  # transformers/gguf raise many types for unreadable or unsupported files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TextJepaError(f"decoder model {source.path} failed to load: {reason[:300]}") from exc
    if not hasattr(model, "get_input_embeddings") or model.get_input_embeddings() is None:
        raise TextJepaError(f"decoder model {source.path} is not a causal LM with input embeddings")
    model.to(device).eval().requires_grad_(False)
    stop_ids = {int(i) for i in _as_list(getattr(model.generation_config, "eos_token_id", None))}
    if tokenizer.eos_token_id is not None:
        stop_ids.add(int(tokenizer.eos_token_id))
    return CausalLM(source, model, tokenizer, device, stop_ids)


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple, set)) else [value]
