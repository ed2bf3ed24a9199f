"""Training throughput of the real JEPA step in fp32 and bf16, against this machine's GEMM peaks of both dtypes.

For the "default" shape (the commands' default: dim 384, 1 layer, 4 heads, max_seq 128, batch 32), the old default
"368x4" (dim 368, 4 layers, 8 heads: the default until 2026-12-01, the shape issue 12's goals were stated for) and
a small one, on real text of varied length (standard-library docstring paragraphs), this times the real training step
(`textjepa.train.loop.train_step`: LatentStage.make_inputs with the teacher forward, online forward,
backward, clipping, AdamW, EMA) for

- `bucketed`: the training sampler as it runs by default (batches grouped by length, padded to their longest);
- `fixed`: the same step on batches padded to max_seq (a padded fixed-length batch of the same shape);

in each precision of `--precisions`: `fp32`, and `bf16` = train_step's own bf16 path (the teacher forward and
the online forward + loss under `torch.autocast(dtype=torch.bfloat16)` with fp32 master weights, optimizer and
teacher). Interleaved with the steps, the best `matmul` FLOP/s of each dtype
is measured: that dtype's peak. FLOPs are counted analytically from the shapes each step really computes:

- model FLOPs (MFU numerator): online encoder + predictor + regulariser, forward and backward (3x forward);
- all FLOPs: model FLOPs + the teacher's forward on the full view.

Reported per precision: MFU and all-FLOPs utilisation against the same-run GEMM peak of the precision used,
useful throughput (real tokens, padding excluded) of `bucketed` over `fixed`, and real tokens/s of bf16 over
fp32. The CPU's flags say whether bf16 is native (AVX512-BF16 / AMX) or emulated; on an emulating CPU the
bf16 goals do not apply and the rows say so. `--compile` adds a `+compile` variant of each precision: the same
step with the online model (forward + backward through AOTAutograd) and the teacher wrapped in `torch.compile`, on
bucketed widths padded up to a multiple of 16 (few distinct shapes, so few recompiles).

`--profile` then profiles a few bucketed steps of each precision and prints their top operators by self CPU time
(and puts them in the JSON): the bf16 goal is no single non-GEMM operator above 15% of the step. From the fp32
profile it also reports the ceiling of fp32's all-FLOPs utilisation that fusing passes could reach: the utilisation
if every pass but the GEMMs, attention, AdamW and the EMA took no time. `--quick` is the
smallest run (small shape, one round of one step): seconds, for tests/test_bench_quick.py.
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
from _common import (  # noqa: E402
    EMULATED_GEMM_SHAPES,
    bench_threads,
    cpu_precision_paths,
    demo_paragraphs,
    gemm_peak_flops,
    goal_row,
    native_note,
    write_json,
)

from textjepa.config import DataConfig, LatentConfig, ModelConfig, TrainConfig  # noqa: E402
from textjepa.data.batches import Batch, TrainSampler  # noqa: E402
from textjepa.data.sources import LATENT_RECORDS, load_corpus  # noqa: E402
from textjepa.precision import autocast  # noqa: E402
from textjepa.train.latent import LatentStage  # noqa: E402
from textjepa.train.loop import build_optimizer, train_step  # noqa: E402
from textjepa.train.schedules import lr_factor  # noqa: E402

SHAPES = {
    "default": {"dim": 384, "layers": 1, "heads": 4, "max_seq": 128, "batch": 32},
    "368x4": {"dim": 368, "layers": 4, "heads": 8, "max_seq": 128, "batch": 32},
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


def pad_to_multiple(batch: Batch, multiple: int, limit: int) -> Batch:
    """A bucketed batch padded up to the next multiple of `multiple` (at most `limit`): few distinct widths."""
    width = batch.ids["text"].shape[1]
    return pad_to(batch, min(limit, -(-width // multiple) * multiple))


COMPILE_WIDTH_MULTIPLE = 16
# mkldnn::_linear_pointwise: oneDNN's GEMM with its bias added inside (textjepa/models/linear.py, bf16 on a CPU).
GEMM_OPS = (
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::baddbmm",
    "aten::linear",
    "aten::matmul",
    "mkldnn::_linear_pointwise",
)

# The passes over every parameter that no fusion of the activations' passes removes: AdamW (fused) and the teacher's
# EMA (its only lerp). The gradient clip's norms and multiplies are left out (their op names have other uses too),
# so the ceiling below is, if anything, too generous.
PARAMETER_PASS_OPS = ("aten::_fused_adamw_", "aten::lerp_", "aten::_foreach_lerp_")


def pad_to(batch: Batch, width: int) -> Batch:
    """The same rows padded to a fixed width (what a fixed-length batch computes)."""
    ids, valid = {}, {}
    for name in batch.ids:
        extra = width - batch.ids[name].shape[1]
        ids[name] = torch.nn.functional.pad(torch.from_numpy(batch.ids[name]), (0, extra)).numpy()
        valid[name] = torch.nn.functional.pad(torch.from_numpy(batch.valid[name]), (0, extra)).numpy()
    return Batch(ids=ids, valid=valid, index=batch.index, actions=batch.actions)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def under_autocast(function, precision: str):
    """`function` run under the precision's autocast (nothing for fp32)."""

    def call(*args, **kwargs):
        with autocast("cpu", precision):
            return function(*args, **kwargs)

    return call


COMPILED = "+compile"


def training_setup(spec: dict, data: Path, cache: Path) -> tuple:
    """(model config, latent config, stage, optimizer, LR schedule, bucketed sampler) of a shape, as the commands
    build them."""
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
    return config, cfg, stage, optimizer, scheduler, sampler


def measure_shape(
    spec: dict,
    data: Path,
    cache: Path,
    rounds: int,
    steps: int,
    variants: list[str],
    bf16_native: bool,
    profile_steps: int = 0,
    peak_seconds: float = 0.3,
    warmup_steps: int = 2,
) -> dict:
    config, cfg, stage, optimizer, scheduler, sampler = training_setup(spec, data, cache)

    # Count what each step computes: the masked positions come from the stage's own make_inputs.
    seen = {}
    make_inputs = stage.make_inputs
    eager_teacher = stage.teacher
    emulated = {"bf16", "bf16" + COMPILED} if not bf16_native else set()

    def recording_make_inputs(batch: Batch, step: int) -> dict:
        inputs = make_inputs(batch, step)
        seen["masked"] = int(inputs["mask"].sum())
        return inputs

    # Per variant: its precision (train_step's own autocast) and what runs the forward: the stage's loss module and
    # teacher, or their torch.compile'd versions.
    forwards = {precision: (precision, None, eager_teacher) for precision in DTYPES if precision in variants}
    compile_seconds = None
    began = time.perf_counter()
    for variant in variants:
        if variant.endswith(COMPILED):
            # The JEPA loss's boolean indexing has data-dependent sizes: captured, not a graph break (measured:
            # compiled utilisation 0.669 against 0.648 with the breaks; docs/results.md, issue 23).
            torch._dynamo.config.capture_dynamic_output_shape_ops = True
            torch._dynamo.config.capture_scalar_outputs = True
            compiled_model, compiled_teacher = torch.compile(stage.loss), torch.compile(eager_teacher)
            # A plain function: train_step tests `forward_model or model`, and a compiled module has no truth value.
            forwards[variant] = (variant.removesuffix(COMPILED), _call(compiled_model), compiled_teacher)
    step_counter = [0]

    def run(variant: str, mode: str, batches: list[Batch]) -> dict:
        totals = {
            "seconds": 0.0,
            "cpu_seconds": 0.0,
            "real_tokens": 0,
            "computed_tokens": 0,
            "model_flops": 0.0,
            "all_flops": 0.0,
        }
        precision, forward_model, teacher = forwards[variant]
        stage.make_inputs, stage.teacher = recording_make_inputs, teacher
        for batch in batches:
            began, began_cpu = time.perf_counter(), time.process_time()
            stage.model.train()
            if mode == "fixed":
                batch = pad_to(batch, config.max_seq)
            elif variant.endswith(COMPILED):
                batch = pad_to_multiple(batch, COMPILE_WIDTH_MULTIPLE, config.max_seq)
            train_step(stage, optimizer, scheduler, cfg.train, batch, step_counter[0], forward_model, precision)
            totals["seconds"] += time.perf_counter() - began
            totals["cpu_seconds"] += time.process_time() - began_cpu
            step_counter[0] += 1
            rows, width = batch.ids["text"].shape
            model, everything = step_flops(config, rows, width, seen["masked"], min(batch.real_tokens, 1024))
            totals["model_flops"] += model
            totals["all_flops"] += everything
            totals["real_tokens"] += batch.real_tokens
            totals["computed_tokens"] += rows * width
        stage.make_inputs, stage.teacher = make_inputs, eager_teacher
        return totals

    # Emulated bf16 runs its matmuls ~25x slower than fp32: one short round shows that without taking minutes.
    plan = {v: (1, 1) if v in emulated else (rounds, steps) for v in variants}  # (rounds, steps per mode)

    def draw(n: int) -> list[Batch]:
        return [sampler.next_batch() for _ in range(n)]

    # Warm-up: the allocator, first-touch of the token store, and the GEMM kernels. A native bf16 GEMM runs through
    # oneDNN, which builds a kernel per new shape (textjepa/models/linear.py pads row counts to a grid so a run has
    # few); a training run of thousands of steps has built its shapes' kernels long ago, so each variant first steps
    # through `warmup_steps` bucketed batches (the grid's shapes), and the rounds measure that steady state.
    for variant in variants:
        run(variant, "bucketed", draw(1 if variant in emulated else max(2, warmup_steps)))
        if variant not in emulated:
            run(variant, "fixed", draw(1))
        if variant.endswith(COMPILED):
            # The compile happens in the warm-up (and recompiles for new widths while they come).
            run(variant, "bucketed", draw(8))
            compile_seconds = time.perf_counter() - began
    best: dict[str, dict[str, dict]] = {variant: {} for variant in variants}
    # Over all rounds, the same batches for every variant: the bf16 / fp32 ratio is taken from these sums. Each
    # variant's best round would favour bf16, whose rate grows with a batch's size where fp32's hardly does.
    summed = ("real_tokens", "seconds", "cpu_seconds")
    sums = {variant: {mode: dict.fromkeys(summed, 0.0) for mode in ("bucketed", "fixed")} for variant in variants}
    peaks: dict[str, list[float]] = {precision: [] for precision in DTYPES if precision in variants}
    for round_index in range(rounds):
        # Every variant steps through the same batches in a round: bucketed batches differ a lot in width.
        batches = draw(steps)
        for precision in peaks:
            if precision in emulated:
                if round_index == 0:
                    peaks[precision].append(
                        gemm_peak_flops(0.1, DTYPES[precision], shapes=EMULATED_GEMM_SHAPES)["best"]
                    )
            else:
                peaks[precision].append(gemm_peak_flops(peak_seconds, DTYPES[precision])["best"])
        for variant in variants:
            variant_rounds, variant_steps = plan[variant]
            if round_index >= variant_rounds:
                continue
            for mode in ("bucketed", "fixed"):
                t = run(variant, mode, batches[:variant_steps])
                for key in summed:
                    sums[variant][mode][key] += t[key]
                rates = {
                    "real_tokens_per_s": t["real_tokens"] / t["seconds"],
                    # Per CPU-second of this process: what the step costs when other work shares the cores.
                    "real_tokens_per_cpu_s": t["real_tokens"] / t["cpu_seconds"],
                    "computed_tokens_per_s": t["computed_tokens"] / t["seconds"],
                    "model_flops_per_s": t["model_flops"] / t["seconds"],
                    "all_flops_per_s": t["all_flops"] / t["seconds"],
                    "padding_share": 1 - t["real_tokens"] / t["computed_tokens"],
                    "seconds_per_step": t["seconds"] / variant_steps,
                    "steps": variant_steps,
                }
                if mode not in best[variant] or rates["all_flops_per_s"] > best[variant][mode]["all_flops_per_s"]:
                    best[variant][mode] = rates
    peak = {precision: max(values) for precision, values in peaks.items()}
    results = {}
    for variant, modes in best.items():
        precision = variant.removesuffix(COMPILED)
        for rates in modes.values():
            rates["mfu"] = rates["model_flops_per_s"] / peak[precision]
            rates["all_flops_utilisation"] = rates["all_flops_per_s"] / peak[precision]
        results[variant] = {
            "precision": precision,
            "gemm_peak_flops_per_s": peak[precision],
            "gemm_peak_rounds": peaks[precision],
            "modes": modes,
            "useful_throughput_ratio": modes["bucketed"]["real_tokens_per_s"] / modes["fixed"]["real_tokens_per_s"],
        }
    shape = {"shape": spec, "parameters": sum(p.numel() for p in stage.model.parameters()), "variants": results}
    if "fp32" in results and "bf16" in results:
        shape["bf16_over_fp32_gemm_peak"] = peak["bf16"] / peak["fp32"]
        best_ratio = {
            rate: {
                mode: results["bf16"]["modes"][mode][rate] / results["fp32"]["modes"][mode][rate]
                for mode in ("bucketed", "fixed")
            }
            for rate in ("real_tokens_per_s", "real_tokens_per_cpu_s")
        }
        shape["bf16_over_fp32_best_rounds"] = best_ratio
        if plan["bf16"] == plan["fp32"]:  # the same work: the ratio of the sums
            for rate, time_key in (("real_tokens_per_s", "seconds"), ("real_tokens_per_cpu_s", "cpu_seconds")):
                shape[f"bf16_over_fp32_{rate}"] = {
                    mode: (sums["bf16"][mode]["real_tokens"] / sums["bf16"][mode][time_key])
                    / (sums["fp32"][mode]["real_tokens"] / sums["fp32"][mode][time_key])
                    for mode in ("bucketed", "fixed")
                }
        else:  # emulated bf16 ran one short step: only its best round exists
            for rate in ("real_tokens_per_s", "real_tokens_per_cpu_s"):
                shape[f"bf16_over_fp32_{rate}"] = best_ratio[rate]
    if compile_seconds is not None:
        shape["compile_seconds"] = compile_seconds
        # Real tokens/s: what training gets out of it (the compiled variant computes its own padding).
        shape["compiled_over_eager_real_tokens_per_s"] = {
            variant: {
                mode: results[variant]["modes"][mode]["real_tokens_per_s"]
                / results[variant.removesuffix(COMPILED)]["modes"][mode]["real_tokens_per_s"]
                for mode in ("bucketed", "fixed")
            }
            for variant in results
            if variant.endswith(COMPILED) and variant.removesuffix(COMPILED) in results
        }
    if profile_steps:
        profile_batches = draw(profile_steps)
        shape["profile"] = {
            precision: profile_ops(lambda p=precision: run(p, "bucketed", profile_batches), profile_steps)
            for precision in DTYPES
            if precision in variants and precision not in emulated
        }
    return shape


def _call(module):
    return lambda **inputs: module(**inputs)


def profile_ops(work, steps: int, top: int = 12) -> dict:
    """The top operators of `work` (some training steps) by self CPU time, with their share of the whole."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        work()
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0

    def ms_per_step(kind) -> float:
        return sum(e.self_cpu_time_total for e in events if kind(e.key)) / 1e3 / steps

    ops = [
        {
            "op": e.key,
            "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
            "share": e.self_cpu_time_total / total,
            "calls_per_step": e.count / steps,
            "gemm": e.key in GEMM_OPS,
        }
        for e in events[:top]
    ]
    return {
        "steps": steps,
        "ms_per_step": total / 1e3 / steps,
        "top_ops": ops,
        "gemm_ms_per_step": ms_per_step(lambda op: op in GEMM_OPS),
        "attention_ms_per_step": ms_per_step(lambda op: "scaled_dot_product" in op),
        "parameter_pass_ms_per_step": ms_per_step(lambda op: op in PARAMETER_PASS_OPS),
    }


def print_profile(name: str, shape: dict) -> None:
    """Each precision's top operators, side by side in one listing (stderr: stdout carries the JSON)."""
    for precision, profiled in shape.get("profile", {}).items():
        print(
            f"{name} {precision}: {profiled['ms_per_step']:.1f} ms/step (profiled), top ops by self CPU",
            file=sys.stderr,
        )
        for op in profiled["top_ops"]:
            line = f"  {op['op'][:58]:58s} {op['self_ms_per_step']:8.2f} ms {op['share']:6.1%}"
            print(f"{line} {op['calls_per_step']:7.1f} calls", file=sys.stderr)


def shape_rows(name: str, shape: dict, threads: int, paths: dict) -> list[dict]:
    """The summary rows of one shape (see bench/README.md)."""
    rows = []
    default = name == "default"
    bf16_native = paths["bf16_native"]
    for variant, result in shape["variants"].items():
        fixed, bucketed = result["modes"]["fixed"], result["modes"]["bucketed"]
        native = result["precision"] != "bf16" or bf16_native
        # Issue 23's utilisation goal is fp32's at the default shape. bf16's utilisation of the AMX peak (~10x
        # fp32's) is reported without one: at these GEMM sizes it is the bf16 / fp32 tokens/s ratio that says
        # whether bf16 pays.
        goal = 0.9 if default and result["precision"] == "fp32" else None
        peak_note = (
            f"{result['precision']} GEMM peak {result['gemm_peak_flops_per_s'] / 1e9:.0f} GFLOP/s, {threads} thread(s)"
        )
        if result["precision"] == "bf16":
            peak_note += "; " + native_note(paths)
        label = f"{name} {variant}"
        if not native:
            # One short step against a tiny-GEMM peak of reference kernels: a utilisation of that would mislead
            # (it is in the JSON); the rows below compare it with fp32 instead.
            continue
        rows.append(goal_row(f"{label}: MFU, model FLOPs, fixed max_seq batch", fixed["mfu"], None))
        rows.append(
            goal_row(
                f"{label}: all-FLOPs utilisation, fixed batch", fixed["all_flops_utilisation"], goal, note=peak_note
            )
        )
        rows.append(goal_row(f"{label}: MFU, model FLOPs, bucketed", bucketed["mfu"], None))
        rows.append(goal_row(f"{label}: all-FLOPs utilisation, bucketed", bucketed["all_flops_utilisation"], goal))
        rows.append(
            goal_row(
                f"{label}: real tokens/s bucketed / fixed padded",
                result["useful_throughput_ratio"],
                1.5 if variant == "fp32" else None,
                note=f"{bucketed['real_tokens_per_s']:.0f} vs {fixed['real_tokens_per_s']:.0f} tokens/s; "
                f"padding {bucketed['padding_share']:.0%} vs {fixed['padding_share']:.0%}",
            )
        )
    if "bf16_over_fp32_real_tokens_per_s" in shape:
        ratios = shape["bf16_over_fp32_real_tokens_per_s"]
        goal = 2.0 if default and bf16_native else None
        rows.append(
            goal_row(
                f"{name}: real tokens/s bf16 / fp32, bucketed",
                ratios["bucketed"],
                goal,
                note=f"all rounds' batches; fixed batch {ratios['fixed']:.2f}; best round of each "
                f"{shape['bf16_over_fp32_best_rounds']['real_tokens_per_s']['bucketed']:.2f}; {native_note(paths)}",
            )
        )
        per_cpu = shape["bf16_over_fp32_real_tokens_per_cpu_s"]
        rows.append(
            goal_row(
                f"{name}: real tokens per CPU-second bf16 / fp32, bucketed",
                per_cpu["bucketed"],
                None,
                note=f"fixed batch {per_cpu['fixed']:.2f}; process CPU time: less sensitive to other work on the cores",
            )
        )
        rows.append(
            goal_row(
                f"{name}: GEMM peak bf16 / fp32",
                shape["bf16_over_fp32_gemm_peak"],
                None,
                note=native_note(paths),
            )
        )
    for variant, ratios in shape.get("compiled_over_eager_real_tokens_per_s", {}).items():
        rows.append(
            goal_row(
                f"{name}: real tokens/s torch.compile / eager, {variant.removesuffix(COMPILED)} bucketed",
                ratios["bucketed"],
                None,
                note=f"widths padded to a multiple of {COMPILE_WIDTH_MULTIPLE}; fixed batch {ratios['fixed']:.2f}; "
                f"compile + warm-up {shape['compile_seconds']:.0f} s",
            )
        )
    profiled = shape.get("profile", {}).get("fp32")
    if profiled and "fp32" in shape["variants"]:
        # What eager fusion could reach at most: the step with every pass but its GEMMs, attention (a fused kernel
        # already) and the parameter passes taking no time. Its shares come from the profiled steps.
        kept = sum(profiled[key] for key in ("gemm_ms_per_step", "attention_ms_per_step", "parameter_pass_ms_per_step"))
        utilisation = shape["variants"]["fp32"]["modes"]["bucketed"]["all_flops_utilisation"]
        rows.append(
            goal_row(
                f"{name} fp32: all-FLOPs utilisation ceiling, every other pass free, bucketed",
                utilisation * profiled["ms_per_step"] / kept,
                None,
                note=f"of {profiled['ms_per_step']:.0f} ms per profiled step: GEMMs "
                f"{profiled['gemm_ms_per_step']:.0f}, attention {profiled['attention_ms_per_step']:.1f}, AdamW + "
                f"EMA {profiled['parameter_pass_ms_per_step']:.1f}",
            )
        )
    profiled = shape.get("profile", {}).get("bf16")
    if profiled:
        top = max((op for op in profiled["top_ops"] if not op["gemm"]), key=lambda op: op["share"], default=None)
        if top is not None:
            rows.append(
                goal_row(
                    f"{name} bf16: largest non-GEMM operator, share of the step",
                    top["share"],
                    0.15 if default and bf16_native else None,
                    direction="<=",
                    note=f"{top['op']}, {top['self_ms_per_step']:.1f} ms of {profiled['ms_per_step']:.0f} ms per step",
                )
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds (default %(default)s)")
    parser.add_argument(
        "--steps",
        type=int,
        default=6,
        help="steps per mode per round at the default shape, twice that at others (%(default)s)",
    )
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated: {', '.join(SHAPES)}")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    parser.add_argument("--compile", action="store_true", help="also time each precision's step under torch.compile")
    parser.add_argument("--profile", type=int, nargs="?", const=6, default=0, help="profile this many steps (6)")
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=100,
        help="bucketed steps per variant before measuring, so GEMM kernels are built as in a long run (%(default)s)",
    )
    parser.add_argument("--quick", action="store_true", help="the smallest run (seconds): small shape, one step")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all, or 1 on a busy machine)")
    args = parser.parse_args()
    if args.quick:
        args.shapes, args.rounds, args.steps, args.profile = "small", 1, 1, min(args.profile, 1)
        args.warmup_steps = 2
    load = os.getloadavg()[0]
    threads = bench_threads(args.threads)
    paths = cpu_precision_paths()
    variants = [p for p in args.precisions.split(",") if p]
    unknown = [p for p in variants if p not in DTYPES]
    if unknown or not variants:
        parser.error(f"--precisions takes fp32 and/or bf16, not {','.join(unknown) or 'nothing'}")
    shapes = [name for name in args.shapes.split(",") if name]
    if not shapes or any(name not in SHAPES for name in shapes):
        parser.error(f"--shapes takes {', '.join(SHAPES)}, not {args.shapes!r}")
    if args.compile:
        variants += [variant + COMPILED for variant in variants]
    data = demo_paragraphs()
    result: dict = {
        "benchmark": "train_throughput",
        "threads": threads,
        "load_average_at_start": load,
        "precision_paths": paths,
        "shapes": {},
    }
    with tempfile.TemporaryDirectory() as cache:
        for name in shapes:
            steps = args.steps if name == "default" or args.quick else args.steps * 2
            result["shapes"][name] = measure_shape(
                SHAPES[name],
                data,
                Path(cache),
                args.rounds,
                steps,
                variants,
                paths["bf16_native"],
                profile_steps=args.profile,
                peak_seconds=0.05 if args.quick else 0.3,
                warmup_steps=args.warmup_steps,
            )
            print_profile(name, result["shapes"][name])
    result["load_average_at_end"] = os.getloadavg()[0]
    result["table"] = [
        row for name, shape in result["shapes"].items() for row in shape_rows(name, shape, threads, paths)
    ]
    write_json(args.json, result)


if __name__ == "__main__":
    main()
