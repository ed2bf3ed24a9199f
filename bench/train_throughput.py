"""Training throughput of the real JEPA step against this machine's fp32 GEMM peak, measured in the same run.

For the default shape (dim 368, max_seq 128, 4 layers, 8 heads, batch 32) and a small one, on real text of
varied length (standard-library docstring paragraphs), this times the real training step
(`textjepa.train.loop.train_step`: LatentStage.make_inputs with the teacher forward, online forward,
backward, clipping, AdamW, EMA) for

- `bucketed`: the training sampler as it runs by default (batches grouped by length, padded to their longest);
- `fixed`: the same step on batches padded to max_seq (a padded fixed-length batch of the same shape);

and, interleaved with them, the best fp32 matmul FLOP/s. FLOPs are counted analytically from the shapes each
step really computes:

- model FLOPs (MFU numerator): online encoder + predictor + regulariser, forward and backward (3x forward);
- all FLOPs: model FLOPs + the teacher's forward on the full view.

Reported: MFU and all-FLOPs utilisation per mode, and useful throughput (real tokens, padding excluded) of
`bucketed` over `fixed`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import bench_threads, demo_paragraphs, gemm_peak_flops, goal_row, write_json  # noqa: E402

from textjepa.config import DataConfig, LatentConfig, ModelConfig, TrainConfig  # noqa: E402
from textjepa.data.batches import Batch, TrainSampler  # noqa: E402
from textjepa.data.sources import LATENT_RECORDS, load_corpus  # noqa: E402
from textjepa.train.latent import LatentStage  # noqa: E402
from textjepa.train.loop import build_optimizer, train_step  # noqa: E402
from textjepa.train.schedules import lr_factor  # noqa: E402

SHAPES = {
    "default": {"dim": 368, "layers": 4, "heads": 8, "max_seq": 128, "batch": 32},
    "small": {"dim": 128, "layers": 2, "heads": 4, "max_seq": 64, "batch": 32},
}


def encoder_forward_flops(config: ModelConfig, batch: int, width: int) -> float:
    """Matmul FLOPs of one encoder forward on a [batch, width] input (what the hardware computes)."""
    d, tokens = config.dim, batch * width
    linear = 2 * tokens * (3 * d * d + d * d + 2 * config.mlp_ratio * d * d)  # qkv, proj, MLP in and out
    attention = 2 * 2 * batch * width * width * d  # QK^T and AV over all heads
    return config.layers * (linear + attention)


def step_flops(config: ModelConfig, batch: int, width: int, masked: int, reg_rows: int) -> tuple[float, float]:
    """(model FLOPs, all FLOPs) of one training step; backward counts 2x forward."""
    encoder = encoder_forward_flops(config, batch, width)
    predictor = 2 * masked * 2 * config.dim * config.predictor_width
    regulariser = 2 * reg_rows * config.dim * config.dim  # covariance matrix
    model = 3 * (encoder + predictor + regulariser)
    return model, model + encoder  # + the teacher's forward


def pad_to(batch: Batch, width: int) -> Batch:
    """The same rows padded to a fixed width (what a fixed-length batch computes)."""
    ids, valid = {}, {}
    for name in batch.ids:
        extra = width - batch.ids[name].shape[1]
        ids[name] = torch.nn.functional.pad(torch.from_numpy(batch.ids[name]), (0, extra)).numpy()
        valid[name] = torch.nn.functional.pad(torch.from_numpy(batch.valid[name]), (0, extra)).numpy()
    return Batch(ids=ids, valid=valid, index=batch.index, actions=batch.actions)


def measure_shape(name: str, spec: dict, data: Path, cache: Path, rounds: int, steps: int) -> dict:
    config = ModelConfig(dim=spec["dim"], layers=spec["layers"], heads=spec["heads"], max_seq=spec["max_seq"])
    cfg = LatentConfig(
        data=DataConfig(path=str(data), data_dir=str(cache)),
        model=config,
        train=TrainConfig(steps=10_000, batch=spec["batch"], progress=False),
    )
    tokenizer, store = load_corpus(data, LATENT_RECORDS, cfg.data, None, config.vocab_size)
    config = dataclasses.replace(config, vocab_size=tokenizer.get_vocab_size())
    stage = LatentStage(config, tokenizer, store, cfg, torch.device("cpu"))
    optimizer = build_optimizer(stage.model, cfg.train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.train))
    sampler = TrainSampler(store, spec["batch"], config.max_seq, cfg.data.val_fraction, 0, bucket_by_length=True)

    # Count what each step computes: the masked positions come from the stage's own make_inputs.
    seen = {}
    make_inputs = stage.make_inputs

    def recording_make_inputs(batch: Batch, step: int) -> dict:
        inputs = make_inputs(batch, step)
        seen["masked"] = int(inputs["mask"].sum())
        return inputs

    stage.make_inputs = recording_make_inputs
    step_counter = [0]

    def run(mode: str, n: int) -> dict:
        totals = {"seconds": 0.0, "real_tokens": 0, "computed_tokens": 0, "model_flops": 0.0, "all_flops": 0.0}
        for _ in range(n):
            began = time.perf_counter()
            stage.model.train()
            batch = sampler.next_batch()
            if mode == "fixed":
                batch = pad_to(batch, config.max_seq)
            train_step(stage, optimizer, scheduler, cfg.train, batch, step_counter[0])
            totals["seconds"] += time.perf_counter() - began
            step_counter[0] += 1
            rows, width = batch.ids["text"].shape
            model, everything = step_flops(config, rows, width, seen["masked"], min(batch.real_tokens, 1024))
            totals["model_flops"] += model
            totals["all_flops"] += everything
            totals["real_tokens"] += batch.real_tokens
            totals["computed_tokens"] += rows * width
        return totals

    run("bucketed", 2)  # warm-up: allocator, MKL, first-touch of the token store
    run("fixed", 1)
    best: dict[str, dict] = {}
    peaks = []
    for _ in range(rounds):
        peaks.append(gemm_peak_flops(0.3)["best"])
        for mode in ("bucketed", "fixed"):
            t = run(mode, steps)
            rates = {
                "real_tokens_per_s": t["real_tokens"] / t["seconds"],
                "computed_tokens_per_s": t["computed_tokens"] / t["seconds"],
                "model_flops_per_s": t["model_flops"] / t["seconds"],
                "all_flops_per_s": t["all_flops"] / t["seconds"],
                "padding_share": 1 - t["real_tokens"] / t["computed_tokens"],
                "seconds_per_step": t["seconds"] / steps,
            }
            if mode not in best or rates["all_flops_per_s"] > best[mode]["all_flops_per_s"]:
                best[mode] = rates
    peak = max(peaks)
    for rates in best.values():
        rates["mfu"] = rates["model_flops_per_s"] / peak
        rates["all_flops_utilisation"] = rates["all_flops_per_s"] / peak
    return {
        "shape": spec,
        "parameters": sum(p.numel() for p in stage.model.parameters()),
        "gemm_peak_flops_per_s": peak,
        "gemm_peak_rounds": peaks,
        "modes": best,
        "useful_throughput_ratio": best["bucketed"]["real_tokens_per_s"] / best["fixed"]["real_tokens_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved measurement rounds (best is kept)")
    parser.add_argument("--steps", type=int, default=4, help="steps per mode per round (default shape)")
    parser.add_argument("--shapes", default="default,small", help="comma-separated: default, small")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all, or 1 on a busy machine)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    threads = bench_threads(args.threads)
    data = demo_paragraphs()
    result: dict = {"benchmark": "train_throughput", "threads": threads, "load_average_at_start": load, "shapes": {}}
    with tempfile.TemporaryDirectory() as cache:
        for name in args.shapes.split(","):
            steps = args.steps if name == "default" else args.steps * 4
            result["shapes"][name] = measure_shape(name, SHAPES[name], data, Path(cache), args.rounds, steps)
    table = []
    for name, shape in result["shapes"].items():
        fixed, bucketed = shape["modes"]["fixed"], shape["modes"]["bucketed"]
        goal = 0.9 if name == "default" else None
        table.append(goal_row(f"{name}: MFU, model FLOPs, fixed max_seq batch", fixed["mfu"], None))
        peak_note = f"GEMM peak {shape['gemm_peak_flops_per_s'] / 1e9:.0f} GFLOP/s with {threads} thread(s)"
        table.append(
            goal_row(
                f"{name}: all-FLOPs utilisation, fixed batch", fixed["all_flops_utilisation"], goal, note=peak_note
            )
        )
        table.append(goal_row(f"{name}: MFU, model FLOPs, bucketed", bucketed["mfu"], None))
        table.append(goal_row(f"{name}: all-FLOPs utilisation, bucketed", bucketed["all_flops_utilisation"], goal))
        table.append(
            goal_row(
                f"{name}: real tokens/s bucketed / fixed padded",
                shape["useful_throughput_ratio"],
                1.5,
                note=f"{bucketed['real_tokens_per_s']:.0f} vs {fixed['real_tokens_per_s']:.0f} tokens/s; "
                f"padding {bucketed['padding_share']:.0%} vs {fixed['padding_share']:.0%}",
            )
        )
    result["table"] = table
    write_json(args.json, result)


if __name__ == "__main__":
    main()
