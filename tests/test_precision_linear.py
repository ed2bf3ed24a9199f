"""textjepa.models.linear.Linear: under a CPU bf16 autocast with gradients, its own backward; the same numbers as
torch's autocast linear (the weight gradient written in the weight's layout), nn.Linear's everywhere else."""

from __future__ import annotations

import pytest
import torch

from textjepa.models.linear import Linear


def outputs_and_grads(layer: Linear, x: torch.Tensor, forward) -> tuple[torch.Tensor, ...]:
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = forward(x)
    (y.float().square() * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    grads = (x.grad, layer.weight.grad, layer.bias.grad if layer.bias is not None else None)
    return (y, *grads)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_bf16_linear_matches_torchs_autocast_linear(bias, input_dtype):
    torch.manual_seed(0)
    layer = Linear(48, 80, bias=bias)
    x = torch.randn(3, 7, 48).to(input_dtype)
    ours = outputs_and_grads(layer, x, layer)
    torchs = outputs_and_grads(layer, x, lambda t: torch.nn.Linear.forward(layer, t))
    y, grad_x, grad_w, grad_b = ours
    assert y.dtype == torch.bfloat16 and torch.equal(y, torchs[0])
    assert grad_x.dtype == input_dtype and torch.equal(grad_x, torchs[1])
    # The weight gradient: the same bf16 GEMM result, fp32 and laid out like the weight.
    assert grad_w.dtype == torch.float32 and grad_w.stride() == layer.weight.stride()
    assert torch.equal(grad_w, torchs[2])
    if bias:
        # Summed in fp32 inside the kernel and rounded once, where torch's rounds the bf16 sum: within bf16 rounding.
        assert grad_b.dtype == torch.float32
        torch.testing.assert_close(grad_b, torchs[3], rtol=1e-2, atol=1e-2)
    # And it is really the custom backward that ran, not nn.Linear's.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).grad_fn.name() == "_Bf16LinearBackward"


def test_outside_bf16_training_it_is_nn_linear():
    torch.manual_seed(0)
    layer = Linear(16, 8)
    x = torch.randn(5, 16)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias), rtol=0, atol=0)
    assert layer(x).grad_fn.name() == "AddmmBackward0"
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():  # the teacher, encoding, serving
        assert layer(x).grad_fn is None and layer(x).dtype == torch.bfloat16
    assert set(dict(layer.named_parameters())) == {"weight", "bias"}  # checkpoints name nn.Linear's tensors
