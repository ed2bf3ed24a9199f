"""The LLM decoders' settings: defaults, then the environment the command was started with (JEPA_DECODER_*, as
the original read them), then explicit options."""

from __future__ import annotations

import dataclasses

from textjepa.config import DecoderSettings
from textjepa.decoders.prompting import COND_FORMATS
from textjepa.errors import TextJepaError
from textjepa.settings import Settings


def decoder_settings(env: Settings | None = None, **overrides) -> DecoderSettings:
    """Defaults from config.py, then `env` (none given: none set), then explicit overrides (None: not given)."""
    values = (env or Settings()).decoder_overrides
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings = dataclasses.replace(DecoderSettings(), **values)
    if settings.ctx < 16:
        raise TextJepaError(f"JEPA_DECODER_CTX must be at least 16, got {settings.ctx}")
    if settings.temperature < 0:
        raise TextJepaError(f"the temperature must be >= 0, got {settings.temperature}")
    if settings.repeat_penalty <= 0:
        raise TextJepaError(f"JEPA_DECODER_REPEAT_PENALTY must be > 0, got {settings.repeat_penalty}")
    if settings.cond_format not in COND_FORMATS:
        raise TextJepaError(
            f"JEPA_DECODER_COND_FORMAT must be one of {', '.join(COND_FORMATS)}, got {settings.cond_format!r}"
        )
    return settings


def with_options(settings: DecoderSettings, options: dict) -> DecoderSettings:
    """Per-request options (temperature, seed, repeat_penalty) over the decoder's settings."""
    changes = {k: options[k] for k in ("temperature", "seed", "repeat_penalty") if options.get(k) is not None}
    return dataclasses.replace(settings, **changes)
