"""eval.py on a RewardBench v1 file: the leaderboard's score (sections as example-count-weighted
means of their subsets, then the mean of the sections), not a pair-count-weighted mean."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mars.config import FinetuneConfig, LossConfig, OptimConfig, validate
from mars.evaluation.rewardbench import EXAMPLE_COUNTS
from mars.model.export import export_reward_model
from mars.lightning.module import RewardModule
from tests.conftest import compose_config

SUBSETS = {"alpacaeval-easy": "Chat", "mt-bench-hard": "Chat Hard", "refusals-dangerous": "Safety",
           "donotanswer": "Safety", "math-prm": "Reasoning", "hep-python": "Reasoning"}


def test_rewardbench_score_is_the_leaderboards(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"prompt": f"question {i} about {s}", "chosen": " ".join(rng.choice(["good", "fine", "yes"], 6)),
             "rejected": " ".join(rng.choice(["bad", "no", "wrong"], 6)), "subset": s, "id": f"{s}-{i}"}
            for s in SUBSETS for i in range(int(rng.integers(4, 12)))]
    path = tmp_path / "rb.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    torch.manual_seed(0)
    typed = validate(compose_config("train", ["backbone=tiny", "+backbone.config_overrides.initializer_range=0.5"],
                                    tmp_path))
    module = RewardModule(typed["backbone"], FinetuneConfig(), OptimConfig(), LossConfig())
    module.configure_model()
    folder = export_reward_model(module, str(tmp_path / "export"))

    from mars.cli.evaluate import evaluate

    cfg = compose_config("eval", [f"model={folder}", "data=rewardbench", f"data.path={path}", "data.hub_name=null",
                                  "split=all", "bootstrap=10", f"output_dir={tmp_path / 'out'}"], tmp_path)
    (result,) = evaluate(cfg).values()
    subset_acc = {s: g["acc"] for s, g in result["groups"]["subset"].items()}
    sections = {}
    for section in ("Chat", "Chat Hard", "Safety", "Reasoning"):
        members = [s for s, sec in SUBSETS.items() if sec == section]
        weights = np.array([EXAMPLE_COUNTS[s] for s in members], dtype=float)
        sections[section] = float(weights @ [subset_acc[s] for s in members] / weights.sum())
    assert result["rewardbench"]["sections"] == pytest.approx(sections)
    assert result["rewardbench"]["score"] == pytest.approx(np.mean(list(sections.values())))
    by_pairs = result["groups"]["section"]  # the old, pair-weighted number differs
    pair_weighted = sum(g["acc"] * g["pairs"] for g in by_pairs.values()) / sum(g["pairs"] for g in by_pairs.values())
    assert result["rewardbench"]["score"] != pytest.approx(pair_weighted)
    assert "mean of the four sections" in (tmp_path / "out" / "report.md").read_text()
