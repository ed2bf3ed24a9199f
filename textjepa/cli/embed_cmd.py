"""`embed`: the embedding of every line of a file, to .npy or Parquet."""

from __future__ import annotations

import argparse

from textjepa.cli.common import add_command
from textjepa.config import EmbedConfig
from textjepa.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    add_command(
        subparsers,
        "embed",
        EmbedConfig(),
        run_embed,
        help="embed every line of a file (or hub:<id>) to .npy or Parquet",
        description=(
            "Write the encoder's embedding of every line of DATA to FILE: .npy (float32 [lines, dim], a row per "
            "used line in file order) or .parquet (a text column beside an embedding column). A world model "
            "embeds lines as contexts (the state latent, as /v1/embeddings and WorldModel.encode), or as replies "
            "with --reply; a latent model as text lines. Lines are read as `latent` reads them (a `left<TAB>right` "
            "line gives its left side); bad lines are skipped and counted. Streamed in batches: memory stays flat "
            "in the file's size. FILE is written under a temporary name and renamed when complete."
        ),
    )


def run_embed(cfg: EmbedConfig, args: argparse.Namespace, settings: Settings) -> int:
    from textjepa.embed import embed_file
    from textjepa.runtime import configure_threads

    configure_threads(settings)
    embed_file(cfg, settings)
    return 0
