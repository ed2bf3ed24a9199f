"""The precision choice (CPU flags, CUDA), the autocast contexts, and a real bf16 forward/backward of our encoder."""

from __future__ import annotations

import pytest
import torch

from textjepa.config import ModelConfig
from textjepa.errors import TextJepaError
from textjepa.models.encoder import Encoder, masked_mean
from textjepa.precision import (
    WORKS,
    autocast,
    cpu_flag_set,
    fp32_function,
    full_precision,
    native_cpu_bf16_flags,
    read_cpu_flags,
    resolve_precision,
)

# /proc/cpuinfo excerpts as Linux prints them. This project's machine: an AMD EPYC VM with AVX2 only.
AVX2_ONLY = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model name\t: AMD EPYC
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht \
syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid extd_apicid \
tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx \
f16c rdrand hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext vmmcall \
fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 \
xsaves clzero xsaveerptr arat umip vaes vpclmulqdq rdpid fsrm
bugs\t\t: sysret_ss_attrs null_seg spectre_v1 spectre_v2 spec_store_bypass srso

processor\t: 1
flags\t\t: fpu vme de pse avx2
"""

# An AMD EPYC 9004 (Zen 4) guest: AVX512 with the BF16 dot product, no AMX.
ZEN4_AVX512_BF16 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht \
syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid extd_apicid aperfmperf \
tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand \
hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch topoext perfctr_core invpcid_single ssbd \
ibrs ibpb stibp vmmcall fsgsbase bmi1 avx2 smep bmi2 invpcid avx512f avx512dq rdseed adx smap avx512ifma clflushopt \
clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves avx512_bf16 clzero xsaveerptr rdpru wbnoinvd \
arat avx512vbmi pku ospke avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid fsrm
"""

# An Intel Xeon 4th generation (Sapphire Rapids) guest: AMX tiles with bf16, and AVX512-BF16.
SAPPHIRE_RAPIDS_AMX = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss ht \
syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid tsc_known_freq pni pclmulqdq \
ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm \
abm 3dnowprefetch invpcid_single ssbd ibrs ibpb stibp ibrs_enhanced fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms \
invpcid avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec \
xgetbv1 xsaves avx_vnni avx512_bf16 wbnoinvd ida arat avx512vbmi umip pku ospke waitpkg avx512_vbmi2 gfni vaes \
vpclmulqdq avx512_vnni avx512_bitalg tme avx512_vpopcntdq rdpid cldemote movdiri movdir64b md_clear serialize \
amx_bf16 avx512_fp16 amx_tile amx_int8 flush_l1d arch_capabilities
"""

# A CPU that reports AMX bf16 tiles but (as a VM may mask it) not the AVX512-BF16 dot product.
AMX_WITHOUT_AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile amx_int8\n"


# ---------------------------------------------------------------- reading CPU flags


def test_flags_come_from_the_first_processor_only():
    flags = cpu_flag_set(AVX2_ONLY)
    assert "avx2" in flags and "fsrm" in flags and "sysret_ss_attrs" not in flags  # not the `bugs` line
    assert cpu_flag_set("model name : no flags here\n") == frozenset()


def test_native_bf16_flags_of_real_cpus():
    assert native_cpu_bf16_flags(AVX2_ONLY) == []
    assert native_cpu_bf16_flags(ZEN4_AVX512_BF16) == ["avx512_bf16"]
    assert native_cpu_bf16_flags(SAPPHIRE_RAPIDS_AMX) == ["amx_bf16", "avx512_bf16"]
    assert native_cpu_bf16_flags(AMX_WITHOUT_AVX512_BF16) == ["amx_bf16"]


def test_read_cpu_flags_of_a_missing_file_is_empty(tmp_path):
    assert read_cpu_flags(tmp_path / "no-cpuinfo") == ""
    (tmp_path / "cpuinfo").write_text(ZEN4_AVX512_BF16)
    assert native_cpu_bf16_flags(read_cpu_flags(tmp_path / "cpuinfo")) == ["avx512_bf16"]


# ---------------------------------------------------------------- resolving --precision


def test_auto_on_an_avx2_only_cpu_is_fp32():
    choice = resolve_precision("auto", "cpu", AVX2_ONLY)
    assert (choice.precision, choice.native_bf16, choice.compute_dtype) == ("fp32", False, torch.float32)
    assert "emulated" in choice.reason
    assert choice.describe().startswith("precision: fp32 on cpu (--precision auto:")


@pytest.mark.parametrize(
    ("cpuinfo", "flag"),
    [(ZEN4_AVX512_BF16, "avx512_bf16"), (SAPPHIRE_RAPIDS_AMX, "amx_bf16"), (AMX_WITHOUT_AVX512_BF16, "amx_bf16")],
)
def test_auto_on_a_cpu_with_native_bf16_is_bf16(cpuinfo, flag):
    choice = resolve_precision("auto", torch.device("cpu"), cpuinfo)
    assert (choice.precision, choice.native_bf16, choice.compute_dtype) == ("bf16", True, torch.bfloat16)
    assert flag in choice.reason and flag in choice.describe()
    assert choice.info()["precision"] == "bf16" and choice.info()["weights_dtype"] == "float32"


@pytest.mark.parametrize("cpuinfo", [ZEN4_AVX512_BF16, SAPPHIRE_RAPIDS_AMX])
def test_auto_picks_bf16_only_for_the_work_where_it_measured_faster(cpuinfo):
    """On a native-bf16 CPU: bf16 for training and encoding batches, fp32 for serving (bf16's p99 was slower)."""
    picked = {work: resolve_precision("auto", "cpu", cpuinfo, work=work) for work in WORKS}
    assert {work: choice.precision for work, choice in picked.items()} == {
        "training": "bf16",
        "encoding": "bf16",
        "serving": "fp32",
    }
    assert picked["serving"].native_bf16 and "measured slower than fp32 for serving" in picked["serving"].describe()
    # Asked for explicitly, bf16 serves; without native bf16 every work is fp32; a bf16 GPU is bf16 for all.
    assert resolve_precision("bf16", "cpu", cpuinfo, work="serving").precision == "bf16"
    assert {resolve_precision("auto", "cpu", AVX2_ONLY, work=work).precision for work in WORKS} == {"fp32"}
    assert {resolve_precision("auto", "cuda", AVX2_ONLY, True, work=work).precision for work in WORKS} == {"bf16"}
    # Models narrower than any shape measured faster stay in fp32 (dim unknown: the default shapes' rule).
    narrow = resolve_precision("auto", "cpu", cpuinfo, work="training", dim=64)
    assert narrow.precision == "fp32" and "below dim 128" in narrow.reason
    for dim in (128, 384):
        assert resolve_precision("auto", "cpu", cpuinfo, work="training", dim=dim).precision == "bf16"
        assert resolve_precision("auto", "cpu", cpuinfo, work="encoding", dim=dim).precision == "bf16"
    assert resolve_precision("auto", "cpu", AVX2_ONLY, work="training", dim=384).precision == "fp32"
    with pytest.raises(ValueError, match="unknown work 'chatting'"):
        resolve_precision("auto", "cpu", cpuinfo, work="chatting")


def test_explicit_requests_are_honoured_on_cpu():
    assert resolve_precision("fp32", "cpu", SAPPHIRE_RAPIDS_AMX).precision == "fp32"
    emulated = resolve_precision("bf16", "cpu", AVX2_ONLY)
    assert emulated.precision == "bf16" and not emulated.native_bf16
    assert "slower than fp32" in emulated.describe()
    assert resolve_precision("bf16", "cpu", ZEN4_AVX512_BF16).reason == "asked for"


def test_cuda_choices():
    # This test machine has no CUDA device: auto asks torch and falls back to fp32.
    if not torch.cuda.is_available():
        assert resolve_precision("auto", "cuda", AVX2_ONLY).precision == "fp32"
    assert resolve_precision("auto", "cuda", AVX2_ONLY, cuda_bf16=True).precision == "bf16"
    assert resolve_precision("auto", "cuda:1", SAPPHIRE_RAPIDS_AMX, cuda_bf16=False).precision == "fp32"
    with pytest.raises(TextJepaError, match="no native bf16"):
        resolve_precision("bf16", "cuda", AVX2_ONLY, cuda_bf16=False)


def test_unknown_precision_is_a_user_error():
    with pytest.raises(TextJepaError, match="unknown precision 'fp16'"):
        resolve_precision("fp16", "cpu", AVX2_ONLY)


# ---------------------------------------------------------------- autocast contexts


def test_autocast_fp32_is_a_no_op_and_bf16_runs_matmuls_in_bf16():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    with autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
        assert (a @ b).dtype == torch.float32
    with autocast(torch.device("cpu"), "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert (a @ b).dtype == torch.bfloat16
        with full_precision("cpu"):
            assert (a @ b).dtype == torch.float32
        assert (a @ b).dtype == torch.bfloat16
    with pytest.raises(ValueError):
        autocast("cpu", "fp16")


def info_nce_logits(prediction: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """What the InfoNCE loss computes first; `.float()` alone does not keep it fp32 under autocast."""
    normed = torch.nn.functional.normalize
    return normed(prediction.float(), dim=-1) @ normed(targets.float(), dim=-1).T / 0.05


def test_fp32_function_keeps_a_loss_in_fp32_under_autocast():
    torch.manual_seed(0)
    prediction = torch.randn(64, 48, requires_grad=True)
    targets = torch.randn(64, 48)
    exact = info_nce_logits(prediction, targets)
    protected = fp32_function(info_nce_logits)
    with autocast("cpu", "bf16"):
        plain = info_nce_logits(prediction, targets)
        kept = protected(prediction.to(torch.bfloat16), targets)
        again = protected(prediction, targets)
    # Without protection the logits come out of a bf16 matmul, with ~1e-2 relative error.
    assert plain.dtype == torch.bfloat16
    assert (plain.float() - exact).abs().max() > 1e-3
    assert kept.dtype == torch.float32 and again.dtype == torch.float32
    torch.testing.assert_close(again, exact)
    # The bf16 argument was rounded before the fp32 computation, nothing more.
    torch.testing.assert_close(kept, info_nce_logits(prediction.to(torch.bfloat16).float(), targets))
    again.logsumexp(-1).sum().backward()
    assert prediction.grad is not None and prediction.grad.dtype == torch.float32
    assert protected.__name__ == "info_nce_logits"


# ---------------------------------------------------------------- a real bf16 forward and backward


def tiny_batch(config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, config.vocab_size, (6, config.max_seq), generator=generator)
    lengths = torch.tensor([config.max_seq, 20, 9, 31, 2, 17])
    valid = torch.arange(config.max_seq)[None, :] < lengths[:, None]
    return ids.masked_fill(~valid, 0), valid


def forward_backward(encoder: Encoder, ids, valid, precision: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    encoder.zero_grad(set_to_none=True)
    with autocast("cpu", precision):
        latents = encoder(ids, valid)
        pooled = masked_mean(latents, valid)
        loss = (pooled - 0.1).pow(2).sum()
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in encoder.named_parameters()}
    return latents.detach(), pooled.detach(), grads


def test_encoder_under_bf16_autocast_keeps_fp32_weights_and_outputs_close_to_fp32():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=300, dim=64, layers=2, heads=4, max_seq=32)
    encoder = Encoder(config)
    ids, valid = tiny_batch(config)
    latents32, pooled32, grads32 = forward_backward(encoder, ids, valid, "fp32")
    latents16, pooled16, grads16 = forward_backward(encoder, ids, valid, "bf16")

    # Master weights and their gradients stay fp32; the residual stream and the final norm come out fp32.
    assert all(p.dtype == torch.float32 for p in encoder.parameters())
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads16.values())
    assert latents16.dtype == torch.float32 and pooled16.dtype == torch.float32
    # Padding stays exactly zero in both.
    assert latents16[~valid].abs().max() == 0 and latents32[~valid].abs().max() == 0

    # Close to fp32: per-token cosine near 1, pooled vectors within bf16 rounding.
    cos = torch.nn.functional.cosine_similarity(latents16[valid], latents32[valid], dim=-1)
    assert cos.min() > 0.99, cos.min()
    assert (pooled16 - pooled32).norm() / pooled32.norm() < 0.05
    flat16 = torch.cat([g.flatten() for g in grads16.values()])
    flat32 = torch.cat([g.flatten() for g in grads32.values()])
    assert torch.nn.functional.cosine_similarity(flat16, flat32, dim=0) > 0.98
    assert (flat16 - flat32).norm() / flat32.norm() < 0.1
    # And bf16 really ran: the outputs are not bit-identical to fp32.
    assert not torch.equal(latents16, latents32)


def test_tf32_is_allowed_only_for_fp32_on_cuda():
    from textjepa.precision import PrecisionChoice, configure_fp32_matmul

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        configure_fp32_matmul(resolve_precision("fp32", "cpu", AVX2_ONLY))
        configure_fp32_matmul(PrecisionChoice("bf16", "auto", "cuda", True, "test"))
        assert torch.backends.cuda.matmul.allow_tf32 is False
        configure_fp32_matmul(PrecisionChoice("fp32", "auto", "cuda", False, "test"))
        assert torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.skipif(torch.cuda.is_available(), reason="measures the step on the CUDA device instead")
def test_gpu_step_bench_says_skipped_without_cuda(tmp_path):
    import json
    import subprocess
    import sys

    from conftest import REPO_ROOT, cli_env

    out = tmp_path / "gpu.json"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "gpu_step.py"), "--json", str(out)],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "skipped: no CUDA device" in result.stdout
    assert json.loads(out.read_text())["skipped"] == "no CUDA device"
