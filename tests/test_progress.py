"""Progress of a fit whose output is a file: log lines instead of Lightning's bar (mars/lightning/progress.py)."""
from __future__ import annotations

import io
import re
import sys
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from mars.cli.train import train
from mars.config import ConfigError, ProgressConfig
from mars.lightning import progress
from mars.lightning.progress import ProgressLog, progress_reporting
from tests.conftest import TINY, compose_config

LINE = re.compile(r"^epoch (\d+) step (\d+)/(\d+) \(global step (\d+)\): loss (\d\.\d{4}) \((mean of the last (\d+) "
                  r"steps|last step)\), ([\d.]+) pairs/s, (.+ left in the epoch|epoch done in .+)$")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mars.train" and r.getMessage().startswith("epoch ")]


def test_a_fit_writing_to_a_file_logs_progress_lines_every_n_steps(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a batch job: stderr is a file, not a terminal
    cfg = compose_config("train", TINY + ["progress.every_n_steps=5", "progress.every_seconds=null",
                                          "trainer.max_epochs=1", "test=false", "export=false"], tmp_path)
    with caplog.at_level("INFO", logger="mars.train"):
        _, objects = train(cfg)

    assert objects["trainer"].progress_bar_callback is None  # no bar: nothing useful in a file
    training, validation = lines(caplog)[:-1], lines(caplog)[-1]
    fields = [LINE.match(line) for line in training]
    assert all(fields), training
    # 96 pairs in batches of 8: a line every 5 batches, and the epoch's last one (a mean of 2)
    assert [(int(m[2]), int(m[3]), int(m[4])) for m in fields] == [(5, 12, 5), (10, 12, 10), (12, 12, 12)]
    assert [m[7] for m in fields] == ["5", "5", "2"] and 0.5 < float(fields[0][5]) < 1.0
    assert "left in the epoch" in fields[0][9] and fields[-1][9].startswith("epoch done in")
    assert re.fullmatch(r"epoch 0 validation: val/acc 0\.\d{4}, val/loss \d\.\d{4} \(.+s\)", validation)


def test_mode_bar_keeps_lightnings_bar_and_logs_no_lines(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    cfg = compose_config("train", TINY + ["progress.mode=bar", "progress.every_n_steps=1", "trainer.max_epochs=1",
                                          "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
                                          "trainer.log_every_n_steps=1", "test=false", "export=false"], tmp_path)
    with caplog.at_level("INFO", logger="mars.train"):
        _, objects = train(cfg)
    assert objects["trainer"].progress_bar_callback is not None and not lines(caplog)


def test_auto_is_the_bar_on_a_terminal_and_lines_elsewhere(monkeypatch):
    auto, log = ProgressConfig(), ProgressConfig(mode="log")
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert progress_reporting(auto, []) == ([], True)
    added, bar = progress_reporting(log, [])
    assert [type(c) for c in added] == [ProgressLog] and not bar
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    added, bar = progress_reporting(auto, [])
    assert [type(c) for c in added] == [ProgressLog] and not bar
    assert progress_reporting(auto, [TQDMProgressBar()]) == ([], True)  # a bar the user configured stays
    assert progress_reporting(ProgressConfig(mode="bar"), [], bar_enabled=False) == ([], False)
    with pytest.raises(ConfigError, match="progress.every_seconds=0"):
        ProgressConfig(every_seconds=0)


def test_a_line_comes_after_every_seconds_with_the_undivided_loss(monkeypatch, caplog):
    now = [0.0]
    monkeypatch.setattr(progress, "monotonic", lambda: now[0])
    trainer = SimpleNamespace(is_global_zero=True, accumulate_grad_batches=2, num_training_batches=100, world_size=2,
                              current_epoch=3, global_step=7, sanity_checking=False)
    callback = ProgressLog(every_n_steps=None, every_seconds=30.0)
    callback.on_train_epoch_start(trainer, None)
    with caplog.at_level("INFO", logger="mars.train"):
        for step in range(4):  # 10 s a batch of 4 pairs; Lightning hands on loss / accumulate_grad_batches
            now[0] += 10.0
            callback.on_train_batch_end(trainer, None, {"loss": torch.tensor(0.25 + step / 4)},
                                        {"index": torch.arange(4)}, step)
    expected = ("epoch 3 step 3/100 (global step 7): loss 1.0000 (mean of the last 3 steps), "
                "0.4 pairs/s on rank 0 of 2, 16m10s left in the epoch")
    assert lines(caplog) == [expected]
