"""Run folders and training states, without training: an out-dir that holds a run is never trained into afresh,
and a training state changed after it was written is never loaded."""

import pytest

from textjepa.checkpoint import find_latest_state, load_training_state, save_training_state
from textjepa.config import TrainConfig
from textjepa.errors import TextJepaError
from textjepa.io import RunFiles, RunKind
from textjepa.train.checkpointer import refuse_earlier_run


def test_an_out_dir_holding_a_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    refuse_earlier_run(TrainConfig(out_dir=str(out)), out, RunKind.LATENT)  # empty: nothing to refuse
    files = RunFiles.create(out, RunKind.LATENT, "tiny")
    files.metrics.write_text("{}\n")  # any file of a run counts, not only its checkpoint
    with pytest.raises(TextJepaError, match="already holds a latent run .*--resume auto.*--overwrite"):
        refuse_earlier_run(TrainConfig(out_dir=str(out)), out, RunKind.LATENT)
    refuse_earlier_run(TrainConfig(out_dir=str(out)), out, RunKind.WORLD)  # a run of another kind is no obstacle
    refuse_earlier_run(TrainConfig(out_dir=str(out), overwrite=True), out, RunKind.LATENT)
    # --resume auto continues only a run that left a valid training state.
    with pytest.raises(TextJepaError, match="cannot be continued: it has no training state"):
        refuse_earlier_run(TrainConfig(out_dir=str(out), resume="auto"), out, RunKind.LATENT)
    save_training_state(files.state, {"step": 2})
    refuse_earlier_run(TrainConfig(out_dir=str(out), resume="auto"), out, RunKind.LATENT)


def test_a_changed_training_state_is_not_loaded(tmp_path):
    path = RunFiles.create(tmp_path, RunKind.LATENT, "tiny").state
    save_training_state(path, {"step": 7, "note": "x" * 1000})
    assert load_training_state(path)["step"] == 7
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01  # one bit of the payload
    path.write_bytes(bytes(data))
    with pytest.raises(TextJepaError, match="corrupt or truncated"):
        load_training_state(path)
    assert find_latest_state(tmp_path, RunKind.LATENT) is None
    path.write_bytes(bytes(data[: len(data) // 2]))  # cut short
    with pytest.raises(TextJepaError, match="corrupt or truncated"):
        load_training_state(path)
