"""What a training run shows and logs as it goes: the training metrics of every few steps (averaged over the
steps and the ranks) into the metrics log, one line per validation, and a progress bar."""

from __future__ import annotations

import math
import time

import torch

from textjepa.errors import TextJepaError
from textjepa.runtime import Distributed, all_reduce_sum
from textjepa.train.checkpointer import MetricsLog


class MetricWindow:
    """The training metrics of the steps since the last log record, summed where they are computed (on the GPU
    under CUDA), so that no step waits for the device; `read()` is the one host synchronisation, at logging steps.

    A non-finite loss is found when the window is read (the loop checks the sum) or checked (`check_finite`, before
    anything is saved between log steps): the run then stops, naming the steps it happened between, and nothing
    computed after it is written.
    """

    def __init__(self, first_step: int = 0) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.tokens = 0
        self.first_step = first_step  # the last step before the window (steps first_step+1 .. are in it)
        self.started = time.perf_counter()

    def add(self, metrics: dict[str, torch.Tensor], tokens: int) -> None:
        for name, value in metrics.items():
            value = value.double()  # summed in float64, as the host summed the numbers before
            total = self.sums.get(name)
            self.sums[name] = value if total is None else total + value
        self.steps += 1
        self.tokens += tokens

    def read(self) -> dict[str, float]:
        """The summed metrics as numbers, in one transfer for all of them."""
        if not self.sums:
            return {}
        names = sorted(self.sums)
        device = self.sums[names[0]].device
        values = torch.stack([self.sums[name].to(device) for name in names]).tolist()
        return dict(zip(names, values))

    def check_finite(self) -> None:
        """Only the loss's finiteness (one small transfer): before a validation or a save between log steps."""
        if "loss" in self.sums:
            self.raise_if_not_finite(float(self.sums["loss"]))

    def raise_if_not_finite(self, loss_sum: float) -> None:
        """A loss sum of the window (under torchrun: summed over the ranks, so that every rank stops) that is
        not finite stops the run."""
        if not math.isfinite(loss_sum):
            last = self.first_step + self.steps
            where = f"at step {last}" if self.steps == 1 else f"between steps {self.first_step + 1} and {last}"
            raise TextJepaError(f"loss became {loss_sum} {where}; lower --lr")


def format_duration(seconds: float) -> str:
    """1h02m, 3m05s or 42s: how long a run has taken or has left, for progress lines."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """A record of the training metrics every `log_every` steps (and at the last), written by rank 0 with the
    mean over the steps and ranks; a line per validation; a tqdm bar when asked for (rank 0)."""

    def __init__(
        self, label: str, steps: int, start_step: int, log_every: int, dist: Distributed, log: MetricsLog, bar: bool
    ) -> None:
        self.steps, self.start_step, self.log_every, self.dist, self.log = steps, start_step, log_every, dist, log
        self.window = MetricWindow(start_step)
        self.started = time.perf_counter()
        self.tokens_per_s = 0.0
        self.bar = None
        if bar and dist.is_main:
            from tqdm import tqdm

            self.bar = tqdm(total=steps, initial=start_step, desc=f"train {label}", unit="step", mininterval=0.5)

    def step_done(self, done: int, metrics: dict[str, torch.Tensor], tokens: int, lr: float) -> dict | None:
        """Adds a step's metrics; at a logging step every rank takes part and the record logged is returned."""
        self.window.add(metrics, tokens)
        if done % self.log_every and done != self.steps:
            return None
        sums = self.window.read()
        keys = sorted(sums)
        totals = all_reduce_sum([sums[k] for k in keys] + [float(self.window.tokens)], self.dist)
        self.window.raise_if_not_finite(totals[keys.index("loss")])
        elapsed = max(time.perf_counter() - self.window.started, 1e-9)
        record = {k: totals[i] / (self.window.steps * self.dist.world_size) for i, k in enumerate(keys)}
        record.update(step=done, split="train", lr=lr, tokens_per_s=totals[-1] / elapsed)
        if self.dist.is_main:
            self.log.append(record)
        self.tokens_per_s = record["tokens_per_s"]
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{self.tokens_per_s:.0f}")
        self.window = MetricWindow(done)
        return record

    def check_finite(self) -> None:
        """Before anything is saved between log steps: nothing computed after a non-finite loss is written."""
        self.window.check_finite()

    def validated(self, done: int, val: dict[str, float]) -> None:
        """One line per validation, with or without the bar: a log file shows the run alive and learning."""
        elapsed = time.perf_counter() - self.started
        eta = elapsed / max(1, done - self.start_step) * (self.steps - done)
        line = (
            f"step {done}/{self.steps}: "
            + ", ".join(f"{k}={v:.4f}" for k, v in val.items())
            + f", tok/s={self.tokens_per_s:.0f}, elapsed {format_duration(elapsed)}, eta {format_duration(eta)}"
        )
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
