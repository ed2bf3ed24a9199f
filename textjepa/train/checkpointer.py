"""What a training run keeps: its best checkpoint (by the validation score), the training state it can resume
from, and its metrics log. Files are written whole (temp + rename, textjepa/io.py) or not at all.

`Checkpointer` is the part every run shares (the training stages and train-bridge); `RunCheckpointer` writes a
training stage's files (RunFiles: model, teacher, state, tokenizer, metrics, plot) and a run's life in an
out-dir: a fresh run replaces an earlier one only with --overwrite, and every file carries the run's id.
"""

from __future__ import annotations

import dataclasses
import json
import math
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textjepa.checkpoint import checkpoint_contents, find_latest_state, save_tokenizer_files, save_training_state
from textjepa.config import TrainConfig
from textjepa.data.contract import DataContract
from textjepa.errors import TextJepaError
from textjepa.io import (
    DiskError,
    RunFiles,
    RunKind,
    atomic_write_text,
    disk_error,
    is_disk_error,
    remove_stale_temp_files,
    write_safetensors_together,
)
from textjepa.models.encoder import count_parameters, format_size
from textjepa.train.model_card import write_model_card
from textjepa.train.tensorboard import tensorboard_log

if TYPE_CHECKING:
    from textjepa.train.loop import Stage
    from textjepa.train.tensorboard import TensorBoardLog


# Settings whose change makes another model or another data stream: a resume with one of them changed is refused.
SHAPING_SETTINGS = ("model.", "data.", "train.seed", "init_encoder", "target_model", "loss.queue_size")
# Where a run lives and how it reports, not what it computes: never compared. (The data file is compared by its
# content, not by how its path was typed.)
PLACE_SETTINGS = (
    "train.resume",
    "train.overwrite",
    "train.out_dir",
    "train.progress",
    "train.device",
    "data.data_dir",
    "data.path",
)


def flat_settings(config: Any) -> dict[str, Any]:
    """A command's config as {"train.lr": 0.0005, ...}: what a training state records and a resume compares."""

    def walk(value: Any, prefix: str) -> dict[str, Any]:
        if isinstance(value, dict):
            return {k: v for name, item in value.items() for k, v in walk(item, f"{prefix}{name}.").items()}
        return {prefix.rstrip("."): list(value) if isinstance(value, tuple) else value}

    return walk(dataclasses.asdict(config), "")


def setting_label(name: str) -> str:
    """How the user gives a flattened setting: `train.lr` -> `--lr`."""
    last = name.rpartition(".")[2]
    return "--" + {"vocab_size": "max_vocab"}.get(last, last).replace("_", "-")


class MetricsLog:
    """A run's metrics, one JSON record a line (`*.metrics.jsonl` beside the model file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mirror: TensorBoardLog | None = None  # --tensorboard: every record also as TensorBoard scalars

    def close(self) -> None:
        if self.mirror is not None:
            self.mirror.close()

    @classmethod
    def beside(cls, model_file: Path) -> MetricsLog:
        return cls(RunFiles(model_file).metrics)

    def start(self) -> None:
        """A fresh run starts a fresh log."""
        if self.mirror is not None:
            self.mirror.begin(0)
        if self.path.exists():
            self.path.unlink()

    def append(self, record: dict) -> None:
        append_jsonl(self.path, record)
        if self.mirror is not None:
            self.mirror.write(record)

    def keep_until(self, step: int) -> None:
        """Drop records past the resumed step (a killed run may have logged beyond its last state)."""
        if self.mirror is not None:
            self.mirror.begin(step + 1)
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))


def append_jsonl(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


class Checkpointer:
    """The best checkpoint by the validation score (higher is better), the training state, the metrics log.

    Called on rank 0 only. A subclass says how the best checkpoint is written (`write_best`); a run without a
    `state_path` cannot be resumed (train-bridge), and its interrupts are plain ones.
    """

    def __init__(self, best_path: Path, state_path: Path | None = None) -> None:
        self.best_path, self.state_path = best_path, state_path
        self.log = MetricsLog.beside(best_path)
        self.best_score, self.best_metrics = -math.inf, {}
        self.run_id = uuid.uuid4().hex  # every file of a run carries it, so a mixed set is refused
        self.state_step: int | None = None  # the step of the last training state written (or resumed from)

    @property
    def out_dir(self) -> Path:
        """Where the run's files are (and --resume auto looks for its state)."""
        return self.best_path.parent

    @property
    def can_resume(self) -> bool:
        return self.state_path is not None

    def check_resume(self, state: dict, source: Path) -> None:
        """Before a resume puts `state` back (on rank 0): refuse what it cannot continue (a subclass compares the
        settings and the data file it records)."""

    def start(self, resumed: dict | None) -> None:
        """A fresh run starts a fresh log; a resumed one keeps its best so far and its log up to its step."""
        if resumed is None:
            self.log.start()
            return
        self.best_score, self.best_metrics = resumed["best_score"], resumed["best_metrics"]
        self.run_id = resumed.get("run_id", self.run_id)
        self.state_step = resumed["step"]
        self.log.keep_until(resumed["step"])

    def validated(self, step: int, val: dict[str, float]) -> None:
        """A validation's record is logged; a better score than any before writes the best checkpoint."""
        self.log.append({"step": step, "split": "val", **val})
        if val["score"] > self.best_score:
            self.best_score, self.best_metrics = val["score"], {"step": step, **val}
            self.write_best(step, val)

    def keep_last(self, step: int, record: dict) -> None:
        """A run without validation: its last step is its best."""
        self.best_metrics = {**record, "step": step}
        self.write_best(step, {})

    def save_state(self, state: dict) -> None:
        if self.state_path is not None:
            save_training_state(
                self.state_path, {**state, "best_score": self.best_score, "best_metrics": self.best_metrics}
            )
            self.state_step = state["step"]

    def kept(self) -> str:
        """What of the run is whole on disk (said when a write fails): the best checkpoint and the last state."""
        parts = []
        if self.best_metrics and self.best_path.is_file():
            parts.append(f"the best checkpoint {self.best_path} (step {self.best_metrics.get('step')})")
        if self.state_step is not None:
            parts.append(f"the training state {self.state_path} (step {self.state_step})")
        if not parts:
            return "nothing of this run had been kept yet"
        again = "; make room, then continue with --resume auto" if self.state_step is not None else ""
        return "kept and valid: " + " and ".join(parts) + again

    @contextmanager
    def disk_errors_say_what_is_kept(self) -> Iterator[None]:
        """A write the disk refuses (full, read-only), anywhere in the run: one error naming the path and what of
        the run is still whole."""
        try:
            yield
        except DiskError as exc:
            raise DiskError(f"{exc}; {self.kept()}") from None
        except OSError as exc:
            if not is_disk_error(exc):
                raise
            raise disk_error(exc, Path(exc.filename or self.out_dir), self.kept()) from None

    def write_best(self, step: int, val: dict[str, float]) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """After the last step (rank 0)."""


class RunCheckpointer(Checkpointer):
    """A training stage's files in its out-dir (RunFiles): model and teacher checkpoints of the best step, the
    training state of the last validation, tokenizer files, metrics log and, at the end, the plot."""

    def __init__(
        self,
        stage: Stage,
        out_dir: Path,
        train: TrainConfig,
        run_info: dict,
        data: DataContract,
        settings: dict[str, Any] | None = None,
    ) -> None:
        """settings: the command's settings (flat_settings), recorded in the training state for a resume."""
        self.files = RunFiles.create(out_dir, stage.kind, format_size(count_parameters(stage.model)))
        super().__init__(self.files.model, self.files.state)
        self.stage, self.train, self.run_info, self.data = stage, train, run_info, data
        self.log.mirror = tensorboard_log(train.tensorboard, stage.kind)
        self.settings = settings or {}

    def data_file(self) -> dict:
        """The data file the run reads: its path, size and content hash (a resume checks they are the same)."""
        source = Path(self.data.source)
        return {
            "path": self.data.source,
            "size": source.stat().st_size if source.is_file() else None,
            "hash": self.data.corpus_hash,
        }

    def save_state(self, state: dict) -> None:
        super().save_state({**state, "settings": self.settings, "data_file": self.data_file()})

    def check_resume(self, state: dict, source: Path) -> None:
        """The data file must be the one the run was trained on, and settings that shape the model or the data
        unchanged (refused, with every difference in one line); the others apply from the resumed step, listed."""
        recorded, data_file = state.get("settings"), state.get("data_file")
        if data_file and data_file.get("hash") and data_file["hash"] != self.data.corpus_hash:
            now = self.data_file()
            raise TextJepaError(
                f"cannot resume from {source}: the data changed since the run started (then {data_file.get('path')}, "
                f"{data_file.get('size')} bytes, content hash {data_file['hash']}; now {now['path']}, {now['size']} "
                f"bytes, content hash {now['hash']}); give the run's own data, or start anew with --overwrite"
            )
        if recorded is None:  # a state from before settings were recorded
            return
        names = sorted(set(recorded) | set(self.settings))
        changed = {
            name: (recorded.get(name), self.settings.get(name))
            for name in names
            if not name.startswith(PLACE_SETTINGS) and recorded.get(name) != self.settings.get(name)
        }
        listed = {name: f"{setting_label(name)} {old} -> {new}" for name, (old, new) in changed.items()}
        refused = [text for name, text in listed.items() if name.startswith(SHAPING_SETTINGS)]
        if refused:
            raise TextJepaError(
                f"cannot resume from {source}: settings that change the model or the data differ from the run's: "
                f"{', '.join(refused)}; give them as the run had them, or start anew with --overwrite"
            )
        if listed:
            changes = ", ".join(listed.values())
            print(f"resume: changed since the run started, applied from step {state['step']}: {changes}")

    def start(self, resumed: dict | None) -> None:
        remove_stale_temp_files(self.out_dir)
        if resumed is None and self.train.overwrite:
            remove_earlier_run(self.out_dir, self.stage.kind)
        super().start(resumed)
        save_tokenizer_files(self.files, self.stage.kind, self.stage.tokenizer)

    def write_best(self, step: int, val: dict[str, float]) -> None:
        stage, files = self.stage, self.files
        online, teacher = stage.checkpoint_tensors()
        info = {**stage.checkpoint_info(), **self.run_info, "run_id": self.run_id, "step": step, "val": val}
        contents = [
            checkpoint_contents(stage.kind, role, stage.config, tensors, stage.tokenizer, info, self.data)
            for role, tensors in (("online", online), ("teacher", teacher))
        ]
        write_safetensors_together([(files.model, *contents[0]), (files.teacher, *contents[1])])
        write_model_card(files.model, stage.kind, stage.config, info, self.data, count_parameters(stage.model))

    def finish(self) -> None:
        from textjepa.plot import plot_metrics

        self.log.close()
        plot_metrics(self.log.path, self.files.png)
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in self.best_metrics.items() if isinstance(v, float))
        print(f"best checkpoint: {self.best_path} (step {self.best_metrics.get('step')}: {metrics})")


def earlier_run_files(out_dir: Path, kind: RunKind) -> list[Path]:
    """Every file of a run of this kind in out_dir (checkpoint, teacher, state, metrics, plot, index, replies)."""
    return sorted(path for path in out_dir.glob(RunFiles.run_pattern(kind)) if path.is_file())


def refuse_earlier_run(train: TrainConfig, out_dir: Path, kind: RunKind) -> None:
    """A run never silently replaces another: an out-dir that already holds a run of this kind is continued
    (--resume) or replaced (--overwrite), never trained into afresh. Checked before any work."""
    if train.overwrite:
        return
    existing = earlier_run_files(out_dir, kind)
    if not existing:
        return
    if train.resume and (train.resume != "auto" or find_latest_state(out_dir, kind) is not None):
        return
    if train.resume == "auto":  # asked to continue, but nothing there can be continued: say why
        states = sorted(out_dir.glob(RunFiles.state_pattern(kind)))
        why = (
            f"its training state {states[0].name} is corrupt or truncated (checksum mismatch)"
            if states
            else "it has no training state (it stopped before its first validation)"
        )
        raise TextJepaError(
            f"--resume auto: {out_dir} holds a {kind} run ({existing[0].name}) that cannot be continued: {why}; "
            "replace it with --overwrite, or choose another --out-dir"
        )
    raise TextJepaError(
        f"{out_dir} already holds a {kind} run ({existing[0].name}); continue it with --resume auto, replace it "
        "with --overwrite, or choose another --out-dir"
    )


def remove_earlier_run(out_dir: Path, kind: RunKind) -> None:
    """--overwrite: the earlier run's files go before the new run writes its first one, so no file of it is
    ever taken for the new run's (a killed run must not leave the old index beside the new model)."""
    for path in earlier_run_files(out_dir, kind):
        path.unlink(missing_ok=True)
