"""`textjepa export --format sentence-transformers`: the real sentence-transformers package loads the folder
(offline) and its encode equals textjepa's own encode, on the session's real tiny checkpoints (scratch encoders,
through textjepa's module) and on world models trained on conftest's tiny BERT backbone, frozen and fine-tuned
(a plain Transformer + Pooling folder, loaded without trust_remote_code)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_user_error, build_sentence_transformer, main_checkpoint, pair_lines, run_cli

from textjepa import Encoder, WorldModel
from textjepa.inference.encoding import TextEncoder
from textjepa.io import RunFiles

# One worker runs this module, so its module-scoped fixtures (trained world models) are built once per run,
# not once per worker.
pytestmark = pytest.mark.xdist_group("test_export")

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


# ---------------------------------------------------------------- a pretrained-backbone checkpoint

# Past the backbone's max_seq (62 text tokens), with a start and an end of their own: a cut on the wrong side
# gives other vectors. Words of the tiny backbone's WordPiece vocabulary.
LONG = "User: tell me about music please " + "and space " * 40 + "Assistant: the rocket leaves orbit"
BACKBONE_TEXTS = ["User: tell me about space please", "the rocket leaves orbit", LONG, "ok"]


@pytest.fixture(scope="module")
def backbone_worlds(tmp_path_factory) -> dict:
    """World models on conftest's tiny sentence-transformers BERT, frozen and fine-tuned (with a teacher that lags,
    so its two sides have different weights), ten steps each; and a JEPA encoder on it, four steps."""
    root = tmp_path_factory.mktemp("export-backbone")
    folder = build_sentence_transformer(root / "st")
    pairs = root / "pairs.txt"
    pairs.write_text("\n".join(pair_lines(200)) + "\n")
    worlds = {"folder": folder}
    for mode, extra in (("frozen", []), ("finetune", ["--ema-start", "0.9", "--ema-end", "0.9"])):
        trained = run_cli(
            "train-world", pairs, "--backbone", folder, "--backbone-mode", mode, "--steps", "10", "--batch", "32",
            "--eval-every", "10", "--val-fraction", "0.2", "--no-progress", "--out-dir", root / mode,
            "--data-dir", root / "cache", *extra,
        )  # fmt: skip
        assert trained.returncode == 0, trained.stderr
        worlds[mode] = main_checkpoint(root / mode, "world")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(line.replace("\t", " ") for line in pair_lines(120, 1)) + "\n")
    latent = run_cli(
        "latent", corpus, "--backbone", folder, "--steps", "4", "--batch", "16", "--eval-every", "4",
        "--val-fraction", "0.3", "--no-progress", "--out-dir", root / "latent", "--data-dir", root / "cache",
    )  # fmt: skip
    assert latent.returncode == 0, latent.stderr
    worlds["latent"] = main_checkpoint(root / "latent", "latent")
    return worlds


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
@pytest.mark.parametrize("kind", ["context", "reply"])
def test_a_backbone_world_model_exports_as_a_plain_sentence_transformer(backbone_worlds, tmp_path, mode, kind):
    world = backbone_worlds[mode]
    folder = export(world, tmp_path / "st", "--kind", kind)
    modules = json.loads((folder / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling"]
    assert not list(folder.glob("textjepa*")), "a plain folder carries no textjepa checkpoint"
    side = TextEncoder.load(world, "cpu", teacher=kind == "reply", precision="fp32")
    assert side.tokenize([LONG]).truncated == [True]
    # No trust_remote_code, nothing fetched: sentence-transformers' own modules read the folder.
    model = sentence_transformers.SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    expected = WorldModel.load(world, device="cpu", precision="fp32").encode(BACKBONE_TEXTS, kind=kind)
    vectors = model.encode(BACKBONE_TEXTS, batch_size=3)
    assert vectors.shape == expected.shape
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    # The card beside the checkpoint says to load it so.
    assert "`SentenceTransformer(DIR).encode(texts)` gives the same vectors" in RunFiles(world).card.read_text()
    if (mode, kind) == ("frozen", "reply"):
        # Frozen mode's replies are the untouched backbone's pooled latents: the export of that side is the
        # backbone's own sentence-transformers model again (on texts within its length).
        original = sentence_transformers.SentenceTransformer(str(backbone_worlds["folder"]), device="cpu")
        short = [text for text in BACKBONE_TEXTS if text != LONG]
        np.testing.assert_allclose(model.encode(short), original.encode(short), atol=1e-5)
    if mode == "finetune":  # the two sides are different weights (online and EMA teacher): the one asked for
        short = [text for text in BACKBONE_TEXTS if text != LONG]  # cut alike on both sides
        other = WorldModel.load(world, device="cpu", precision="fp32").encode(
            short, kind="reply" if kind == "context" else "context"
        )
        assert np.abs(model.encode(short) - other).max() > 1e-4


def test_a_backbone_latent_encoder_exports_as_a_plain_sentence_transformer(backbone_worlds, tmp_path):
    """A latent checkpoint's text lines keep their first tokens: the tokenizer cuts on the right."""
    folder = export(backbone_worlds["latent"], tmp_path / "st")
    assert json.loads((folder / "tokenizer_config.json").read_text())["truncation_side"] == "right"
    model = sentence_transformers.SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    expected = Encoder.load(backbone_worlds["latent"], device="cpu", precision="fp32").encode(BACKBONE_TEXTS)
    np.testing.assert_allclose(model.encode(BACKBONE_TEXTS, batch_size=3), expected, atol=1e-5)
