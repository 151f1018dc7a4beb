"""Loggers: CSV, TensorBoard and W&B (offline) receive the config without secrets, the metrics,
and each MARS round's report; a run's log says what a user can act on, and little else."""
from __future__ import annotations

import csv
import json
import re

from omegaconf import open_dict

from mars.augmenters.eda import EDAAugmenter
from mars.cli.runtime import loggable_config
from tests.conftest import TINY, compose_config
from mars.cli.train import train


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


# ---- what a user reads: a clean log, mars's own summaries, warnings only where they ask for action

def pretrained_tiny(folder) -> str:
    """A tiny BERT saved as a base model (no classifier: the head starts fresh, as with minilm)
    whose tokenizer claims 8 tokens at most (mars truncates to backbone.max_length itself)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from mars.model.backbone import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve("minilm"))
    tokenizer.model_max_length = 8
    tokenizer.save_pretrained(folder)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(folder)
    return str(folder)


def test_the_model_line_does_not_depend_on_transformers_verbosity(tmp_path, caplog):
    """Whether the head started fresh comes from the load itself: with transformers' own log
    silenced (TRANSFORMERS_VERBOSITY=error) the line still says so."""
    import logging

    import transformers

    from mars.config import validate
    from mars.lightning.callbacks import RunSummary
    from mars.lightning.module import RewardModule

    model = pretrained_tiny(tmp_path / "model")
    typed = validate(compose_config("train", TINY + [f"backbone.name_or_path={model}", "backbone.random_init=false"],
                                    tmp_path))
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        module = RewardModule(typed["backbone"], typed["finetune"], typed["optim"], typed["loss"])
        module.configure_model()
    finally:
        transformers.logging.set_verbosity(verbosity)
    with caplog.at_level(logging.INFO, logger="mars.train"):
        RunSummary().log_model(module)
    (line,) = [r.getMessage() for r in caplog.records if "reward model:" in r.getMessage()]
    assert line.endswith("head initialised fresh"), line


def test_default_run_log_reads_clean(tmp_path):
    """`python train.py` as a user runs it, on a tiny from_pretrained model: no eval-mode,
    deprecation, false sequence-length or cloud-logging warnings, no load table, no metric dump;
    mars's model line once and the run summary at the end."""
    import os
    import subprocess
    import sys

    from tests.conftest import DATA_DIR, ROOT

    model = pretrained_tiny(tmp_path / "model")
    overrides = [o for o in TINY if o not in ("augmenter=none", "allocator=none")] + [
        f"backbone.name_or_path={model}", "backbone.random_init=false", "allocator=mars", "augmenter=eda",
        "loop.budget=24", f"hydra.run.dir={tmp_path / 'run'}", f"paths.log_dir={tmp_path / 'logs'}",
        f"paths.cache_dir={tmp_path / 'cache'}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MARS_DATA_DIR": str(DATA_DIR), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "train.py", *overrides], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    for noise in ("eval mode", "deprecated", "Token indices sequence length", "💡", "LOAD REPORT", "MISSING",
                  "final metrics", "Trainer already configured"):
        assert noise not in out, (noise, out)
    warned = [line for line in out.splitlines() if re.search(r"\.py:\d+: |\[WARNING\]", line)]
    assert not warned, warned  # a default run has nothing to ask of its user
    (model_line,) = [line for line in out.splitlines() if "reward model:" in line]
    assert "(BertForSequenceClassification, encoder)" in model_line and "finetune=full" in model_line
    assert model_line.endswith("head initialised fresh")
    summary = out[out.index("run summary"):]
    for expected in ("validation accuracy by epoch: 0: ", "(warm-up)", "round 1: |D^t| = 120, +24 synthetic pairs",
                     "test (best checkpoint): accuracy ", "SNR ", "AUC ", "ECE ", "checkpoint:", "export:",
                     "round plots:", "next: python eval.py model=", "ckpt_path=last"):
        assert expected in summary, (expected, summary)
    assert (tmp_path / "run" / "rounds" / "round_01.png").exists()


class Stingy(EDAAugmenter):
    """Delivers no variants for every other pair (as a failing endpoint would)."""

    def augment(self, requests):
        out = super().augment(requests)
        return [vs if (i // 2) % 2 == 0 else [] for i, vs in enumerate(out)]


def test_round_report_records_what_was_added_and_warns_of_a_shortfall(tmp_path, caplog):
    import numpy as np

    from mars.allocators.uniform import UniformAllocator
    from mars.config import LoopConfig
    from mars.method.report import budget_by_decile
    from mars.method.loop import MarsLoop
    from mars.lightning.rounds import write_round
    from tests.test_loop import FixedScorer, base_pairs

    loop = MarsLoop(LoopConfig(budget=40, warmup_epochs=0), UniformAllocator(), Stingy(seed=0), seed=3)
    loop.base = base_pairs(20)
    loop.scorer = FixedScorer(np.linspace(-1, 1, 20))
    report = loop.build_round(0)
    history = loop.history[-1]
    allocation, added = np.array(history["allocation"]), np.array(history["added"])
    assert allocation.sum() == 40 and set(allocation) == {2}
    assert added.sum() == report["synthetic_added"] == 40 - report["shortfall"] and report["shortfall"] == 20
    assert (added == 0).sum() == report["shortfall_pairs"] == 10
    assert report["budget_total"] == 20 and report["budget_allocated"] == 40  # the report counts what was added
    assert report["budget_by_abs_margin_decile"] == budget_by_decile(np.array(history["margins"]), added, absolute=True)

    with caplog.at_level("INFO"):
        write_round(report, history, str(tmp_path))
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "delivered 20 of the 40 synthetic pairs allocated (shortfall 20, on 10 pairs" in warning.getMessage()
    saved = json.loads((tmp_path / "rounds" / "round_01.json").read_text())
    assert saved["allocation"] == allocation.tolist() and saved["added"] == added.tolist()


def test_a_failed_run_closes_its_wandb_run(tmp_path, monkeypatch):
    import pytest
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_config("train", TINY + ["logger=wandb", "logger.wandb.offline=true", "export=false",
                                          "+callbacks.crash._target_=tests.helpers.CrashAtEpoch",
                                          "+callbacks.crash.epoch=1"], tmp_path)
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(cfg)
        assert wandb.run is None  # finished (exit code 1), not left open for the next job of a sweep
    finally:
        wandb.finish()
