"""nn.Linear whose bf16 training step on a CPU writes its weight gradient straight into the master weight's layout.

Under a CPU bf16 autocast, torch's own linear computes the weight gradient as the transpose of `x^T @ grad` and
hands it back through the autocast cast as a transposed bf16 view; the fp32 `.grad` must have the weight's
layout, so it is copied element by element across the transpose (measured on an AMX CPU: 1.4-1.7 ms for a
[1536, 384] weight against 0.2 ms for a plain cast, the slowest of ~130 casts in a training step) and the GEMM
that made it ran with a transposed output. `Linear` here computes `grad^T @ x` instead, which is the gradient
in the weight's own [out, in] layout, and casts it to fp32 once. Under a CPU bf16 autocast without gradients (the
teacher's targets, encoding, serving) it computes what autocast's linear does; elsewhere (fp32, CUDA) it is
nn.Linear itself. The parameters, their names and so the checkpoints are nn.Linear's.

Its GEMMs also see few distinct shapes: the row count (tokens, or masked tokens for the predictor) is padded up to
a coarse grid. A CPU bf16 GEMM runs through oneDNN, which builds (JIT-compiles) a kernel for every new shape and
keeps 1,024 in a cache; fp32 goes through MKL, which does not. Bucketed batches give a new row count almost every
step (32 x the batch's width, and the masked-token count varies with every draw), and measured on an AMX CPU a bf16
training step with a shape set it had not seen took 1.5x the same step again: 41 ms of GEMMs against 15 ms
(docs/results.md, issue 23).
"""

from __future__ import annotations

import torch
from torch import nn


def _cpu_bf16_autocast(x: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )


def padded_rows(rows: int) -> int:
    """The row count a bf16 GEMM runs at: `rows` rounded up to 8 steps per power of two (at least 16 rows).

    At most 12.5% more rows (about 6% on average), and about 8 distinct counts per doubling, so the shapes of a
    whole run fit oneDNN's kernel cache and each is built once.
    """
    step = max(16, 1 << max(rows.bit_length() - 4, 0))
    return -(-rows // step) * step


def _rows_in_bf16(t: torch.Tensor, rows: int) -> torch.Tensor:
    """t [n, k] as a bf16 [rows, k] with zeros below: one pass (the cast writes into the padded block)."""
    if t.shape[0] == rows:
        return t.to(torch.bfloat16)
    block = t.new_empty((rows, t.shape[1]), dtype=torch.bfloat16)
    block[: t.shape[0]].copy_(t)
    block[t.shape[0] :].zero_()  # zeros: padded rows add nothing to the weight gradient's sum over rows
    return block


class _Bf16Linear(torch.autograd.Function):
    """y = x W^T + b in bf16 (fp32 accumulation in the kernel) at the padded row count; gradients of the fp32 W and
    b in their own layout. Without gradients (the teacher's targets, encoding, serving) the forward alone runs."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x2d = x.reshape(-1, x.shape[-1])
        rows = x2d.shape[0]
        x2d = _rows_in_bf16(x2d, padded_rows(rows))
        w = weight.to(torch.bfloat16)
        y = torch.mm(x2d, w.t()) if bias is None else torch.addmm(bias.to(torch.bfloat16), x2d, w.t())
        ctx.save_for_backward(x2d, w)
        ctx.has_bias = bias is not None
        ctx.input_shape, ctx.input_dtype = x.shape, x.dtype
        return y[:rows].view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x2d, w = ctx.saved_tensors  # x2d: the padded rows
        g2d = grad.reshape(-1, grad.shape[-1])
        rows = g2d.shape[0]
        g = _rows_in_bf16(g2d, x2d.shape[0])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(g, w)[:rows].view(ctx.input_shape).to(ctx.input_dtype)
        if ctx.needs_input_grad[1]:
            grad_w = torch.mm(g.t(), x2d).float()  # [out, in]: the weight's own layout
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g[:rows].sum(0).float()  # the CPU kernel accumulates bf16 in fp32 (sum(dtype=) casts g first)
        return grad_x, grad_w, grad_b


class Linear(nn.Linear):
    """nn.Linear; under a CPU bf16 autocast, through _Bf16Linear (see the module doc)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _cpu_bf16_autocast(x):
            return _Bf16Linear.apply(x, self.weight, self.bias)
        return super().forward(x)
