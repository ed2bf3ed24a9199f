"""--precision through the real commands: a bf16 run learns, its fp32 checkpoint evaluates in fp32, `auto`
follows the CPU's flags (fp32 on a CPU without AVX512-BF16 or AMX) and says why, a bad value is one error line."""

import json

import pytest
from conftest import ServerProcess, assert_user_error, run_cli, train_learning_latent, train_world_on
from safetensors import safe_open

from textjepa.config import PRECISION_CHOICES
from textjepa.precision import PRECISION_CHOICES as REQUESTS
from textjepa.precision import native_cpu_bf16_flags, read_cpu_flags

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# The tests that read bf16_latent share one xdist group (scripts/test.sh: --dist loadgroup), so that it is trained
# once, on one worker.
ON_BF16_LATENT = pytest.mark.xdist_group("bf16_latent")


@pytest.fixture(scope="module")
def bf16_latent(tmp_path_factory):
    return train_learning_latent(tmp_path_factory.mktemp("bf16"), "--precision", "bf16")


def test_config_choices_are_the_precision_module_requests():
    assert PRECISION_CHOICES == REQUESTS


@ON_BF16_LATENT
def test_bf16_run_states_its_precision_first_and_records_it(bf16_latent):
    first = bf16_latent["stdout"].splitlines()[0]
    assert first.startswith("precision: bf16 autocast, fp32 master weights"), first
    assert "--precision bf16: asked for" in first
    if not native_cpu_bf16_flags(read_cpu_flags()):
        assert "expect it slower than fp32" in first
    with safe_open(str(bf16_latent["model"]), "pt") as handle:
        info = json.loads(handle.metadata()["info"])
        dtypes = {handle.get_tensor(name).dtype for name in handle.keys()}
    assert info["precision"] == "bf16" and info["precision_requested"] == "bf16"
    assert info["weights_dtype"] == "float32" and info["train"]["precision"] == "bf16"
    assert {str(dtype) for dtype in dtypes} == {"torch.float32"}


@ON_BF16_LATENT
def test_bf16_checkpoint_learns_and_evaluates_in_fp32(bf16_latent):
    report_path = bf16_latent["root"] / "eval_fp32.json"
    result = run_cli(
        "eval-jepa", bf16_latent["model"], "--data-dir", bf16_latent["root"] / "cache", "--json", report_path,
        "--batch", "16", "--precision", "fp32",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "precision: fp32 on cpu (--precision fp32: asked for)"
    report = json.loads(report_path.read_text())
    assert report["precision"] == "fp32" and report["split"] == "val"
    # Learned in bf16: clearly better than the untrained model of the same shape on the held-out lines.
    assert report["trained"]["retrieval_top1"] > report["untrained_baseline"]["retrieval_top1"] + 0.1
    assert report["trained"]["cosine_mean"] > report["untrained_baseline"]["cosine_mean"]


@ON_BF16_LATENT
def test_eval_in_bf16_matches_fp32(bf16_latent):
    reports = {}
    for precision in ("fp32", "bf16"):
        path = bf16_latent["root"] / f"eval_small_{precision}.json"
        result = run_cli(
            "eval-jepa", bf16_latent["model"], "--data-dir", bf16_latent["root"] / "cache", "--json", path,
            "--batch", "16", "--steps", "3", "--precision", precision,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        reports[precision] = json.loads(path.read_text())
    assert reports["bf16"]["precision"] == "bf16"
    for row in ("trained", "untrained_baseline"):
        fp32, bf16 = reports["fp32"][row], reports["bf16"][row]
        assert abs(fp32["cosine_mean"] - bf16["cosine_mean"]) < 0.02, (fp32, bf16)
        assert abs(fp32["retrieval_mrr"] - bf16["retrieval_mrr"]) < 0.05, (fp32, bf16)


@ON_BF16_LATENT
def test_auto_follows_the_cpu_flags_and_says_why(bf16_latent):
    native = native_cpu_bf16_flags(read_cpu_flags())
    report_path = bf16_latent["root"] / "eval_auto.json"
    result = run_cli(
        "eval-jepa", bf16_latent["model"], "--data-dir", bf16_latent["root"] / "cache", "--json", report_path,
        "--batch", "16", "--steps", "2", "--precision", "auto",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    report = json.loads(report_path.read_text())
    if native:  # a CPU with native bf16 matmuls
        assert report["precision"] == "bf16" and f"the CPU reports {', '.join(native)}" in first
    else:  # this project's machine: AVX2 only
        assert report["precision"] == "fp32"
        assert first.startswith("precision: fp32 on cpu (--precision auto: the CPU reports none of amx_bf16")
        assert "bf16 would be emulated" in first


@pytest.mark.parametrize("command", ["latent", "infer", "serve", "train-bridge", "eval-conditioning"])
def test_bad_precision_is_one_error_line(tmp_path, command):
    positional = {
        "latent": ["x.txt"],
        "eval-world": ["m.safetensors"],
        "infer": ["m.safetensors", "hi"],
        "train-bridge": ["m.safetensors", "pairs.txt"],
        "eval-conditioning": ["m.safetensors", "bridge.safetensors"],
    }
    result = run_cli(command, *positional.get(command, []), "--precision", "fp16", cwd=tmp_path)
    assert_user_error(result, "--precision", "fp16")


def test_bf16_world_model_answers_in_either_precision(tiny_world, tmp_path):
    # The world stage in bf16 (30 steps: the test compares precisions, not what it learned), from the session's
    # fp32 tiny latent encoder, on its pairs.
    run = train_world_on(tiny_world, tiny_world["latent"], tmp_path / "world", "--steps", "30", "--precision", "bf16")
    assert run["stdout"].splitlines()[0].startswith("precision: bf16")
    replies = {}
    for precision in ("bf16", "fp32"):
        prompt = "User: tell me about space please"
        result = run_cli("infer", run["world"], prompt, "--json", "--precision", precision, "--top-k", "3")
        assert result.returncode == 0, result.stderr
        assert f"precision: {'bf16 autocast' if precision == 'bf16' else 'fp32'}" in result.stderr
        replies[precision] = json.loads(result.stdout)
    evaluated = {}
    for precision in ("bf16", "fp32"):
        path = tmp_path / f"eval_world_{precision}.json"
        result = run_cli(
            "eval-world", run["world"], "--data-dir", run["cache"], "--json", path, "--precision", precision,
            "--batch", "24", "--steps", "2",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        evaluated[precision] = json.loads(path.read_text())
    assert evaluated["bf16"]["precision"] == "bf16" and evaluated["fp32"]["precision"] == "fp32"
    for name in ("transition_cos", "MRR"):
        assert abs(evaluated["bf16"]["world_model"][name] - evaluated["fp32"]["world_model"][name]) < 0.05
    # The same fp32 weights in two precisions: the same nearest reply, scores within bf16's rounding.
    assert replies["bf16"]["output"] == replies["fp32"]["output"]
    for bf16, fp32 in zip(replies["bf16"]["alternatives"], replies["fp32"]["alternatives"], strict=True):
        assert abs(bf16["score"] - fp32["score"]) < 0.05


def test_serve_in_bf16_states_it_and_embeds_like_the_agent(tiny_world, tmp_path):
    import httpx
    import numpy as np

    from textjepa.agent import Agent

    world = tiny_world["world"]
    server = ServerProcess([world, "--precision", "bf16"], tmp_path / "server.log")
    try:
        assert "(--precision bf16: asked for" in server.first_line and "precision: bf16 autocast" in server.first_line
        texts = ["rain falls from grey clouds", "the guitar plays a slow melody"]
        server.wait_ready(timeout=120)
        body = httpx.post(f"{server.base}/v1/embeddings", json={"input": texts}, timeout=30).json()
    finally:
        server.stop()
    served = np.array([row["embedding"] for row in body["data"]], dtype=np.float32)
    np.testing.assert_allclose(
        served,
        Agent.load(world, precision="bf16").world.context_encoder.embed_texts(texts, 32).vectors.numpy(),
        atol=1e-5,
    )
    fp32 = Agent.load(world, precision="fp32").world.context_encoder.embed_texts(texts, 32).vectors.numpy()
    assert not np.array_equal(served, fp32)  # computed in bf16 ...
    np.testing.assert_allclose(served, fp32, atol=0.1)  # ... and close to fp32
