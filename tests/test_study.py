"""The study: presets compose, a shortened CPU study runs end to end, and the aggregation writes
tables and plots with plain percentile bootstrap intervals."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mars.config import validate
from mars.model.metrics import pairwise_metrics
from mars.study import load_runs, markdown, preset_datasets, summarise
from mars.study import main as study_main
from tests.conftest import DATA_DIR, compose_config, require_data

N_BOOT = 1000


def bootstrap_acc(runs: list[dict], most: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """Accuracy (mean over the drawn seeds) on each resample, computed here without mars's metrics;
    the resamples are the study's documented ones: one generator, per draw n pair indices with
    replacement, then a uniform number per seed slot (`most`: the most seeds of any method), the
    k runs of a method taking seeds floor(u · k) of the first k slots."""
    rng = np.random.default_rng(seed)
    n, k = len(runs[0]["ids"]), len(runs)
    runs = sorted(runs, key=lambda r: r["seed"])
    draws = [(rng.integers(0, n, n), rng.random(most)) for _ in range(n_boot)]
    return np.array([np.mean([np.mean(runs[s]["r_chosen"][idx] > runs[s]["r_rejected"][idx])
                              for s in (u[:k] * k).astype(int)]) for idx, u in draws])


def fake_run(method: str, margins: np.ndarray, seed: int = 1) -> dict:
    return {"method": method, "dataset": "d", "seed": seed, "ids": [str(i) for i in range(len(margins))],
            "r_chosen": margins.astype(float), "r_rejected": np.zeros(len(margins)), "rounds": [], "dir": ""}


def test_intervals_are_plain_percentile_bootstrap_intervals():
    # Four groups of 50 pairs at confidence σ(|margin|) = 0.6, 0.7, 0.8, 0.9 with exactly that share
    # ranked right (150 of 200 in all): perfectly calibrated, ECE 0, while on a resample the share
    # per bin moves and ECE > 0. An honest percentile interval of ECE lies above the estimate; one
    # widened to hold the estimate would start at 0.
    calibrated = np.concatenate([np.where(np.arange(50) < 50 * c, 1.0, -1.0) * math.log(c / (1 - c))
                                 for c in (0.6, 0.7, 0.8, 0.9)])
    def swap_errors(first: int) -> np.ndarray:  # another method: 20 pairs ranked the other way
        m = calibrated.copy()
        right, wrong = np.flatnonzero(m > 0)[first:first + 10], np.flatnonzero(m < 0)[first:first + 10]
        m[right], m[wrong] = -m[right], -m[wrong]
        return m

    runs = [fake_run("uniform", calibrated), fake_run("mars_abs", swap_errors(0), seed=1),
            fake_run("mars_abs", swap_errors(20), seed=2)]
    table = summarise(runs, n_boot=N_BOOT, seed=0)["d"]
    ece = table["uniform"]["ece"]
    assert ece["mean"] == pytest.approx(0.0, abs=1e-12)
    assert ece["lo"] > 0.005 and ece["hi"] < 0.15
    # Accuracy: the percentiles of the resampled accuracies, exactly, ...
    for method in ("uniform", "mars_abs"):
        rs = [r for r in runs if r["method"] == method]
        lo, hi = np.percentile(bootstrap_acc(rs, most=2), [2.5, 97.5])
        assert table[method]["acc"]["lo"] == pytest.approx(lo) and table[method]["acc"]["hi"] == pytest.approx(hi)
        assert table[method]["seeds"] == len(rs)
    # Seeds are resampled too: mars_abs's two seeds rank 20 pairs differently, so its interval is
    # wider than a pairs-only bootstrap of its seed mean would make it.
    rs = [r for r in runs if r["method"] == "mars_abs"]
    rng = np.random.default_rng(0)
    pairs_only = [np.mean([np.mean(r["r_chosen"][idx] > 0) for r in rs])
                  for idx in (rng.integers(0, 200, 200) for _ in range(N_BOOT))]
    abs_acc = table["mars_abs"]["acc"]
    assert abs_acc["hi"] - abs_acc["lo"] > np.subtract(*np.percentile(pairs_only, [97.5, 2.5])) + 0.005
    # ... which for one seed is about 0.75 ± 1.96·sqrt(0.75·0.25/200) = [0.690, 0.810] ...
    acc = table["uniform"]["acc"]
    half = 1.96 * math.sqrt(0.75 * 0.25 / 200)
    assert acc["lo"] == pytest.approx(0.75 - half, abs=0.012) and acc["hi"] == pytest.approx(0.75 + half, abs=0.012)
    # ... and the paired difference uses the same resample for both methods.
    rs = [r for r in runs if r["method"] == "mars_abs"]
    delta = bootstrap_acc(rs, most=2) - bootstrap_acc(runs[:1], most=2)
    diff = table["mars_abs - uniform"]["acc"]
    assert diff["mean"] == pytest.approx(0.0, abs=1e-12)
    assert (diff["lo"], diff["hi"]) == pytest.approx(tuple(np.percentile(delta, [2.5, 97.5])))
    assert diff["hi"] - diff["lo"] < acc["hi"] - acc["lo"]  # pairing removes the shared noise


def test_round_diagnostics_are_means_over_seeds_round_by_round():
    def report(t: int, std: float, low: float, high: float, misranked: float, ratio: float, acc: float) -> dict:
        return {"round": t, "base_margin_std": std, "budget_by_abs_margin_decile": [low] + [0.1] * 8 + [high],
                "budget_misranked_fraction": misranked, "curvature_ratio": ratio, "base_acc": acc,
                "budget_max": t}

    runs = [fake_run("mars_abs", np.linspace(-1, 1, 40), seed=1), fake_run("mars_abs", np.linspace(-1, 1, 40), seed=2)]
    runs[0]["rounds"] = [report(1, 0.1, 0.12, 0.08, 0.4, 1.0, 0.6), report(2, 2.0, 0.2, 0.0, 0.2, 1.2, 0.9)]
    runs[1]["rounds"] = [report(1, 0.3, 0.10, 0.06, 0.2, 1.1, 0.7), report(2, 1.0, 0.3, 0.1, 0.1, 1.4, 0.8)]
    rows = summarise(runs, n_boot=10)["d"]["mars_abs"]["rounds"]
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[0] == pytest.approx({"round": 1, "std_margin": 0.2, "smallest_tenth": 0.11, "largest_tenth": 0.07,
                                     "misranked": 0.3, "most_on_one": 1, "curvature_ratio": 1.05, "base_acc": 0.65})
    assert rows[1] == pytest.approx({"round": 2, "std_margin": 1.5, "smallest_tenth": 0.25, "largest_tenth": 0.05,
                                     "misranked": 0.15, "most_on_one": 2, "curvature_ratio": 1.3, "base_acc": 0.85})
    assert "| mars_abs | 2 | 1.500 | 0.250 / 0.050 | 0.150 | 2.0 | 1.300 | 0.850 |" in markdown(summarise(runs, n_boot=10))
    # Known label noise: the budget on flipped pairs and the mis-ranking rates join the table.
    for run, (flip, wrong) in zip(runs, [(0.2, 0.3), (0.3, 0.1)]):
        for r in run["rounds"]:
            r |= {"budget_on_flipped_fraction": flip, "misranked_among_flipped": wrong, "misranked_among_clean": 0.1}
    rows = summarise(runs, n_boot=10)["d"]["mars_abs"]["rounds"]
    assert rows[1]["on_flipped"] == pytest.approx(0.25) and rows[1]["misranked_flipped"] == pytest.approx(0.2)
    assert "| 0.850 | 0.250 | 0.200 / 0.100 |" in markdown(summarise(runs, n_boot=10))


def test_overrides_may_follow_list_options(monkeypatch):
    import mars.study

    calls = []
    monkeypatch.setattr(mars.study, "run", lambda *args: calls.append(args))
    study_main(["run", "--methods", "none", "uniform", "finetune.layers=2", "--seeds", "1", "2", "trainer=cpu",
                "--out", "x"])
    datasets, methods, seeds, out, preset, tau, overrides, parallel = calls[0]
    assert methods == ["none", "uniform"] and seeds == [1, 2] and out.name == "x"
    assert overrides == ["finetune.layers=2", "trainer=cpu"]


@pytest.mark.parametrize("option, value, named", [("--methods", "bogus", "the methods are none"),
                                                  ("--datasets", "hh", "are hh_rlhf, pku_saferlhf")])
def test_a_bad_method_or_dataset_is_named_before_any_job(option, value, named, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        study_main(["run", option, value, "--out", str(tmp_path / "study")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{option} {value}" in err and named in err
    assert not (tmp_path / "study").exists()


def test_a_bad_override_is_named_before_any_job(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        study_main(["run", "--datasets", "hh_rlhf", "--seeds", "1", "--out", str(tmp_path / "study"), "data.bogus_key=1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "data.bogus_key=1" in err and "Could not override 'data.bogus_key'" in err and "Traceback" not in err
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize("finetune, at_once", [("top_layers", 1), ("full", 2)])
def test_jobs_sharing_cached_features_run_one_at_a_time(finetune, at_once, tmp_path, monkeypatch):
    import subprocess
    import threading
    import time

    import mars.study

    running, most, lock = [], [], threading.Lock()

    def job(cmd, **kwargs):  # a job that takes a moment and fails (so nothing is aggregated)
        with lock:
            running.append(cmd)
            most.append(len(running))
        time.sleep(0.3)
        with lock:
            running.remove(cmd)
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setattr(mars.study.subprocess, "run", job)
    with pytest.raises(SystemExit, match="3 of 3 jobs failed"):
        study_main(["run", "--datasets", "hh_rlhf", "--methods", "none", "uniform", "mars_abs", "--parallel", "2",
                    "--seeds", "1", "--out", str(tmp_path), f"finetune={finetune}"])
    assert max(most) == at_once


PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["paper_hh_rlhf", "paper_ultrafeedback", "paper_pku_saferlhf",
                                    "cpu_study_hh_rlhf", "cpu_study_ultrafeedback", "cpu_study_pku_saferlhf",
                                    "cpu_study_full_hh_rlhf", "cpu_study_full_ultrafeedback",
                                    "cpu_study_full_pku_saferlhf"])
def test_presets_compose(preset, tmp_path):
    cfg = compose_config("train", [f"experiment={preset}"], tmp_path)
    typed = validate(cfg)
    assert typed["data"].train_size in (400, 1000) and cfg.allocator._target_.endswith("MarsAllocator")
    dataset = next(d for d in ("hh_rlhf", "ultrafeedback", "pku_saferlhf") if preset.endswith(d))
    assert dataset in cfg.tags
    if preset.startswith("paper"):
        assert typed["backbone"].name_or_path == "microsoft/deberta-v3-base" and typed["optim"].lr == 2e-5
        assert typed["backbone"].max_length == 512 and cfg.trainer.precision == "bf16-mixed"
        assert cfg.loop.budget * (cfg.trainer.max_epochs - cfg.loop.warmup_epochs) == 5000
    elif preset.startswith("cpu_study_full"):
        assert typed["finetune"].name == "full" and typed["optim"].lr == 1e-4
        assert typed["backbone"].name_or_path == "minilm" and typed["backbone"].max_length == 128
        assert cfg.task_name == "cpu_study_full" and cfg.allocator.temperature == 0.5
        assert dataset.replace("_", "-") in cfg.data.path  # the offline file, no network
        rounds = cfg.trainer.max_epochs - cfg.loop.warmup_epochs
        assert rounds == 1 and cfg.loop.budget == typed["data"].train_size  # one round as large as D0
        assert (cfg.get("best_of_n") is not None) == ("ultrafeedback" in preset)
    else:
        assert typed["finetune"].name == "top_layers" and typed["finetune"].layers == 1
        assert typed["backbone"].name_or_path == "minilm" and cfg.allocator.temperature == 0.5
        rounds = cfg.trainer.max_epochs - cfg.loop.warmup_epochs
        assert cfg.loop.budget * rounds == 5 * typed["data"].train_size  # the paper's proportion
        assert (cfg.get("best_of_n") is not None) == ("ultrafeedback" in preset)


def test_preset_families_name_their_own_datasets():
    presets = Path(__file__).parents[1] / "conf" / "experiment"
    three = ["hh_rlhf", "pku_saferlhf", "ultrafeedback"]
    assert preset_datasets(presets, "cpu_study") == [*three, "ultrafeedback_noisy"]  # not full_*
    assert preset_datasets(presets, "cpu_study_full") == three
    assert preset_datasets(presets, "paper") == three


@pytest.mark.slow
def test_shortened_cpu_study_and_aggregation(tmp_path, monkeypatch, capsys):
    require_data()
    monkeypatch.setenv("MARS_DATA_DIR", str(DATA_DIR))
    monkeypatch.setenv("MARS_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "study"
    bon = tmp_path / "bon.jsonl"  # the first 40 AlpacaEval-BoN instructions
    with open(DATA_DIR / "alpacaeval-bon" / "alpacaeval-bon-n11.jsonl") as f:
        bon.write_text("".join(next(f) for _ in range(40)))
    # fully fine-tuned: no shared feature cache, so two jobs of the dataset run at once
    small = ["backbone=tiny", "finetune=full", "backbone.max_length=64", "data.train_size=40", "data.val_size=20",
             "data.test_size=30", "loop.budget=20", "trainer.max_epochs=2", "logger=csv",
             f"best_of_n={bon}"]
    # Three methods are the whole study's machinery (a baseline, the control, MARS); every allocator
    # trains in tests/test_loop.py.
    methods = ["--methods", "none", "uniform", "mars_abs"]
    study_main(["run", "--datasets", "hh_rlhf", "--seeds", "1", "2", *methods, "--parallel", "2", "--out", str(out),
                *small])
    summary = json.loads((out / "results.json").read_text())["hh_rlhf"]
    assert set(summary) == {"none", "uniform", "mars_abs", "mars_abs - uniform", "uniform - none"}
    runs = load_runs(out)
    for method in ("none", "uniform", "mars_abs"):
        assert summary[method]["seeds"] == 2
        rs = [r for r in runs if r["method"] == method]
        assert len(rs[0]["ids"]) == 30  # data.test_size
        acc = np.mean([np.mean(r["r_chosen"] > r["r_rejected"]) for r in rs])
        lo, hi = np.percentile(bootstrap_acc(rs, most=2), [2.5, 97.5])
        assert summary[method]["acc"] == pytest.approx({"mean": acc, "lo": lo, "hi": hi}), method
        picked = [json.loads((Path(r["dir"]) / "best_of_n.json").read_text())["picked_scores"] for r in rs]
        assert len(picked[0]) == 40 and summary[method]["win_rate"]["mean"] == pytest.approx(np.mean(picked))
        assert summary[method]["win_rate"]["lo"] < summary[method]["win_rate"]["hi"]
        for metric in ("auc", "ece"):  # the mean over seeds of each run's metric on all its pairs
            row = summary[method][metric]
            expected = np.mean([pairwise_metrics(torch.from_numpy(r["r_chosen"]),
                                                 torch.from_numpy(r["r_rejected"]))[metric] for r in rs])
            assert row["mean"] == pytest.approx(expected) and 0 <= row["lo"] < row["hi"] <= 1, (method, metric, row)
    rs = {m: [r for r in runs if r["method"] == m] for m in ("mars_abs", "uniform")}
    delta = bootstrap_acc(rs["mars_abs"], most=2) - bootstrap_acc(rs["uniform"], most=2)
    diff = summary["mars_abs - uniform"]["acc"]
    assert (diff["lo"], diff["hi"]) == pytest.approx(tuple(np.percentile(delta, [2.5, 97.5])))
    table = (out / "results.md").read_text()
    assert "| mars_abs | 2 |" in table and "paired bootstrap" in table and "best-of-N win-rate |" in table
    assert "| mars_abs | 1 |" in table and "| uniform | 1 |" in table  # the per-round diagnostics
    for name in ("accuracy.png", "margins.png", "budget_vs_margin.png", "curvature.png", "best_of_n.png"):
        assert (out / name).read_bytes()[:8] == PNG, name
    assert len(list(out.rglob("test_scores.json"))) == 6 and os.path.isdir(out / "hh_rlhf" / "mars_abs" / "seed2")
    # A second run finds every job finished and only aggregates again; a job killed before its end
    # (no metrics.json) runs again.
    (out / "hh_rlhf" / "uniform" / "seed1" / "metrics.json").unlink()
    capsys.readouterr()
    study_main(["run", "--datasets", "hh_rlhf", "--seeds", "1", "2", *methods, "--out", str(out), *small])
    assert capsys.readouterr().out.startswith("1 jobs to run (5 already finished)")
    assert (out / "hh_rlhf" / "uniform" / "seed1" / "metrics.json").exists()
