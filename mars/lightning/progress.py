"""Training progress as log lines, for runs whose output is a file (nohup, SLURM, `> train.log`).

Lightning's bar redraws a terminal line: in a file it writes nothing until the fit ends (Rich's
bar) or carriage-return redraws (tqdm's). `progress.mode` (mars.config.ProgressConfig) picks:
auto keeps the bar on a terminal and writes `ProgressLog` lines otherwise; bar and log force one.
"""
from __future__ import annotations

import logging
import math
import sys
from collections.abc import Mapping
from time import monotonic
from typing import Optional

import lightning as L
from lightning.pytorch.callbacks import ProgressBar

from mars.config import ProgressConfig

log = logging.getLogger("mars.train")


def progress_reporting(cfg: ProgressConfig, callbacks: list, bar_enabled: bool = True) -> tuple[list[L.Callback], bool]:
    """The callbacks to add for `cfg`, and the trainer's `enable_progress_bar`.

    auto: lines where stderr, the bar's stream, is not a terminal. A progress bar among `callbacks`
    is a bar the user configured: auto keeps it (Lightning refuses one with the flag off).
    `bar_enabled` is the trainer config's own flag: false, no bar in any mode.
    """
    own_bar = any(isinstance(c, ProgressBar) for c in callbacks)
    terminal = sys.stderr is not None and sys.stderr.isatty()
    lines = cfg.mode == "log" or (cfg.mode == "auto" and not terminal and not own_bar)
    added = [ProgressLog(cfg.every_n_steps, cfg.every_seconds)] if lines else []
    return added, bar_enabled and (own_bar or not lines)


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{seconds:.1f}s" if seconds < 10 else f"{s}s"


class ProgressLog(L.Callback):
    """A line on the "mars.train" log every `every_n_steps` training batches or `every_seconds`
    seconds, whichever comes first (None: that trigger off), and at each epoch's last batch:

    epoch 0 step 40/120 (global step 40): loss 0.6812 (mean of the last 20 steps), 35.2 pairs/s, 2m10s left in the epoch

    The loss and pairs/s are over the batches since the previous line, the time left is at the
    epoch's pace so far; after each validation pass, a line with val/acc and val/loss. Rank 0
    only, and cheap: the loss adds up on its device and reaches the host once a line; no collectives.
    """

    def __init__(self, every_n_steps: Optional[int] = 100, every_seconds: Optional[float] = 60.0):
        self.every_n_steps, self.every_seconds = every_n_steps, every_seconds
        self.epoch_start = self.last_line = self.val_start = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epoch_start = self.last_line = monotonic()
        self.epoch_batches = 0
        self._new_window()

    def _new_window(self) -> None:
        self.loss_sum, self.losses, self.batches, self.pairs = 0.0, 0, 0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.is_global_zero:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if loss is not None:  # Lightning's copy is divided by accumulate_grad_batches
            self.loss_sum = self.loss_sum + loss.float() * trainer.accumulate_grad_batches
            self.losses += 1
        self.batches += 1
        self.epoch_batches += 1
        self.pairs += batch["index"].numel()
        total = trainer.num_training_batches  # inf for a dataloader without a length
        if (batch_idx + 1 >= total or (self.every_n_steps and self.batches >= self.every_n_steps)
                or (self.every_seconds and monotonic() - self.last_line >= self.every_seconds)):
            self._write(trainer, batch_idx + 1, total)

    def _write(self, trainer, step: int, total: float) -> None:
        loss = float(self.loss_sum) / self.losses if self.losses else math.nan  # the one host copy
        now = monotonic()  # after the copy: the device's queue has drained into the pace
        rate = f"{self.pairs / max(now - self.last_line, 1e-9):.1f} pairs/s"
        if trainer.world_size > 1:
            rate += f" on rank 0 of {trainer.world_size}"
        elapsed = now - self.epoch_start
        if step >= total:
            when = f"epoch done in {_duration(elapsed)}"
        elif math.isfinite(total):
            when = f"{_duration((total - step) * elapsed / self.epoch_batches)} left in the epoch"
        else:
            when = f"{_duration(elapsed)} into the epoch"
        mean = "last step" if self.losses == 1 else f"mean of the last {self.losses} steps"
        of = f"/{total}" if math.isfinite(total) else ""
        log.info("epoch %d step %d%s (global step %d): loss %.4f (%s), %s, %s", trainer.current_epoch, step, of,
                 trainer.global_step, loss, mean, rate, when)
        self.last_line = now
        self._new_window()

    def on_validation_start(self, trainer, pl_module) -> None:
        self.val_start = monotonic()

    def on_validation_end(self, trainer, pl_module) -> None:
        seconds = monotonic() - self.val_start
        self.epoch_start += seconds  # a pass within an epoch is no part of its training pace
        self.last_line += seconds
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        shown = ", ".join(f"{k} {float(metrics[k]):.4f}" for k in ("val/acc", "val/loss") if k in metrics)
        log.info("epoch %d validation: %s (%s)", trainer.current_epoch, shown, _duration(seconds))
