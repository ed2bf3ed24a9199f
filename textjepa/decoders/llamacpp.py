"""The `llamacpp` decoder: a GGUF model through llama.cpp.

- llama-cpp-python (`pip install textjepa[llamacpp]`): with a bridge trained for the same base model,
  the soft prefix enters as embeddings through the low-level batch API (`llama_batch.embd`), then the
  chat-templated prompt follows as tokens at the next positions; without a bridge the conditioning
  vector goes into the prompt as text (JEPA_DECODER_COND_FORMAT), as the original did.
- `JEPA_DECODER_BIN` (an external llama-completion / llama-cli binary) as a subprocess fallback; it
  takes text only, so it is used without a bridge.
Model: `--decoder-model`, the bridge's recorded model, `JEPA_DECODER_MODEL`, or the first
`./models/**/*.gguf`; context, GPU layers, temperature and repeat penalty from JEPA_DECODER_*.
"""

from __future__ import annotations

import codecs
import ctypes
import os
import subprocess
import sys
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from textjepa.config import DecoderSettings
from textjepa.decoders.base import Conditioning, Generation, TokenStreamingDecoder
from textjepa.decoders.hf import PreparedPrompt, load_bridge_for, prepare_prompt
from textjepa.decoders.models import ModelSource, import_optional, resolve_decoder_model
from textjepa.decoders.prefix_bridge import Bridge, DecoderFingerprint, fingerprint_from_embeddings
from textjepa.decoders.prompting import with_text_conditioning
from textjepa.decoders.settings import decoder_settings, with_options
from textjepa.errors import TextJepaError
from textjepa.settings import Settings

LLAMACPP_INSTALL = 'pip install "textjepa[llamacpp]" (compiles llama.cpp, ~10 min on 2 cores)'
GGUF_INSTALL = "pip install gguf"


def gguf_fingerprint(path: Path) -> DecoderFingerprint:
    """The bridge fingerprint from the GGUF's token-embedding tensor (only the probed rows are
    dequantized), so that it equals what transformers computes from the same file."""
    gguf = import_optional("gguf", f"checking a bridge against a GGUF needs the gguf package: {GGUF_INSTALL}")

    from textjepa.decoders.prefix_bridge import probe_rows

    reader = gguf.GGUFReader(str(path))
    tensors = [t for t in reader.tensors if t.name == "token_embd.weight"]
    if not tensors:
        raise TextJepaError(f"{path} has no token_embd.weight tensor; cannot check the bridge against it")
    tensor = tensors[0]
    hidden, vocab = int(tensor.shape[0]), int(tensor.shape[1])
    rows = probe_rows(vocab)
    values = gguf.quants.dequantize(np.asarray(tensor.data[rows]), tensor.tensor_type).reshape(len(rows), -1)
    weight = torch.zeros((vocab, hidden), dtype=torch.float32)
    weight[rows] = torch.from_numpy(np.ascontiguousarray(values[:, :hidden], dtype=np.float32))
    return fingerprint_from_embeddings(weight, path.name, str(path))


class LlamaCppDecoder(TokenStreamingDecoder):
    """llama-cpp-python: prefix embeddings through `llama_batch.embd`, then tokens, then sampling."""

    name = "llamacpp"

    def __init__(self, llama_cpp, source: ModelSource, bridge: Bridge | None, settings: DecoderSettings) -> None:
        self.source, self.bridge, self.settings = source, bridge, settings
        self.lib = llama_cpp
        try:
            self.llm = llama_cpp.Llama(
                model_path=str(source.path),
                n_ctx=settings.ctx,
                n_gpu_layers=settings.ngl,
                # llama.cpp's own default is half the cores (1 of 2 here: 74 tokens/s against 110 with
                # 2 threads on SmolLM2); the same threads as torch keeps TEXTJEPA_NUM_THREADS and the
                # busy-machine rule in charge.
                n_threads=torch.get_num_threads(),
                n_threads_batch=torch.get_num_threads(),
                seed=settings.seed,
                verbose=False,
            )
        except Exception as exc:  # llama.cpp reports a bad file as ValueError/RuntimeError
            raise TextJepaError(f"GGUF {source.path} failed to load in llama.cpp: {exc}") from exc
        # Free the model while the interpreter is still whole: llama-cpp-python's own __del__ at exit
        # runs after its module globals are gone and prints a traceback.
        weakref.finalize(self, self.llm.close)
        if bridge is not None and bridge.decoder.hidden_size != self.llm.n_embd():
            raise TextJepaError(
                f"bridge {bridge.path.name} makes {bridge.decoder.hidden_size}-wide embeddings; "
                f"{source.name} takes {self.llm.n_embd()}"
            )
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        template = self.llm.metadata.get("tokenizer.chat_template")
        self.formatter = None
        if template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            eos, bos = self.llm.token_eos(), self.llm.token_bos()
            self.formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=self.llm._model.token_get_text(eos) if eos != -1 else "",
                bos_token=self.llm._model.token_get_text(bos) if bos != -1 else "",
            )

    # ------------------------------------------------------------------ prompt

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        clean = [{"role": str(m.get("role", "user")), "content": str(m.get("content") or "")} for m in messages]
        if self.formatter is not None:
            try:
                text = self.formatter(messages=clean).prompt
            except Exception as exc:  # jinja errors from the model's own template
                raise TextJepaError(f"the GGUF's chat template rejected the messages: {exc}") from exc
        else:
            text = "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in clean) + "\nAssistant:"
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def prepare(self, messages: list[dict], conditioning: Conditioning, max_new_tokens: int) -> PreparedPrompt:
        return prepare_prompt(
            messages, conditioning, self.bridge, self.settings, self.prompt_ids, self.llm.n_ctx(), max_new_tokens
        )

    # ------------------------------------------------------------------ decoding

    def _decode(self, batch) -> None:
        code = self.lib.llama_decode(self.llm.ctx, batch)
        if code != 0:
            raise TextJepaError(f"llama_decode failed ({code}); the prompt may not fit JEPA_DECODER_CTX")

    def _feed_prefix(self, prefix: torch.Tensor) -> int:
        """The soft prefix as input embeddings at positions 0..K-1 (no logits needed)."""
        lib = self.lib
        k, width = prefix.shape
        rows = np.ascontiguousarray(prefix.detach().float().cpu().numpy(), dtype=np.float32)
        batch = lib.llama_batch_init(k, width, 1)
        try:
            ctypes.memmove(batch.embd, rows.ctypes.data, rows.nbytes)
            for i in range(k):
                batch.pos[i] = i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 0
            batch.n_tokens = k
            self._decode(batch)
        finally:
            lib.llama_batch_free(batch)
        return k

    def _feed_tokens(self, ids: list[int], start: int) -> int:
        """Prompt tokens in chunks of n_batch; logits only for the last one."""
        lib = self.lib
        size = max(1, min(self.llm.n_batch, len(ids)))
        batch = lib.llama_batch_init(size, 0, 1)
        try:
            for offset in range(0, len(ids), size):
                chunk = ids[offset : offset + size]
                for i, token in enumerate(chunk):
                    batch.token[i] = token
                    batch.pos[i] = start + offset + i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = 0
                batch.n_tokens = len(chunk)
                if offset + size >= len(ids):
                    batch.logits[len(chunk) - 1] = 1
                self._decode(batch)
        finally:
            lib.llama_batch_free(batch)
        return start + len(ids)

    def _sampler(self, settings: DecoderSettings, history: list[int]):
        lib = self.lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        lib.llama_sampler_chain_add(
            chain,
            lib.llama_sampler_init_penalties(
                self.llm.n_vocab(), settings.repeat_last_n, settings.repeat_penalty, 0.0, 0.0
            ),
        )
        if settings.temperature <= 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        else:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(settings.top_k))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(settings.top_p, 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(settings.temperature))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(settings.seed))
        for token in history:  # the repeat penalty sees the prompt, as in the transformers backend
            lib.llama_sampler_accept(chain, token)
        return chain

    def _ingest(self, prepared: PreparedPrompt) -> int:
        """A fresh context holding the prefix embeddings and the prompt; returns the next position."""
        lib = self.lib
        lib.llama_memory_clear(lib.llama_get_memory(self.llm.ctx), True)
        self.llm.n_tokens = 0  # the high-level object's prompt cache no longer describes the context
        position = self._feed_prefix(prepared.prefix) if prepared.prefix is not None else 0
        if not prepared.ids:
            raise TextJepaError("the prompt is empty after templating")
        return self._feed_tokens(prepared.ids, position)

    def next_token_logits(self, prepared: PreparedPrompt) -> np.ndarray:
        """The logits of the reply's first token given the prefix and the prompt (a copy, [vocab])."""
        self._ingest(prepared)
        logits = self.lib.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(logits, shape=(self.llm.n_vocab(),)).copy()

    def token_ids(
        self, prepared: PreparedPrompt, max_new_tokens: int, settings: DecoderSettings, ignore_eos: bool = False
    ) -> Iterator[int]:
        lib = self.lib
        position = self._ingest(prepared)
        chain = self._sampler(settings, prepared.ids)
        batch = lib.llama_batch_init(1, 0, 1)
        try:
            for _ in range(max_new_tokens):
                token = lib.llama_sampler_sample(chain, self.llm.ctx, -1)
                if lib.llama_vocab_is_eog(self.vocab, token) and not ignore_eos:
                    return
                yield token
                batch.token[0], batch.pos[0], batch.n_seq_id[0] = token, position, 1
                batch.seq_id[0][0], batch.logits[0], batch.n_tokens = 0, 1, 1
                self._decode(batch)
                position += 1
        finally:
            lib.llama_batch_free(batch)
            lib.llama_sampler_free(chain)

    def _pieces(self, prepared: PreparedPrompt, max_new_tokens: int, options: dict, counter: list) -> Iterator[str]:
        settings = with_options(self.settings, options)
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for token in self.token_ids(prepared, max_new_tokens, settings, bool(options.get("ignore_eos"))):
            counter[0] += 1
            piece = utf8.decode(self.llm.detokenize([token], special=False))
            if piece:
                yield piece
        tail = utf8.decode(b"", final=True)
        if tail:
            yield tail


class LlamaBinaryDecoder:
    """JEPA_DECODER_BIN: an external llama-completion / llama-cli, the conditioning as text."""

    name = "llamacpp"

    def __init__(self, binary: str, source: ModelSource, settings: DecoderSettings) -> None:
        path = Path(binary)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise TextJepaError(f"JEPA_DECODER_BIN={binary} is not an executable file")
        self.binary, self.source, self.settings = path, source, settings

    def command(self, prompt: str, max_new_tokens: int, settings: DecoderSettings) -> list[str]:
        return [
            str(self.binary),
            "-m",
            str(self.source.path),
            "-p",
            prompt,
            "-n",
            str(max_new_tokens),
            "-c",
            str(settings.ctx),
            "-ngl",
            str(settings.ngl),
            "--temp",
            str(settings.temperature),
            "--repeat-penalty",
            str(settings.repeat_penalty),
            "--seed",
            str(settings.seed),
            "--no-display-prompt",
        ]

    def generate(
        self, messages: list[dict], conditioning: Conditioning, max_new_tokens: int = 128, **options
    ) -> Generation:
        settings = with_options(self.settings, options)
        messages = with_text_conditioning(messages, conditioning.vector, settings.cond_format)
        # The binary applies no chat template to -p; a plain transcript works with any model.
        prompt = "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages) + "\nAssistant:"
        try:
            result = subprocess.run(
                self.command(prompt, max_new_tokens, settings),
                capture_output=True,
                text=True,
                timeout=600,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TextJepaError(f"JEPA_DECODER_BIN {self.binary} failed: {exc}") from exc
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise TextJepaError(f"JEPA_DECODER_BIN {self.binary} exited with {result.returncode}: {last}")
        text = result.stdout.strip()
        return Generation(
            text=text,
            notes=[f"decoded by {self.binary.name} (subprocess; conditioning as text: {settings.cond_format})"],
            completion_tokens=len(text.split()),
        )

    def stream(
        self, messages: list[dict], conditioning: Conditioning, max_new_tokens: int = 128, **options
    ) -> Iterator[str]:
        yield self.generate(messages, conditioning, max_new_tokens, **options).text


def load_llamacpp_decoder(
    world_checkpoint, bridge: str | None = None, decoder_model: str | None = None, env: Settings | None = None
):
    env = env or Settings()
    loaded_bridge = load_bridge_for(bridge, world_checkpoint)
    source = resolve_decoder_model(decoder_model, loaded_bridge.decoder.path if loaded_bridge else None, env)
    if source.kind != "gguf":
        raise TextJepaError(
            f"--decoder llamacpp needs a GGUF file, got the model folder {source.path} (use --decoder transformers)"
        )
    settings = decoder_settings(env)
    binary = env.decoder_bin
    if binary and loaded_bridge is None:
        return LlamaBinaryDecoder(binary, source, settings)
    if binary:
        print(
            "note: JEPA_DECODER_BIN takes text only; the bridge's prefix needs llama-cpp-python's embedding input",
            file=sys.stderr,
        )
    llama_cpp = import_llama_cpp()
    if loaded_bridge is not None:
        loaded_bridge.check_decoder(gguf_fingerprint(source.path))
    return LlamaCppDecoder(llama_cpp, source, loaded_bridge, settings)


def import_llama_cpp():
    return import_optional("llama_cpp", f"--decoder llamacpp needs llama-cpp-python: {LLAMACPP_INSTALL}")
