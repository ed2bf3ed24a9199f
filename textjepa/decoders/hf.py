"""The `transformers` decoder: a Hugging Face causal LM conditioned through its input embeddings.

With a bridge, the projector turns the world model's predicted next latent into K soft-prompt
embeddings placed before the chat-templated prompt's token embeddings (`inputs_embeds`); an ablated
conditioning feeds the projector a zero latent. Without a bridge the LM gets the original's text form
of the conditioning vector in a system message (JEPA_DECODER_COND_FORMAT), and says so in its notes.
Generation is a token-by-token loop over the KV cache, so streaming needs no thread.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from textjepa.config import DecoderSettings
from textjepa.decoders.base import Conditioning, TokenStreamingDecoder
from textjepa.decoders.hf_model import CausalLM, load_causal_lm
from textjepa.decoders.models import resolve_decoder_model
from textjepa.decoders.prefix_bridge import Bridge, load_bridge
from textjepa.decoders.prompting import truncate_left, with_text_conditioning
from textjepa.decoders.sampling import IncrementalText, next_token
from textjepa.decoders.settings import decoder_settings, with_options
from textjepa.settings import Settings


@dataclass
class PreparedPrompt:
    """What goes into the LM: optional prefix rows, then prompt ids (already cut to the context)."""

    prefix: torch.Tensor | None  # [K, hidden]
    ids: list[int]
    notes: list[str] = field(default_factory=list)


def prefix_latent(conditioning: Conditioning) -> torch.Tensor:
    """The projector's input: the predicted next latent, or zeros when the conditioning is ablated."""
    latent = conditioning.predicted.float()
    return torch.zeros_like(latent) if conditioning.ablated else latent


def prepare_prompt(
    messages: list[dict],
    conditioning: Conditioning,
    bridge: Bridge | None,
    settings: DecoderSettings,
    tokenize,
    context_length: int,
    max_new_tokens: int,
) -> PreparedPrompt:
    """Shared by both LLM backends: the prefix (or the text conditioning) and the left-truncated ids."""
    notes = []
    prefix = None
    if bridge is not None:
        with torch.no_grad():
            prefix = bridge.projector(prefix_latent(conditioning).unsqueeze(0))[0]
    else:
        messages = with_text_conditioning(messages, conditioning.vector, settings.cond_format)
        notes.append(
            f"no bridge: the conditioning enters as text ({settings.cond_format}); "
            "train a prefix bridge with textjepa train-bridge for conditioning through the embeddings"
        )
    ids = tokenize(messages)
    k = 0 if prefix is None else prefix.shape[0]
    window = min(settings.ctx, context_length)
    ids, dropped = truncate_left(ids, window - k - max_new_tokens)
    if dropped:
        note = f"prompt truncated from the left by {dropped} tokens to fit the decoder context ({window})"
        print(f"warning: {note}", file=sys.stderr)
        notes.append(note)
    return PreparedPrompt(prefix, ids, notes)


class TransformersDecoder(TokenStreamingDecoder):
    name = "transformers"

    def __init__(self, lm: CausalLM, bridge: Bridge | None, settings: DecoderSettings) -> None:
        self.lm, self.bridge, self.settings = lm, bridge, settings
        if bridge is not None:
            bridge.projector.to("cpu")

    def _settings(self, options: dict) -> DecoderSettings:
        return with_options(self.settings, options)

    def prepare(self, messages: list[dict], conditioning: Conditioning, max_new_tokens: int) -> PreparedPrompt:
        return prepare_prompt(
            messages,
            conditioning,
            self.bridge,
            self.settings,
            self.lm.prompt_ids,
            self.lm.context_length,
            max_new_tokens,
        )

    def input_embeddings(self, prepared: PreparedPrompt) -> torch.Tensor:
        embeds = self.lm.embed(torch.tensor([prepared.ids], dtype=torch.long))
        if prepared.prefix is not None:
            prefix = prepared.prefix.to(device=embeds.device, dtype=embeds.dtype).unsqueeze(0)
            embeds = torch.cat([prefix, embeds], dim=1)
        return embeds

    @torch.no_grad()
    def next_token_logits(self, prepared: PreparedPrompt) -> np.ndarray:
        """The logits of the reply's first token given the prefix and the prompt ([vocab])."""
        logits, _ = self.lm.next_logits(inputs_embeds=self.input_embeddings(prepared))
        return logits.reshape(-1).float().cpu().numpy()

    @torch.no_grad()
    def token_ids(
        self, prepared: PreparedPrompt, max_new_tokens: int, settings: DecoderSettings, ignore_eos: bool = False
    ) -> Iterator[int]:
        """Generated ids one at a time: one forward over the prompt, then one per token on the KV cache."""
        generator = torch.Generator().manual_seed(settings.seed)
        logits, cache = self.lm.next_logits(inputs_embeds=self.input_embeddings(prepared))
        history = list(prepared.ids)
        for _ in range(max_new_tokens):
            token = next_token(logits, history, settings, generator)
            if token in self.lm.stop_ids and not ignore_eos:
                return
            yield token
            history.append(token)
            step = torch.tensor([[token]], dtype=torch.long, device=self.lm.device)
            logits, cache = self.lm.next_logits(cache=cache, input_ids=step)

    def _pieces(self, prepared: PreparedPrompt, max_new_tokens: int, options: dict, counter: list) -> Iterator[str]:
        text = IncrementalText(self.lm.decode)
        settings = self._settings(options)
        for token in self.token_ids(prepared, max_new_tokens, settings, bool(options.get("ignore_eos"))):
            counter[0] += 1
            piece = text.push(token)
            if piece:
                yield piece


def load_bridge_for(bridge_path: str | None, world_checkpoint) -> Bridge | None:
    """The bridge, checked against the world model before any LM is loaded (a mismatch fails fast)."""
    if not bridge_path:
        return None
    bridge = load_bridge(bridge_path)
    if world_checkpoint is not None:
        bridge.check_world(world_checkpoint)
    return bridge


def load_transformers_decoder(
    world_checkpoint,
    device: torch.device,
    bridge: str | None = None,
    decoder_model: str | None = None,
    env: Settings | None = None,
) -> TransformersDecoder:
    loaded_bridge = load_bridge_for(bridge, world_checkpoint)
    source = resolve_decoder_model(decoder_model, loaded_bridge.decoder.path if loaded_bridge else None, env)
    settings = decoder_settings(env)
    lm = load_causal_lm(source, device, settings=env)
    if loaded_bridge is not None:
        loaded_bridge.check_decoder(lm.fingerprint())
    return TransformersDecoder(lm, loaded_bridge, settings)
