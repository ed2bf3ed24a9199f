"""nn.Linear whose bf16 training step on a CPU writes its weight gradient straight into the master weight's layout.

Under a CPU bf16 autocast, torch's own linear computes the weight gradient as the transpose of `x^T @ grad` and
hands it back through the autocast cast as a transposed bf16 view; the fp32 `.grad` must have the weight's
layout, so it is copied element by element across the transpose (measured on an AMX CPU: 1.4-1.7 ms for a
[1536, 384] weight against 0.2 ms for a plain cast, the slowest of ~130 casts in a training step) and the GEMM
that made it ran with a transposed output. `Linear` here computes `grad^T @ x` instead, which is the gradient
in the weight's own [out, in] layout, and casts it to fp32 once. Under a CPU bf16 autocast without gradients (the
teacher's targets, encoding, serving) it computes what autocast's linear does, from bf16 weights it casts once
while they stay unchanged; elsewhere (fp32, CUDA) it is nn.Linear itself. The parameters, their names and so the
checkpoints are nn.Linear's.

Its GEMMs also see few distinct shapes: the row count (tokens, or masked tokens for the predictor) is padded up to
a coarse grid. A CPU bf16 GEMM runs through oneDNN, which builds (JIT-compiles) a kernel for every new shape and
keeps 1,024 in a cache; fp32 goes through MKL, which does not. Bucketed batches give a new row count almost every
step (32 x the batch's width, and the masked-token count varies with every draw), and measured on an AMX CPU a bf16
training step with a shape set it had not seen took 1.5x the same step again: 41 ms of GEMMs against 15 ms
(docs/results.md, issue 23).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn


def cpu_bf16_autocast(x: torch.Tensor) -> bool:
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


def _gemm(x2d: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, gelu: bool = False) -> torch.Tensor:
    """x2d w^T (+ b) in bf16 (then its exact GELU if `gelu`), a bias added inside oneDNN's GEMM where torch has that
    kernel. addmm first copies the broadcast bias into the whole output and the GEMM then adds onto it: a pass over
    [rows, out] in bf16, 3% of a training step (measured on an AMX CPU; docs/results.md, issue 23). Both give the
    same bits. The GELU, where oneDNN runs it, is applied to the GEMM's fp32 result before the one rounding to bf16
    (a separate GELU rounds twice): no pass of its own over the [rows, 4 x dim] hidden layer."""
    if b is not None and _onednn_bf16_linear():
        return torch.ops.mkldnn._linear_pointwise(x2d, w, b, "gelu" if gelu else "none", [], "none" if gelu else "")
    y = torch.mm(x2d, w.t()) if b is None else torch.addmm(b, x2d, w.t())
    return F.gelu(y) if gelu else y


@functools.cache
def _onednn_bf16_linear() -> bool:
    """Whether torch's oneDNN linear takes bf16 on this CPU (it refuses bf16 without AVX512-BW/VL/DQ or
    AVX-NE-CONVERT, where addmm still runs it, emulated)."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _padded_bf16(x: torch.Tensor) -> torch.Tensor:
    """x [..., k] as the bf16 [padded rows, k] block a GEMM runs on (see padded_rows)."""
    x2d = x.reshape(-1, x.shape[-1])
    return _rows_in_bf16(x2d, padded_rows(x2d.shape[0]))


def _real_rows(y: torch.Tensor, x: torch.Tensor, upcast: bool = False) -> torch.Tensor:
    """A GEMM's padded result [padded rows, out] back to x's leading shape [..., out], in fp32 if `upcast`."""
    y = y[: math.prod(x.shape[:-1])].view(*x.shape[:-1], y.shape[1])
    return y.float() if upcast else y


def _bf16_gemm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, upcast: bool = False) -> torch.Tensor:
    """y = x w^T + b with bf16 w and b (fp32 accumulation in the kernel) at the padded row count, as x's shape (in
    fp32 if `upcast`)."""
    return _real_rows(_gemm(_padded_bf16(x), w, b), x, upcast)


def _gemm_for_backward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The padded result [padded rows, out] of x's GEMM with the fp32 weight and bias cast to bf16; what
    _linear_grads needs is kept in `ctx` (the padded bf16 input, the bf16 weight, x's shape and dtype)."""
    w = weight.to(torch.bfloat16)
    x2d = _padded_bf16(x)
    ctx.save_for_backward(x2d, w)
    ctx.has_bias = bias is not None
    ctx.input_shape, ctx.input_dtype = x.shape, x.dtype
    return _gemm(x2d, w, None if bias is None else bias.to(torch.bfloat16))


class _Bf16Linear(torch.autograd.Function):
    """_bf16_gemm of the fp32 W and b, with their gradients in their own layout."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, upcast: bool) -> torch.Tensor:
        return _real_rows(_gemm_for_backward(ctx, x, weight, bias), x, upcast)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x2d, w = ctx.saved_tensors  # x2d: the padded rows
        g = _rows_in_bf16(grad.reshape(-1, grad.shape[-1]), x2d.shape[0])
        return (*_linear_grads(ctx, g, x2d, w), None)


def _weight_grad(g: torch.Tensor, x2d: torch.Tensor) -> torch.Tensor:
    """A weight's gradient g^T x2d from the bf16 output gradient and input [padded rows, *], in fp32 and laid out
    as the weight [out, in]."""
    return torch.mm(g.t(), x2d).float()


def _linear_grads(ctx, g: torch.Tensor, x2d: torch.Tensor, w: torch.Tensor) -> tuple:
    """(input, weight, bias) gradients of a bf16 GEMM x2d w^T + b from its output's gradient `g` [padded rows, out]
    in bf16, zeros in the padded rows; those that `ctx.needs_input_grad` asks for (the first three inputs)."""
    rows = math.prod(ctx.input_shape[:-1])
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_x = torch.mm(g, w)[:rows].view(ctx.input_shape).to(ctx.input_dtype)
    if ctx.needs_input_grad[1]:
        grad_w = _weight_grad(g, x2d)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_b = g[:rows].sum(0).float()  # the CPU kernel accumulates bf16 in fp32 (sum(dtype=) casts g first)
    return grad_x, grad_w, grad_b


class _Bf16Heads(torch.autograd.Function):
    """Attention's fused projection x -> q, k, v [B, H, T, D / H] in fp32, for attention in fp32 where a backward
    follows (see textjepa.models.encoder.SelfAttention._fp32_attention): the bf16 GEMM, then one pass that casts up
    and splits the heads; the backward casts the three gradients down into the GEMM's padded bf16 block in one pass.
    Through an fp32 qkv, the backward wrote the gradients into it and then cast that down again: one pass of qkv's
    size more, 1-2% of a training step (measured on an AMX CPU; docs/results.md, issue 23). The same numbers."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, heads: int):
        y = _gemm_for_backward(ctx, x, weight, bias)
        ctx.heads = heads
        parts = _head_parts(y, x.shape[:-1], heads)
        return tuple(torch.empty(p.shape, dtype=torch.float32).copy_(p) for p in parts)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None):
        x2d, w = ctx.saved_tensors
        rows = math.prod(ctx.input_shape[:-1])
        g = x2d.new_empty((x2d.shape[0], w.shape[0]))
        g[rows:].zero_()  # zeros: padded rows add nothing to the weight gradient's sum over rows
        for part, grad in zip(_head_parts(g, ctx.input_shape[:-1], ctx.heads), grads, strict=True):
            part.zero_() if grad is None else part.copy_(grad)  # a part that reached no loss: zeros
        return (*_linear_grads(ctx, g, x2d, w), None)


def split_heads(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, ...]:
    """qkv [B, T, 3 * D] of a fused projection -> q, k, v [B, H, T, D / H], views."""
    batch, length, width = qkv.shape
    return qkv.view(batch, length, 3, heads, width // 3 // heads).permute(2, 0, 3, 1, 4).unbind(0)


def _head_parts(y: torch.Tensor, leading: torch.Size, heads: int) -> tuple[torch.Tensor, ...]:
    """The real rows of a fused projection's [padded rows, 3 * D] as q, k, v views [B, H, T, D / H]."""
    batch, length = leading
    return split_heads(y[: batch * length].view(batch, length, y.shape[1]), heads)


def bf16_heads(qkv: Linear, x: torch.Tensor, heads: int) -> tuple[torch.Tensor, ...]:
    """q, k, v [B, H, T, D / H] in fp32 from a fused projection `qkv` of x [B, T, D] under a CPU bf16 autocast with
    gradients (_Bf16Heads)."""
    return _Bf16Heads.apply(x, qkv.weight, qkv.bias, heads)


class Linear(nn.Linear):
    """nn.Linear; under a CPU bf16 autocast, through _Bf16Linear, or without gradients through _bf16_gemm of its bf16
    weights cast once (see the module doc)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._bf16_copy: tuple | None = None  # (what the weights were, bf16 weight, bf16 bias): not in state_dict

    def forward(self, x: torch.Tensor, upcast: bool = False) -> torch.Tensor:
        """`upcast`: under a CPU bf16 autocast, the result in fp32 (cast inside the layer), for a consumer that
        computes in fp32 (the residual stream, attention in a training step). Then its gradient comes back in fp32 and
        the backward casts and pads it in one pass, where a bf16 result's gradient is cast by the consumer's backward
        and padded again here. Ignored elsewhere (fp32 already; CUDA's autocast keeps its own dtypes)."""
        if not cpu_bf16_autocast(x):
            return super().forward(x)
        if torch.is_grad_enabled():
            return _Bf16Linear.apply(x, self.weight, self.bias, upcast)
        return _bf16_gemm(x, *self._bf16_weights(), upcast)

    def _bf16_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weight and bias in bf16, cast again only when they changed: an optimizer step or the EMA (in place:
        a new version), a load or a move (new storage). Without it every call casts them, a tenth of a bf16 encode
        (docs/results.md, issue 23). A change made through `.data` would go unseen: nothing here makes one."""
        bias = self.bias
        tensors = (self.weight,) if bias is None else (self.weight, bias)
        if any(t.is_inference() for t in tensors):  # made under torch.inference_mode: no version to tell a change by
            return self.weight.to(torch.bfloat16), None if bias is None else bias.to(torch.bfloat16)
        state = tuple((t.data_ptr(), t._version) for t in tensors)
        copy = self._bf16_copy  # read once: a server's threads may replace it meanwhile
        if copy is None or copy[0] != state:
            copy = (state, self.weight.to(torch.bfloat16), None if bias is None else bias.to(torch.bfloat16))
            self._bf16_copy = copy
        return copy[1], copy[2]


class _Bf16Mlp(torch.autograd.Function):
    """fc2(GELU(fc1(x))) of fp32 weights as _Bf16Linear twice with torch's GELU between, the hidden layer kept at the
    padded row count from the first GEMM to the second, forward and backward. Layer by layer, the second layer would
    pad the GELU's output again, and the first would pad the GELU's gradient: two copies of the [rows, 4 x dim]
    hidden layer per step. The same numbers as layer by layer: the padded rows of the output gradient are zeros, so
    the hidden layer's are too, and the bias gradients sum the real rows only."""

    @staticmethod
    def forward(ctx, x, weight1, bias1, weight2, bias2, upcast: bool) -> torch.Tensor:
        w1, w2 = weight1.to(torch.bfloat16), weight2.to(torch.bfloat16)
        b1, b2 = (None if b is None else b.to(torch.bfloat16) for b in (bias1, bias2))
        x2d = _padded_bf16(x)
        hidden = _gemm(x2d, w1, b1)
        activated = F.gelu(hidden)
        ctx.save_for_backward(x2d, hidden, activated, w1, w2)
        ctx.has_bias = (bias1 is not None, bias2 is not None)
        ctx.input_shape, ctx.input_dtype = x.shape, x.dtype
        return _real_rows(_gemm(activated, w2, b2), x, upcast)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x2d, hidden, activated, w1, w2 = ctx.saved_tensors
        rows = math.prod(ctx.input_shape[:-1])
        g = _rows_in_bf16(grad.reshape(-1, grad.shape[-1]), x2d.shape[0])
        needs = ctx.needs_input_grad
        grad_w2 = _weight_grad(g, activated) if needs[3] else None
        grad_b2 = g[:rows].sum(0).float() if ctx.has_bias[1] and needs[4] else None
        grad_x = grad_w1 = grad_b1 = None
        if needs[0] or needs[1] or needs[2]:
            grad_hidden = torch.ops.aten.gelu_backward(torch.mm(g, w2), hidden)
            if needs[0]:
                grad_x = torch.mm(grad_hidden, w1)[:rows].view(ctx.input_shape).to(ctx.input_dtype)
            if needs[1]:
                grad_w1 = _weight_grad(grad_hidden, x2d)
            if ctx.has_bias[0] and needs[2]:
                grad_b1 = grad_hidden[:rows].sum(0).float()
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2, None


def mlp(fc1: Linear, fc2: Linear, x: torch.Tensor, upcast: bool = False) -> torch.Tensor:
    """fc2(GELU(fc1(x))), the exact (erf) GELU. Under a CPU bf16 autocast the hidden layer stays at the padded row
    count between the two GEMMs (_Bf16Mlp); without gradients (the teacher's targets, encoding, serving) the GELU also
    runs inside the first GEMM (see _gemm), faster by a tenth of a bf16 encode (docs/results.md, issue 23).
    Elsewhere (fp32, CUDA) it is the two layers and torch's GELU. `upcast`: as Linear.forward's."""
    if not cpu_bf16_autocast(x):
        return fc2(F.gelu(fc1(x)))
    if torch.is_grad_enabled():
        return _Bf16Mlp.apply(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, upcast)
    activated = _gemm(_padded_bf16(x), *fc1._bf16_weights(), gelu=True)
    return _real_rows(_gemm(activated, *fc2._bf16_weights()), x, upcast)
