"""`export`: a checkpoint as a folder another library loads (sentence-transformers)."""

from __future__ import annotations

import argparse

from textjepa.cli.common import add_command
from textjepa.config import ExportConfig
from textjepa.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    add_command(
        subparsers,
        "export",
        ExportConfig(),
        run_export,
        help="export a checkpoint's encoder as a sentence-transformers folder",
        description=(
            "Write DIR, a folder that sentence_transformers.SentenceTransformer(DIR) loads offline, whose "
            "encode(texts) equals WorldModel.encode(texts) in fp32 (texts cut as the checkpoint's data contract "
            "cuts them). A checkpoint on a pretrained backbone (--backbone) becomes a plain Transformer + Pooling "
            "model. A scratch checkpoint becomes its files and a module of textjepa's own code, so textjepa must be "
            "installed where it is loaded, with trust_remote_code=True. --kind reply exports the EMA teacher (the "
            "reply side). An existing DIR is replaced only with --overwrite."
        ),
    )


def run_export(cfg: ExportConfig, args: argparse.Namespace, settings: Settings) -> int:
    from textjepa.export.folder import export_model
    from textjepa.runtime import configure_threads

    configure_threads(settings)
    out = export_model(cfg)
    print(f"exported {cfg.model} ({cfg.kind}) as sentence-transformers to {out}")
    return 0
