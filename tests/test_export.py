"""`textjepa export --format sentence-transformers`: the real sentence-transformers package loads the folder
(offline) and its encode equals textjepa's own encode, on the session's real tiny checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_user_error, run_cli

from textjepa import Encoder, WorldModel

sentence_transformers = pytest.importorskip("sentence_transformers")

TEXTS = [
    "User: tell me about music please",
    "rain falls from grey clouds",
    "User: tell me about space please\nAssistant: stars are far away\nUser: and the moon? " * 4,  # past max_seq
    "ok",
]


def export(model: Path, out: Path, *args: str) -> Path:
    result = run_cli("export", model, "--format", "sentence-transformers", "--out", out, *args)
    assert result.returncode == 0, result.stderr
    assert f"to {out}" in result.stdout
    return out


def load_st(folder: Path):
    return sentence_transformers.SentenceTransformer(str(folder), device="cpu", trust_remote_code=True)


@pytest.mark.parametrize("kind", ["context", "reply"])
def test_the_exported_world_model_encodes_as_textjepa(tiny_world, tmp_path, kind):
    folder = export(tiny_world["world"], tmp_path / "st", "--kind", kind)
    modules = json.loads((folder / "modules.json").read_text())
    assert [m["type"] for m in modules] == ["textjepa.export.st_module.TextJepaEncoder"]
    model = load_st(folder)
    expected = WorldModel.load(tiny_world["world"], device="cpu", precision="fp32").encode(TEXTS, kind=kind)
    vectors = model.encode(TEXTS, batch_size=3)  # sentence-transformers sorts by length: other batches than ours
    assert vectors.shape == expected.shape == (len(TEXTS), model[0].get_embedding_dimension())
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    # The two sides are different encoders (online and EMA teacher): the export took the one asked for.
    other = WorldModel.load(tiny_world["world"], device="cpu", precision="fp32").encode(
        TEXTS, kind="reply" if kind == "context" else "context"
    )
    assert np.abs(vectors - other).max() > 1e-3


def test_the_exported_latent_encoder_encodes_as_textjepa(tiny_world, tmp_path):
    folder = export(tiny_world["latent"], tmp_path / "st")
    expected = Encoder.load(tiny_world["latent"], device="cpu", precision="fp32").encode(TEXTS)
    np.testing.assert_allclose(load_st(folder).encode(TEXTS), expected, atol=1e-5)


def test_an_existing_folder_is_replaced_only_with_overwrite(tiny_world, tmp_path):
    out = tmp_path / "st"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_user_error(run_cli("export", tiny_world["world"], "--out", out), "already exists", "--overwrite")
    assert (out / "keep.txt").read_text() == "mine"
    export(tiny_world["world"], out, "--kind", "reply", "--overwrite")
    assert not (out / "keep.txt").exists()
    assert json.loads((out / "textjepa_config.json").read_text()) == {"kind": "reply"}
    assert not list(tmp_path.glob("st.tmp-*")), "a temporary folder was left"


def test_export_argument_errors(tiny_world, tmp_path):
    assert_user_error(run_cli("export", tiny_world["world"], "--format", "onnx", "--out", tmp_path / "x"), "onnx")
    assert_user_error(run_cli("export", tmp_path / "missing.safetensors", "--out", tmp_path / "x"), "not found")
    assert not (tmp_path / "x").exists()
