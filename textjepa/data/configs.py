"""The data package's settings: how a line file becomes training records (`DataConfig`), and the `prepare`
commands (data/prepare.py). Plain dataclasses that import no torch, so that the command line reads and checks
them first; textjepa/config.py nests and gathers them into the command configs.
"""

from __future__ import annotations

from dataclasses import dataclass

from textjepa.errors import TextJepaError
from textjepa.fields import Checked, setting


@dataclass
class DataConfig(Checked):
    """How a line file becomes training records."""

    path: str = setting("", positional=True, metavar="DATA", help="line file or hub:<dataset_id>")
    data_dir: str = setting("data", help="hub and token caches")
    max_line_bytes: int = setting(1_000_000, help="longer lines are skipped")
    min_tokens: int = setting(2, help="shorter records are skipped")
    val_fraction: float = setting(0.05, help="held-out share of lines")
    tokenizer_sample_lines: int = setting(200_000, help="tokenizer training reads at most this many lines")


def world_data_defaults() -> DataConfig:
    """The world model's data settings: a one-word next turn ("Yes.") is a real reply, so one token is enough."""
    return DataConfig(min_tokens=1)


PROGRESS_HELP = "no progress bar"


@dataclass
class PrepareHubConfig(Checked):
    """`textjepa prepare hub`: download and cache a hub dataset now, as a training command would."""

    dataset: str = setting("", positional=True, metavar="DATASET", help="hub:<org>/<name> (or just <org>/<name>)")
    mode: str = setting("latent", choices=("latent", "world"), help="what it is for")
    data_dir: str = setting("data", help="where cache files go")


@dataclass
class PrepareDemoConfig(Checked):
    """`textjepa prepare demo`: the embedded default corpus from the local Python standard library."""

    out_dir: str = setting("data/demo", help="where the two files go")


@dataclass
class PrepareUltrachatConfig(Checked):
    """`textjepa prepare ultrachat`: chat turns -> context<TAB>next_turn (HuggingFaceH4/ultrachat_200k)."""

    output: str = setting("data/ultrachat_pairs.txt", positional="?", metavar="OUTPUT", help="")
    # Previous turns kept as the context of each assistant turn.
    context_window: int = setting(6, min=1, help="previous turns kept")
    min_tokens: int = setting(2, min=0, help="fewer whitespace words on either side: skipped")
    max_rows: int | None = setting(None, min=1, help="read at most N conversations (default: all)")
    split: str = setting("train_sft", help="dataset split")
    progress: bool = setting(True, help=PROGRESS_HELP)


@dataclass
class PrepareExpertConfig(Checked):
    """`textjepa prepare expert`: a Q&A dataset -> `User: question[\\nContext: ...]<TAB>answer`."""

    dataset: str = setting("sciq", required=True, help="which dataset")
    output: str | None = setting(None, help="output file (default data/<dataset>_pairs.txt)")
    split: str | None = setting(None, help="dataset split (default: its training split)")
    max_rows: int | None = setting(None, min=1, help="read at most N dataset rows (default: all)")
    no_support: bool = setting(False, help="leave out the supporting paragraph (SciQ support, SQuAD context)")
    min_answer_words: int = setting(1, min=0, help="shorter answers are skipped")
    progress: bool = setting(True, help=PROGRESS_HELP)

    @property
    def output_path(self) -> str:
        return self.output or f"data/{self.dataset}_pairs.txt"


@dataclass
class PrepareJsonlConfig(Checked):
    """`textjepa prepare jsonl`: JSON Lines shards with context/response keys -> context<TAB>response."""

    input_dir: str = setting("", required=True, aliases=("--input_dir",), help="folder of shards")
    output: str = setting("data/expert_pairs.txt", help="output file")
    # Bounds on the response, in whitespace words.
    min_tokens: int = setting(1, min=0, aliases=("--min_tokens",), help="fewest words in a response")
    max_tokens: int = setting(200, min=1, aliases=("--max_tokens",), help="most words in a response")
    max_line_bytes: int = setting(16_000_000, help="longer lines are skipped")
    progress: bool = setting(True, help=PROGRESS_HELP)

    def check(self) -> None:
        if self.max_tokens < self.min_tokens:
            raise TextJepaError(f"--max-tokens ({self.max_tokens}) must be at least --min-tokens ({self.min_tokens})")


@dataclass
class PrepareMixConfig(Checked):
    """`textjepa prepare mix`: concatenate line files, optionally shuffled (deterministic for a seed)."""

    output: str = setting("", required=True, help="output file")
    inputs: list[str] = setting(
        default_factory=list,
        positional="+",
        metavar="INPUT",
        nonblank=True,
        why="prepare mix needs at least one line file",
        help="line files",
    )
    shuffle: bool = setting(False, help="shuffle the lines")
    seed: int = setting(0, help="shuffle seed")
    bucket_bytes: int = setting(
        64 << 20, min=1, help="shuffle: input bytes per temporary bucket (each is shuffled in memory)"
    )
    max_line_bytes: int = setting(1_000_000, help="longer lines are skipped")
    progress: bool = setting(True, help=PROGRESS_HELP)
