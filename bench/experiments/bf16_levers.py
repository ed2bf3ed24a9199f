"""Issue 23's bf16 training levers, side by side in one process: the real training step, the same batches.

    python bench/experiments/bf16_levers.py                       # all variants, 6 rounds, the default shape
    python bench/experiments/bf16_levers.py --variants fp32 bf16 bf16-torch-linear --rounds 10 --shape 368x4

Variants (each round steps every variant through the same bucketed batches, in turns; the rates are real tokens
per CPU-second of this process, and per round over the first variant's, so a change of load during the run falls on
every variant alike; the spread over rounds is printed):

- `fp32`: train_step in fp32;
- `bf16`: train_step's bf16 autocast as the package runs it (textjepa.models.linear.Linear's own backward,
  attention in fp32 where a backward follows);
- `bf16-torch-linear`: the same with torch's own autocast linear (the weight gradient handed back transposed);
- `bf16-attention-bf16`: `bf16` with attention in torch's bf16 flash kernel in the training step too;
- `bf16-contiguous-grad`: `bf16` with the output gradient made contiguous before every weight-gradient GEMM;
- `bf16-unpadded-rows`: `bf16` with every GEMM at its own row count (before the grid of
  textjepa.models.linear.padded_rows: oneDNN builds a kernel for each new shape);
- `bf16-addmm`: `bf16` with the bias added by addmm (which first copies it into the whole output), not inside
  oneDNN's GEMM;
- `bf16-no-upcast`: `bf16` with every bf16 GEMM's result handed on in bf16 (its consumer casts it up, and the
  backward casts its gradient down and then pads it: two passes, not one);
- `bf16-mlp-layer-by-layer`: `bf16` with the MLPs run layer by layer (each Linear pads its own input, the GELU is its
  own pass also in the teacher's forward), not as textjepa.models.linear.mlp;
- `bf16-qkv-through-fp32`: `bf16` with attention's projection cast up as one fp32 qkv [B, T, 3 x dim] that is then
  split into heads (its backward writes the gradients into an fp32 qkv and the Linear casts that down), not through
  textjepa.models.linear.bf16_heads.

Levers that change both precisions alike, each as `fp32-<lever>` and `bf16-<lever>` (the code before the lever):
- `-var-reduction`: the VICReg variance by var(0), not read off the covariance's diagonal;
- `-stacked-qkv-grad`: autograd's own backward of attention's head split (a stack, then a copy of it).

Each variant but fp32 swaps an implementation in for its own steps (class attributes, restored after).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# An experiment, not a ratio bench (bench/run_all.py runs only bench/*.py): it reads the benches' helpers beside it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import demo_paragraphs  # noqa: E402
from train_throughput import SHAPES, training_setup  # noqa: E402

import textjepa.models.encoder as encoder_module  # noqa: E402
import textjepa.models.heads as heads_module  # noqa: E402
import textjepa.models.linear as linear_module  # noqa: E402
import textjepa.objectives.regularizers as regularizers_module  # noqa: E402
from textjepa.models.linear import Linear  # noqa: E402
from textjepa.precision import fp32_function  # noqa: E402
from textjepa.train.loop import train_step  # noqa: E402

SHARED_LEVERS = ("var-reduction", "stacked-qkv-grad")
VARIANTS = (
    "fp32",
    "bf16",
    "bf16-torch-linear",
    "bf16-attention-bf16",
    "bf16-contiguous-grad",
    "bf16-unpadded-rows",
    "bf16-addmm",
    "bf16-mlp-layer-by-layer",
    "bf16-no-upcast",
    "bf16-qkv-through-fp32",
    *(f"{precision}-{lever}" for lever in SHARED_LEVERS for precision in ("fp32", "bf16")),
)


def attention_through_fp32_qkv(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
    """SelfAttention.forward before bf16_heads: qkv cast up whole, attention() in fp32 where a backward follows."""
    qkv = self.qkv(x, upcast=torch.is_grad_enabled())
    fp32 = torch.autocast("cpu", enabled=False) if self._fp32_attention(x) else contextlib.nullcontext()
    with fp32:
        out = encoder_module.attention(qkv, self.heads, attn_mask)
    return self.proj(out, upcast=True)


def weight_grad_of_contiguous_grad(g: torch.Tensor, x2d: torch.Tensor) -> torch.Tensor:
    return torch.mm(g.t().contiguous(), x2d).float()


def attention_stacked_grad(qkv: torch.Tensor, heads: int, attn_mask: torch.Tensor) -> torch.Tensor:
    """attention() with autograd's own backward of the view, permute and unbind."""
    return encoder_module.heads_attention(*encoder_module.split_heads(qkv, heads), attn_mask)


def bias_by_addmm(x2d: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, gelu: bool = False) -> torch.Tensor:
    y = torch.mm(x2d, w.t()) if b is None else torch.addmm(b, x2d, w.t())
    return F.gelu(y) if gelu else y


def mlp_layer_by_layer(fc1: Linear, fc2: Linear, x: torch.Tensor, upcast: bool = False) -> torch.Tensor:
    return fc2(F.gelu(fc1(x)), upcast=upcast)


@fp32_function
def vicreg_by_var_reduction(z: torch.Tensor, eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    z = z.float()
    centred = z - z.mean(0)
    std = torch.sqrt(centred.var(0) + eps)
    variance = torch.relu(1.0 - std).mean()
    n, d = z.shape
    cov = (centred.T @ centred) / max(n - 1, 1)
    off_diagonal = cov - torch.diag(torch.diag(cov))
    return variance, off_diagonal.pow(2).sum() / d


@contextlib.contextmanager
def swapped(owner, name: str, value):
    original = owner.__dict__[name]
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


def variant_context(variant: str) -> contextlib.AbstractContextManager:
    if variant == "bf16-torch-linear":
        stack = contextlib.ExitStack()
        stack.enter_context(swapped(Linear, "forward", lambda self, x, upcast=False: torch.nn.Linear.forward(self, x)))
        for module in (encoder_module, heads_module):  # the MLPs too: through the layers' forward
            stack.enter_context(swapped(module, "mlp", mlp_layer_by_layer))
        return stack
    if variant == "bf16-attention-bf16":
        return swapped(encoder_module.SelfAttention, "_fp32_attention", lambda self, x: False)
    if variant == "bf16-qkv-through-fp32":
        return swapped(encoder_module.SelfAttention, "forward", attention_through_fp32_qkv)
    if variant == "bf16-contiguous-grad":
        return swapped(linear_module, "_weight_grad", weight_grad_of_contiguous_grad)
    if variant == "bf16-unpadded-rows":
        return swapped(linear_module, "padded_rows", lambda rows: rows)
    if variant.endswith("-var-reduction"):
        return swapped(regularizers_module, "vicreg_terms", vicreg_by_var_reduction)
    if variant.endswith("-stacked-qkv-grad"):  # in bf16: as before bf16_heads, which has no stacked backward
        stack = contextlib.ExitStack()
        stack.enter_context(swapped(encoder_module, "attention", attention_stacked_grad))
        stack.enter_context(swapped(encoder_module.SelfAttention, "forward", attention_through_fp32_qkv))
        return stack
    if variant == "bf16-no-upcast":
        stack = contextlib.ExitStack()
        for name in ("_Bf16Linear", "_Bf16Mlp"):
            function = getattr(linear_module, name)
            no_upcast = type(name, (), {"apply": staticmethod(lambda *args, f=function: f.apply(*args[:-1], False))})
            stack.enter_context(swapped(linear_module, name, no_upcast))
        return stack
    if variant == "bf16-mlp-layer-by-layer":
        stack = contextlib.ExitStack()
        for module in (encoder_module, heads_module):
            stack.enter_context(swapped(module, "mlp", mlp_layer_by_layer))
        return stack
    if variant == "bf16-addmm":
        return swapped(linear_module, "_gemm", bias_by_addmm)
    return contextlib.nullcontext()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=4, help="steps per variant per round")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="default")
    parser.add_argument(
        "--warmup", type=int, default=100, help="steps per variant first, so GEMM kernels are built as in a long run"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = SHAPES[args.shape]
    with tempfile.TemporaryDirectory() as cache:
        _, cfg, stage, optimizer, scheduler, sampler = training_setup(spec, demo_paragraphs(), Path(cache))
        step = 0

        totals = {variant: [0, 0.0] for variant in args.variants}  # measured rounds: real tokens, CPU seconds

        def run(variant: str, batches, measured: bool = True) -> float:
            nonlocal step
            precision = variant.split("-")[0]
            cpu, tokens = 0.0, 0
            with variant_context(variant):
                for batch in batches:
                    began = time.process_time()
                    train_step(stage, optimizer, scheduler, cfg.train, batch, step, None, precision)
                    cpu += time.process_time() - began
                    tokens += batch.real_tokens
                    step += 1
            if measured:
                totals[variant][0] += tokens
                totals[variant][1] += cpu
            return tokens / cpu

        for variant in args.variants:  # warm-up
            run(variant, [sampler.next_batch() for _ in range(max(1, args.warmup))], measured=False)
        ratios: dict[str, list[float]] = {variant: [] for variant in args.variants}
        first = args.variants[0]
        for round_index in range(args.rounds):
            batches = [sampler.next_batch() for _ in range(args.steps)]
            # A rotating order: a variant that runs a batch after another one finds some of its GEMM kernels
            # already built (oneDNN caches them by shape), so no variant may always come second.
            shift = round_index % len(args.variants)
            order = args.variants[shift:] + args.variants[:shift]
            rates = {variant: run(variant, batches) for variant in order}
            for variant in args.variants:
                ratios[variant].append(rates[variant] / rates[first])
            listed = ", ".join(f"{v} {rates[v]:.0f} ({rates[v] / rates[first]:.2f})" for v in args.variants)
            print(f"round {round_index}: real tokens per CPU-s {listed}; load {os.getloadavg()[0]:.1f}", flush=True)
    print(f"over {first}: all rounds' tokens over all their CPU time (what a run gets); median [min..max] per round:")
    first_rate = totals[first][0] / totals[first][1]
    for variant in args.variants:
        values = ratios[variant]
        overall = totals[variant][0] / totals[variant][1] / first_rate
        print(
            f"  {variant:22s} {overall:.2f}; per round {statistics.median(values):.2f} "
            f"[{min(values):.2f}..{max(values):.2f}]"
        )


if __name__ == "__main__":
    main()
