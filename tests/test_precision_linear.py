"""textjepa.models.linear.Linear: under a CPU bf16 autocast with gradients, its own backward; the same numbers as
torch's autocast linear (the weight gradient written in the weight's layout), nn.Linear's everywhere else."""

from __future__ import annotations

import pytest
import torch

import textjepa.models.linear as linear_module
from textjepa.models.linear import Linear, _rows_in_bf16, mlp, padded_rows


def outputs_and_grads(layer: Linear, x: torch.Tensor, forward) -> tuple[torch.Tensor, ...]:
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = forward(x)
    (y.float().square() * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    grads = (x.grad, layer.weight.grad, layer.bias.grad if layer.bias is not None else None)
    return (y, *grads)


@pytest.mark.parametrize("bias", ["fused", "addmm", None])  # the bias inside oneDNN's GEMM, by addmm, or none
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("leading", [(3, 7), (5, 205)])  # 21 rows run as 32, 1,025 as 1,152
def test_bf16_linear_matches_torchs_autocast_linear(bias, input_dtype, leading, monkeypatch):
    if bias == "fused" and not linear_module._onednn_bf16_linear():
        pytest.skip("torch's oneDNN linear takes no bf16 on this CPU (addmm runs it: the 'addmm' case)")
    if bias == "addmm":
        monkeypatch.setattr(linear_module, "_onednn_bf16_linear", lambda: False)
    torch.manual_seed(0)
    layer = Linear(48, 80, bias=bias is not None)
    x = torch.randn(*leading, 48).to(input_dtype)
    assert padded_rows(x.shape[0] * x.shape[1]) > x.shape[0] * x.shape[1]  # the padded path is the one tested
    ours = outputs_and_grads(layer, x, layer)
    torchs = outputs_and_grads(layer, x, lambda t: torch.nn.Linear.forward(layer, t))
    y, grad_x, grad_w, grad_b = ours
    assert y.dtype == torch.bfloat16 and torch.equal(y, torchs[0])
    assert grad_x.dtype == input_dtype and torch.equal(grad_x, torchs[1])
    # The weight gradient: the same bf16 GEMM result, fp32 and laid out like the weight.
    assert grad_w.dtype == torch.float32 and grad_w.stride() == layer.weight.stride()
    assert torch.equal(grad_w, torchs[2])
    if bias is not None:
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


def test_row_counts_are_padded_to_a_coarse_grid():
    padded = [padded_rows(rows) for rows in range(1, 5001)]
    assert all(p >= rows for rows, p in zip(range(1, 5001), padded))
    assert all(p - rows <= max(15, rows // 8) for rows, p in zip(range(1, 5001), padded))  # at most 12.5% more
    assert all(padded_rows(p) == p for p in padded)  # a padded count is its own grid point
    # A run's row counts (e.g. 300 to 4,096 tokens in a batch) map to few GEMM shapes: oneDNN builds each once.
    assert len({padded_rows(rows) for rows in range(300, 4097)}) <= 32


def test_padded_rows_are_zeros_and_the_rows_are_the_input():
    t = torch.randn(21, 5)
    block = _rows_in_bf16(t, 32)
    assert block.dtype == torch.bfloat16 and block.shape == (32, 5)
    assert torch.equal(block[:21], t.to(torch.bfloat16)) and not block[21:].any()
    same = torch.randn(32, 5).to(torch.bfloat16)
    assert _rows_in_bf16(same, 32) is same  # nothing to pad, already bf16: no copy


@pytest.mark.parametrize("rows", [21, 1025])
def test_without_gradients_it_computes_what_torchs_autocast_linear_does(rows):
    torch.manual_seed(0)
    layer = Linear(48, 80)
    x = torch.randn(rows, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():  # the teacher, encoding, serving
        ours, torchs = layer(x), torch.nn.Linear.forward(layer, x)
    assert ours.dtype == torch.bfloat16 and ours.shape == (rows, 80)
    assert torch.equal(ours, torchs)


def layer_by_layer(fc1: Linear, fc2: Linear):
    return lambda t: fc2(torch.nn.functional.gelu(fc1(t)))


def mlp_outputs_and_grads(fc1: Linear, fc2: Linear, x: torch.Tensor, forward) -> list[torch.Tensor]:
    x = x.detach().clone().requires_grad_(torch.is_grad_enabled())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = forward(x)
    if not torch.is_grad_enabled():
        return [y]
    (y.float().square() * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    params = [p for layer in (fc1, fc2) for p in (layer.weight, layer.bias) if p is not None and p.requires_grad]
    grads = [x.grad, *(p.grad for p in params)]
    for p in params:
        p.grad = None
    return [y, *grads]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("leading", [(3, 7), (5, 205)])  # 21 rows run as 32, 1,025 as 1,152
def test_bf16_mlp_is_its_two_layers_and_gelu_bit_for_bit(bias, leading):
    torch.manual_seed(0)
    fc1, fc2 = Linear(48, 96, bias=bias), Linear(96, 40, bias=bias)
    x = torch.randn(*leading, 48)
    ours = mlp_outputs_and_grads(fc1, fc2, x, lambda t: mlp(fc1, fc2, t))
    layered = mlp_outputs_and_grads(fc1, fc2, x, layer_by_layer(fc1, fc2))
    assert len(ours) == (6 if bias else 4)
    for mine, theirs in zip(ours, layered, strict=True):  # output, input and every weight and bias gradient
        assert mine.dtype == theirs.dtype and torch.equal(mine, theirs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert mlp(fc1, fc2, x.requires_grad_(True)).grad_fn.name() == "_Bf16MlpBackward"


@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("what", ["linear", "mlp"])
def test_upcast_results_are_the_bf16_results_in_fp32_with_the_same_gradients(grad, what):
    torch.manual_seed(0)
    fc1, fc2 = Linear(48, 96), Linear(96, 40)
    x = torch.randn(5, 205, 48)

    def forward(t: torch.Tensor, up: bool) -> torch.Tensor:
        return fc1(t, upcast=up) if what == "linear" else mlp(fc1, fc2, t, upcast=up)

    with torch.set_grad_enabled(grad):
        up = mlp_outputs_and_grads(fc1, fc2, x, lambda t: forward(t, True))
        down = mlp_outputs_and_grads(fc1, fc2, x, lambda t: forward(t, False))
    assert up[0].dtype == torch.float32 and down[0].dtype == torch.bfloat16
    assert torch.equal(up[0], down[0].float())
    if not grad:
        assert len(up) == 1
        return
    if what == "linear":  # fc2 took no part: its gradients stay None
        assert up[4:] == [None, None] and down[4:] == [None, None]
        up, down = up[:4], down[:4]
    for mine, theirs in zip(up[1:], down[1:], strict=True):  # the input's, then each weight's and bias's
        assert torch.equal(mine, theirs)


def test_a_frozen_bf16_mlp_passes_its_input_gradient_only():
    torch.manual_seed(0)
    fc1, fc2 = Linear(48, 96).requires_grad_(False), Linear(96, 40).requires_grad_(False)
    x = torch.randn(5, 205, 48)
    ours = mlp_outputs_and_grads(fc1, fc2, x, lambda t: mlp(fc1, fc2, t))
    layered = mlp_outputs_and_grads(fc1, fc2, x, layer_by_layer(fc1, fc2))
    assert len(ours) == 2 and torch.equal(ours[1], layered[1]) and fc1.weight.grad is None


@pytest.mark.parametrize("fused", [True, False])  # GELU inside oneDNN's GEMM, or addmm and then the GELU
def test_bf16_mlp_without_gradients_rounds_the_hidden_layer_once(fused, monkeypatch):
    if fused and not linear_module._onednn_bf16_linear():
        pytest.skip("torch's oneDNN linear takes no bf16 on this CPU")
    if not fused:
        monkeypatch.setattr(linear_module, "_onednn_bf16_linear", lambda: False)
    torch.manual_seed(0)
    fc1, fc2 = Linear(48, 96), Linear(96, 40)
    x = torch.randn(3, 7, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        ours = mlp(fc1, fc2, x)
        hidden_ours = linear_module._gemm(
            x.reshape(-1, 48).bfloat16(), fc1.weight.bfloat16(), fc1.bias.bfloat16(), gelu=True
        )
        layered = layer_by_layer(fc1, fc2)(x)
    # The hidden layer's reference: the GELU of what the bf16 kernel computes (bf16 inputs, fp32 sums), rounded once.
    bf16 = (x.reshape(-1, 48).bfloat16().float(), fc1.weight.bfloat16().float(), fc1.bias.bfloat16().float())
    exact = torch.nn.functional.gelu(torch.nn.functional.linear(*bf16)).bfloat16()
    assert ours.dtype == torch.bfloat16 and ours.shape == (3, 7, 40)
    if fused:
        torch.testing.assert_close(hidden_ours, exact, rtol=2**-8, atol=1e-4)  # at most a bf16 rounding step apart
        assert not torch.equal(ours, layered)  # the hidden layer was not rounded before its GELU
        torch.testing.assert_close(ours, layered, rtol=2e-2, atol=2e-3)
    else:
        assert torch.equal(ours, layered)


def test_outside_bf16_the_mlp_is_its_layers_and_torchs_gelu():
    torch.manual_seed(0)
    fc1, fc2 = Linear(48, 96), Linear(96, 40)
    x = torch.randn(3, 7, 48)
    assert torch.equal(mlp(fc1, fc2, x), fc2(torch.nn.functional.gelu(fc1(x))))


def test_a_frozen_layer_passes_its_input_gradient_as_torchs_does():
    """Weights without gradients (a frozen backbone's layer) under a bf16 autocast: the input's gradient only."""
    torch.manual_seed(0)
    layer = Linear(48, 80).requires_grad_(False)
    grads = []
    for forward in (layer, lambda t: torch.nn.Linear.forward(layer, t)):
        x = torch.randn(5, 205, 48, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            forward(x).float().sum().backward()
        grads.append(x.grad)
    assert layer.weight.grad is None and torch.equal(grads[0], grads[1])


def test_without_gradients_the_bf16_weights_are_cast_once_and_again_after_any_change():
    torch.manual_seed(0)
    layer = Linear(48, 80)
    x = torch.randn(21, 48)

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
            return layer(x), torch.nn.Linear.forward(layer, x)

    ours, torchs = both()
    cast = layer._bf16_copy[1]
    assert torch.equal(ours, torchs)
    ours, _ = both()
    assert layer._bf16_copy[1] is cast  # the weights did not change: no new cast
    with torch.no_grad():  # an optimizer step or the EMA: in place
        layer.weight.mul_(-0.5)
        layer.bias.add_(1.0)
    ours, torchs = both()
    assert torch.equal(ours, torchs) and layer._bf16_copy[1] is not cast
    layer.load_state_dict({"weight": torch.randn(80, 48), "bias": torch.randn(80)})
    ours, torchs = both()
    assert torch.equal(ours, torchs)
    layer.weight.data = torch.randn(80, 48)  # new storage, as a move to another device gives
    ours, torchs = both()
    assert torch.equal(ours, torchs)
    assert set(layer.state_dict()) == {"weight", "bias"}


def test_a_layer_made_under_inference_mode_still_runs_in_bf16():
    """Its weights are inference tensors, which keep no version: they are cast on every call, never cached."""
    torch.manual_seed(0)
    with torch.inference_mode():
        layer = Linear(48, 80)
        x = torch.randn(21, 48)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours, torchs = layer(x), torch.nn.Linear.forward(layer, x)
    assert torch.equal(ours, torchs) and layer._bf16_copy is None


def attention_and_grads(attn, x: torch.Tensor, mask: torch.Tensor, forward) -> list[torch.Tensor]:
    attn.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = forward(x)
    (out.square() * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    return [out, x.grad, *(p.grad for p in attn.parameters())]


def through_fp32_qkv(attn, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention in a bf16 training step by the plain route: the projection cast up whole to an fp32 qkv, then split
    into heads by views."""
    from textjepa.models.encoder import attention

    qkv = attn.qkv(x, upcast=True)
    with torch.autocast("cpu", enabled=False):
        out = attention(qkv, attn.heads, mask)
    return attn.proj(out, upcast=True)


@pytest.fixture
def nan_filled_empty_tensors():
    """torch.empty filled with NaN (deterministic mode fills uninitialised memory): a padded row left unwritten
    shows up as NaN in the weight gradient instead of passing by luck as zeros."""
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("leading", [(3, 7), (9, 114)])  # 21 rows run as 32, 1,026 as 1,152
def test_bf16_heads_give_attention_the_numbers_of_an_fp32_qkv_bit_for_bit(leading, nan_filled_empty_tensors):
    from textjepa.models.encoder import SelfAttention

    assert torch.empty(4).isnan().all()
    torch.manual_seed(0)
    attn = SelfAttention(32, 4)
    valid = torch.rand(*leading) > 0.3
    valid[:, 0] = True
    mask = valid[:, None, None, :]
    x = torch.randn(*leading, 32)
    assert attn._fp32_attention(x.requires_grad_(True)) is False  # outside an autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert attn._fp32_attention(x)
    ours = attention_and_grads(attn, x, mask, lambda t: attn(t, mask))
    plain = attention_and_grads(attn, x, mask, lambda t: through_fp32_qkv(attn, t, mask))
    assert ours[0].dtype == torch.float32
    for name, a, b in zip(["output", "input", *(n for n, _ in attn.named_parameters())], ours, plain, strict=True):
        assert torch.equal(a, b), name
    assert attn.qkv.weight.grad[64:].abs().sum() > 0  # the values' rows of the projection got a gradient too


def test_bf16_heads_of_a_part_that_reaches_no_loss_are_zeros():
    from textjepa.models.encoder import split_heads
    from textjepa.models.linear import bf16_heads

    torch.manual_seed(0)
    layer = Linear(16, 48)
    x = torch.randn(2, 5, 16)

    def grads(heads_of) -> list[torch.Tensor]:
        layer.zero_grad(set_to_none=True)
        x_ = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            q, _, v = heads_of(x_)
        assert q.dtype == torch.float32 and q.shape == (2, 2, 5, 8)
        (q.sum() + (2 * v).sum()).backward()  # keys unused: their gradient comes back as None
        return [x_.grad, layer.weight.grad, layer.bias.grad]

    ours, plain = grads(lambda t: bf16_heads(layer, t, 2)), grads(lambda t: split_heads(layer(t, upcast=True), 2))
    for a, b in zip(ours, plain, strict=True):
        assert torch.equal(a, b)
    assert ours[1][16:32].abs().sum() == 0 and ours[1][:16].abs().sum() > 0  # the keys' rows: zeros, others not


def test_attention_without_a_backward_stays_in_bf16():
    from textjepa.models.encoder import SelfAttention

    attn = SelfAttention(32, 4)
    x = torch.randn(2, 5, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            assert not attn._fp32_attention(x)
        attn.requires_grad_(False)
        assert not attn._fp32_attention(x)  # frozen, and an input without gradient: nothing flows back
        assert attn._fp32_attention(x.requires_grad_(True))  # a frozen layer still passes its input's gradient
