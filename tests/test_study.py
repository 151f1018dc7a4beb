"""The study: presets compose, a shortened CPU study runs end to end, and the aggregation writes
tables and plots whose intervals contain their estimates."""
from __future__ import annotations

import json
import os

import pytest

from mars.config import validate
from mars.study import main as study_main
from tests.conftest import DATA_DIR, compose_config, require_data

pytestmark = pytest.mark.slow

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("preset", ["paper_hh_rlhf", "paper_ultrafeedback", "paper_pku_saferlhf",
                                    "cpu_study_hh_rlhf", "cpu_study_ultrafeedback", "cpu_study_pku_saferlhf"])
def test_presets_compose(preset, tmp_path):
    cfg = compose_config("train", [f"experiment={preset}"], tmp_path)
    typed = validate(cfg)
    assert typed["data"].train_size in (500, 1000) and cfg.allocator._target_.endswith("MarsAllocator")
    if preset.startswith("paper"):
        assert typed["backbone"].name_or_path == "microsoft/deberta-v3-base" and typed["optim"].lr == 2e-5
        assert typed["backbone"].max_length == 512 and cfg.trainer.precision == "bf16-mixed"
        assert cfg.loop.budget * (cfg.trainer.max_epochs - cfg.loop.warmup_epochs) == 5000
    else:
        assert typed["backbone"].train_layers == 0 and typed["backbone"].name_or_path == "minilm"


def test_shortened_cpu_study_and_aggregation(tmp_path, monkeypatch):
    require_data()
    monkeypatch.setenv("MARS_DATA_DIR", str(DATA_DIR))
    monkeypatch.setenv("MARS_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "study"
    study_main(["run", "--datasets", "hh_rlhf", "--seeds", "1", "2", "--out", str(out), "backbone=tiny",
                "backbone.max_length=64", "data.train_size=40", "data.val_size=20", "data.test_size=30",
                "loop.budget=20", "trainer.max_epochs=2", "logger=csv"])
    summary = json.loads((out / "results.json").read_text())["hh_rlhf"]
    assert set(summary) == {"none", "uniform", "west_of_n", "mars_abs", "mars_signed",
                            "mars_abs - uniform", "mars_signed - uniform"}
    for method in ("none", "uniform", "west_of_n", "mars_abs", "mars_signed"):
        assert summary[method]["seeds"] == 2
        for metric in ("acc", "auc", "ece"):
            row = summary[method][metric]
            assert row["lo"] <= row["mean"] <= row["hi"], (method, metric, row)
    diff = summary["mars_abs - uniform"]["acc"]
    assert diff["lo"] <= diff["mean"] <= diff["hi"]
    table = (out / "results.md").read_text()
    assert "| mars_signed | 2 |" in table and "paired bootstrap" in table
    for name in ("accuracy.png", "margins.png", "budget_vs_margin.png", "curvature.png"):
        assert (out / name).read_bytes()[:8] == PNG, name
    assert len(list(out.rglob("test_scores.json"))) == 10 and os.path.isdir(out / "hh_rlhf" / "mars_abs")
