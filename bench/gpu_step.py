"""Model-FLOPs utilisation of the JEPA training step on a CUDA device, fp32 (TF32) and bf16, against the GEMM peaks.

Issue 12, item 5. On a CUDA device this times the real training step (`textjepa.train.loop.train_step`, the
same step as bench/train_throughput.py) at the default shape on fixed max_seq batches, in fp32 with TF32
matmuls allowed (what `--precision fp32` does on CUDA) and in bf16 (teacher forward and online forward + loss
under `torch.autocast("cuda", dtype=torch.bfloat16)`, fp32 master weights), with the device synchronised only
around each group of steps. The GEMM peak of each precision is measured in the same run. FLOPs are counted
as in bench/train_throughput.py.

Without a CUDA device it writes `{"skipped": "no CUDA device"}` and exits 0: nothing here has been measured on
a GPU yet (the project's machines have none).
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
from _common import demo_paragraphs, gemm_peak_flops, goal_row, write_json  # noqa: E402


def measure(device: torch.device, precisions: list[str], steps: int, batch_size: int) -> dict:
    from train_throughput import SHAPES, pad_to, step_flops

    from textjepa.config import DataConfig, LatentConfig, ModelConfig, TrainConfig
    from textjepa.data.batches import TrainSampler
    from textjepa.data.sources import LATENT_RECORDS, load_corpus
    from textjepa.precision import autocast, configure_fp32_matmul, read_cpu_flags, resolve_precision
    from textjepa.train.latent import LatentStage
    from textjepa.train.loop import build_optimizer, train_step
    from textjepa.train.schedules import lr_factor

    spec = SHAPES["default"]
    data = demo_paragraphs()
    config = ModelConfig(dim=spec["dim"], layers=spec["layers"], heads=spec["heads"], max_seq=spec["max_seq"])
    results: dict = {"device": torch.cuda.get_device_name(device), "batch": batch_size, "precisions": {}}
    with tempfile.TemporaryDirectory() as cache:
        cfg = LatentConfig(
            data=DataConfig(path=str(data), data_dir=cache),
            model=config,
            train=TrainConfig(steps=10_000, batch=batch_size, progress=False),
        )
        tokenizer, store = load_corpus(data, LATENT_RECORDS, cfg.data, None, config.vocab_size)
        config = dataclasses.replace(config, vocab_size=tokenizer.get_vocab_size())
        stage = LatentStage(config, tokenizer, store, cfg, device)
        optimizer = build_optimizer(stage.model, cfg.train)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.train))
        sampler = TrainSampler(store, batch_size, config.max_seq, cfg.data.val_fraction, 0, bucket_by_length=True)
        batches = [pad_to(sampler.next_batch(), config.max_seq) for _ in range(steps)]
        make_inputs, seen = stage.make_inputs, {}
        cpuinfo = read_cpu_flags()
        for step_index, precision in enumerate(precisions):
            choice = resolve_precision(precision, device, cpuinfo)
            configure_fp32_matmul(choice)
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            peak = gemm_peak_flops(0.5, dtype, str(device))["best"]

            def inputs(batch, step, precision=precision):
                with autocast(device, precision):
                    made = make_inputs(batch, step)
                seen["masked"] = made["mask"].sum()  # a device tensor: read after the timing
                return made

            def forward(precision=precision, **kwargs):
                with autocast(device, precision):
                    return stage.loss(**kwargs)  # the loss holds the model: forward + loss, as in training

            stage.make_inputs = inputs
            for batch in batches[:2]:  # warm-up: kernels, allocator
                train_step(stage, optimizer, scheduler, cfg.train, batch, step_index, forward)
            torch.cuda.synchronize(device)
            masked, began = [], time.perf_counter()
            for batch in batches:
                train_step(stage, optimizer, scheduler, cfg.train, batch, step_index, forward)
                masked.append(seen["masked"])  # read after the timing: reading it here would wait for the GPU
            torch.cuda.synchronize(device)
            seconds = time.perf_counter() - began
            flops = 0.0
            for batch, count in zip(batches, masked):
                rows, width = batch.ids["text"].shape
                flops += step_flops(config, rows, width, int(count), min(batch.real_tokens, 1024))[0]
            results["precisions"][precision] = {
                "choice": choice.describe(),
                "seconds_per_step": seconds / len(batches),
                "model_flops_per_s": flops / seconds,
                "gemm_peak_flops_per_s": peak,
                "mfu": flops / seconds / peak,
            }
        stage.make_inputs = make_inputs
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per precision")
    parser.add_argument("--batch", type=int, default=32, help="rows per batch (fixed max_seq 128)")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    parser.add_argument("--quick", action="store_true", help="the smallest run: 2 steps per precision")
    args = parser.parse_args()
    if args.quick:
        args.steps = 2
    result: dict = {"benchmark": "gpu_step", "load_average_at_start": os.getloadavg()[0]}
    if not torch.cuda.is_available():
        result["skipped"] = "no CUDA device"
        print("skipped: no CUDA device")
        write_json(args.json, result)
        return
    precisions = [p for p in args.precisions.split(",") if p]
    if any(p not in ("fp32", "bf16") for p in precisions) or not precisions:
        parser.error("--precisions takes fp32 and/or bf16")
    result.update(measure(torch.device("cuda", torch.cuda.current_device()), precisions, args.steps, args.batch))
    table = [
        goal_row(
            f"gpu {precision}: MFU of the training step (model FLOPs / same-run GEMM peak)",
            values["mfu"],
            None,
            note=f"{values['seconds_per_step'] * 1e3:.1f} ms/step; {result['device']}",
        )
        for precision, values in result["precisions"].items()
    ]
    if {"fp32", "bf16"} <= result["precisions"].keys():
        fp32, bf16 = result["precisions"]["fp32"], result["precisions"]["bf16"]
        table.append(
            goal_row("gpu: step speed bf16 / fp32 (TF32)", fp32["seconds_per_step"] / bf16["seconds_per_step"], None)
        )
    result["table"] = table
    write_json(args.json, result)


if __name__ == "__main__":
    main()
