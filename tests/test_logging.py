"""Loggers: CSV, TensorBoard and W&B (offline) receive the config without secrets, the metrics,
and each MARS round's report."""
from __future__ import annotations

import csv
import json

from omegaconf import open_dict

from mars.utils import loggable_config
from tests.conftest import TINY, compose_config
from train import train


def test_secrets_never_reach_the_logged_config(tmp_path):
    cfg = compose_config("train", TINY + ["+augmenter.api_key=sk-live-123", "+logger.csv.token=abc"], tmp_path)
    text = json.dumps(loggable_config(cfg))
    assert "sk-live-123" not in text and "abc" not in text and '"seed": 42' in text


def test_every_logger_gets_metrics_and_rounds(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_config("train", TINY + ["logger=many_loggers", "allocator=mars", "augmenter=eda",
                                          "augmenter.cache_path=null", "loop.budget=24", "loop.warmup_epochs=1",
                                          "export=false"], tmp_path)
    with open_dict(cfg):
        cfg.logger.wandb.offline = True
    train(cfg)

    rows = list(csv.DictReader(open(tmp_path / "csv" / "metrics.csv")))
    columns = set(rows[0])
    assert {"val/acc", "val/snr", "val/auc", "val/ece", "test/acc", "round/round", "round/curvature_ratio",
            "round/budget_misranked_fraction", "round/fisher_min_eig_bin0"} <= columns
    assert any(r["round/synthetic_added"] == "24.0" for r in rows)
    assert list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    assert (tmp_path / "rounds" / "round_01.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    (records,) = run.glob("*.wandb")  # offline: config, history and summary in one record file
    data = records.read_bytes()
    for expected in (b"allocator", b"budget", b"val/acc", b"round/curvature_ratio", b"round/margin_hist"):
        assert expected in data, expected
    assert list((run / "files" / "media").rglob("*.png"))  # the allocation plot
