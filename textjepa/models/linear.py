"""nn.Linear whose bf16 training step on a CPU writes its weight gradient straight into the master weight's layout.

Under a CPU bf16 autocast, torch's own linear computes the weight gradient as the transpose of `x^T @ grad` and
hands it back through the autocast cast as a transposed bf16 view; the fp32 `.grad` must have the weight's
layout, so it is copied element by element across the transpose (measured on an AMX CPU: 1.4-1.7 ms for a
[1536, 384] weight against 0.2 ms for a plain cast, the slowest of ~130 casts in a training step) and the GEMM
that made it ran with a transposed output. `Linear` here computes `grad^T @ x` instead, which is the gradient
in the weight's own [out, in] layout, and casts it to fp32 once. Elsewhere
(fp32, inference, the teacher under no_grad, CUDA) it is nn.Linear itself; the parameters, their names and so
the checkpoints are nn.Linear's.
"""

from __future__ import annotations

import torch
from torch import nn


def _cpu_bf16_training(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and torch.is_grad_enabled()
        and weight.requires_grad
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )


class _Bf16Linear(torch.autograd.Function):
    """y = x W^T + b in bf16 (fp32 accumulation in the kernel); gradients of the fp32 W and b in their layout."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x2d = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        w = weight.to(torch.bfloat16)
        if bias is None:
            y = torch.mm(x2d, w.t())
        else:
            y = torch.addmm(bias.to(torch.bfloat16), x2d, w.t())
        ctx.save_for_backward(x2d, w)
        ctx.has_bias = bias is not None
        ctx.input_shape, ctx.input_dtype = x.shape, x.dtype
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x2d, w = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1]).to(torch.bfloat16)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(g, w).view(ctx.input_shape).to(ctx.input_dtype)
        if ctx.needs_input_grad[1]:
            grad_w = torch.mm(g.t(), x2d).float()  # [out, in]: the weight's own layout
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0).float()  # the CPU kernel accumulates bf16 in fp32 (sum(dtype=) would cast g first)
        return grad_x, grad_w, grad_b


class Linear(nn.Linear):
    """nn.Linear; in a CPU bf16 autocast with gradients, through _Bf16Linear (see the module doc)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _cpu_bf16_training(x, self.weight):
            return _Bf16Linear.apply(x, self.weight, self.bias)
        return super().forward(x)
