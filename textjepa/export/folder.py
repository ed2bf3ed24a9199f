"""`textjepa export MODEL --format sentence-transformers --out DIR`: a folder `SentenceTransformer(DIR)` loads.

A pretrained-backbone (BERT) checkpoint becomes a plain sentence-transformers model, Transformer and Pooling
(textjepa/export/plain_bert.py): no custom code, no trust_remote_code, textjepa not needed where it is loaded.

A scratch checkpoint's encoder is textjepa's own transformer, which no sentence-transformers module computes:
the folder holds the checkpoint and its teacher (the module's weights, unchanged), the module's settings and what
sentence-transformers itself writes when it saves a model (modules.json, its config, its model card); the module
is `textjepa.export.st_module.TextJepaEncoder` (textjepa installed, trust_remote_code=True).

Either folder is built under a temporary name and renamed when complete; an existing DIR is replaced only with
--overwrite.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from textjepa.checkpoint import load_checkpoint, load_teacher
from textjepa.config import ExportConfig
from textjepa.errors import TextJepaError
from textjepa.inference.encoding import encoder_role
from textjepa.io import RunFiles, atomic_directory
from textjepa.models.frozen import TARGET_MODEL_INFO


def export_model(cfg: ExportConfig) -> Path:
    cfg.validate()
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise TextJepaError(f"{out} already exists; replace it with --overwrite or choose another --out")
    if importlib.util.find_spec("sentence_transformers") is None:
        raise TextJepaError("export needs sentence-transformers: pip install 'textjepa[export]'")
    checkpoint = load_checkpoint(cfg.model)
    teacher = load_teacher(checkpoint)  # a missing or foreign teacher is refused here, not by whoever loads the folder
    if cfg.kind == "reply" and checkpoint.info.get(TARGET_MODEL_INFO):
        raise TextJepaError(
            "--kind reply: this world model's replies are its frozen target model's embeddings; use that "
            "sentence-transformers model itself"
        )
    from sentence_transformers import SentenceTransformer

    from textjepa.export.plain_bert import write_plain_folder
    from textjepa.export.st_module import CHECKPOINT_FILE, TextJepaEncoder

    with atomic_directory(out) as tmp:
        if checkpoint.config.is_scratch:
            shutil.copyfile(checkpoint.path, tmp / CHECKPOINT_FILE)
            shutil.copyfile(RunFiles(checkpoint.path).teacher, RunFiles(tmp / CHECKPOINT_FILE).teacher)
            model = SentenceTransformer(modules=[TextJepaEncoder(tmp, cfg.kind)], device="cpu")
            model.save(str(tmp))
        else:
            weights = teacher if cfg.kind == "reply" else checkpoint
            write_plain_folder(checkpoint, weights, encoder_role(checkpoint.kind, teacher=cfg.kind == "reply"), tmp)
        if out.is_dir():  # --overwrite: the old folder goes only once the new one is complete
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()
    return out
