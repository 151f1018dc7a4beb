"""Export, reload and evaluation of an (untrained) tiny reward model: same rewards whichever way it is loaded."""
from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from mars.config import BackboneConfig, LossConfig, OptimConfig
from mars.data.batching import PairCollator
from mars.data.demo import demo_splits
from mars.data.encoding import PairEncoder
from mars.evaluation.pairwise import bootstrap, by_group, load_for_eval, score_pairs
from mars.export import export_reward_model
from mars.model.module import RewardModule
from tests.conftest import compose_config

TINY = BackboneConfig(name_or_path="minilm", random_init=True, max_length=64,
                      config_overrides=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                            intermediate_size=64))
TEXTS = ["\n\nHuman: What is the capital of France?\n\nAssistant: Paris.",
         "\n\nHuman: What is the capital of France?\n\nAssistant: I do not know, sorry about that."]


@pytest.fixture(scope="module")
def module():
    torch.manual_seed(0)
    m = RewardModule(TINY, OptimConfig(), LossConfig())
    with torch.no_grad():  # random init gives nearly constant rewards; make them spread out
        m.model.bert.pooler.dense.weight.mul_(30.0)
        m.head().weight.mul_(30.0)
    return m.eval()


@pytest.fixture(scope="module")
def export(module, tmp_path_factory):
    return export_reward_model(module, str(tmp_path_factory.mktemp("model") / "export"))


@pytest.fixture(scope="module")
def pairs():
    return demo_splits(40, 10, 30, seed=0)["test"]


def test_export_loads_with_transformers(module, export):
    model = AutoModelForSequenceClassification.from_pretrained(export).eval()
    tok = AutoTokenizer.from_pretrained(export)
    assert model.config.num_labels == 1
    assert model.config.pad_token_id == tok.pad_token_id == module.tokenizer.pad_token_id is not None
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = model(**batch).logits.squeeze(-1)
        ours = module(batch["input_ids"], batch["attention_mask"])
    assert theirs.shape == (2,) and torch.allclose(theirs, ours, atol=1e-6)
    assert (theirs[0] - theirs[1]).abs() > 1e-4  # the comparison is not between constants
    assert json.load(open(f"{export}/mars_export.json"))["max_length"] == 64


def forward_one_by_one(module, pairs):
    """Each pair alone, no batching or padding: the reference the batched scorer must match."""
    enc = PairEncoder(module.tokenizer, module.backbone_cfg.max_length, module.backbone_cfg.min_prompt_tokens)
    collate = PairCollator(module.tokenizer.pad_token_id)
    with torch.no_grad():
        rewards = [module.pair_rewards(collate([e])) for e in enc.encode(pairs)]
    return np.array([float(c) for c, _ in rewards]), np.array([float(r) for _, r in rewards])


def test_score_pairs_of_export_equals_original(module, export, pairs):
    loaded = load_for_eval(export)
    assert loaded.backbone_cfg.max_length == 64
    rc, rr, truncated = score_pairs(loaded, pairs, batch_size=8)
    rc0, rr0, truncated0 = score_pairs(module, pairs, batch_size=8)
    ref_c, ref_r = forward_one_by_one(module, pairs)
    assert truncated == truncated0
    np.testing.assert_allclose(rc, rc0, atol=1e-5)
    np.testing.assert_allclose(rr, rr0, atol=1e-5)
    np.testing.assert_allclose(rc, ref_c, atol=1e-5)  # pair order restored after length grouping
    np.testing.assert_allclose(rr, ref_r, atol=1e-5)
    assert np.std(rc - rr) > 1e-3


def test_lightning_checkpoint_scores_identically(module, pairs, tmp_path):
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    loaded = load_for_eval(str(tmp_path / "model.ckpt"))
    assert loaded.backbone_cfg == module.backbone_cfg
    rc, rr, _ = score_pairs(loaded, pairs, batch_size=16)
    rc0, rr0, _ = score_pairs(module, pairs, batch_size=16)
    assert np.array_equal(rc, rc0) and np.array_equal(rr, rr0)


def synthetic(n: int, seed: int = 0):
    g = np.random.default_rng(seed)
    return g.normal(0.5, 1, n), g.normal(0, 1, n)


def test_bootstrap_contains_point_and_narrows():
    small, large = bootstrap(*synthetic(40), n=200), bootstrap(*synthetic(2000), n=200)
    assert set(small) == {"acc", "ties", "margin_mean", "margin_std", "snr", "auc", "ece", "reward_mean", "reward_std"}
    for result in (small, large):
        for k, v in result.items():
            assert v["lo"] <= v["value"] <= v["hi"], k
    for k in ("acc", "margin_mean", "auc", "snr"):
        assert large[k]["hi"] - large[k]["lo"] < 0.5 * (small[k]["hi"] - small[k]["lo"]), k
    assert small["acc"]["hi"] > small["acc"]["lo"]
    assert bootstrap(*synthetic(40), n=50, seed=1) == bootstrap(*synthetic(40), n=50, seed=1)


def test_by_group(pairs):
    rc, rr = np.arange(len(pairs), dtype=float), np.full(len(pairs), 10.0)
    groups = by_group(pairs, rc, rr, "difficulty")
    for name, g in groups.items():
        idx = [i for i, p in enumerate(pairs) if p.meta["difficulty"] == name]
        assert g == {"pairs": len(idx), "acc": pytest.approx(np.mean(np.array(idx) > 10))}
    assert by_group(pairs, rc, rr, "section") == {}


def test_eval_script_end_to_end(export, tmp_path):
    from eval import evaluate

    cfg = compose_config("eval", [f"model={export}", "data=demo", "bootstrap=50"], tmp_path)
    (result,) = evaluate(cfg).values()
    (written,) = json.loads((tmp_path / "eval.json").read_text())["models"].values()
    assert written["pairs"] == result["pairs"] == 200
    metrics = written["metrics"]
    assert {"acc", "auc", "ece", "snr", "margin_mean"} <= set(metrics)
    assert all(m["lo"] <= m["value"] <= m["hi"] for m in metrics.values() if np.isfinite(m["value"]))
    difficulty = written["groups"]["difficulty"]
    assert set(difficulty) == {"easy", "hard"} and sum(g["pairs"] for g in difficulty.values()) == 200
    overall = sum(g["acc"] * g["pairs"] for g in difficulty.values()) / 200
    assert overall == pytest.approx(metrics["acc"]["value"])
    assert "rewardbench_score" not in written and "section" not in written["groups"]


def test_report_side_by_side_with_rounds(export, tmp_path):
    """Two models, one given as a run folder with round reports: tables for both, valid PNGs."""
    import shutil

    from eval import evaluate

    run = tmp_path / "run_a"
    shutil.copytree(export, run / "export")
    (run / "rounds").mkdir()
    rng = np.random.default_rng(0)
    margins = rng.normal(size=30)
    (run / "rounds" / "round_01.json").write_text(json.dumps({
        "round": 1, "margins": margins.tolist(), "allocation": (5 * np.exp(-np.abs(margins))).round().tolist(),
        "fisher_bins": [{"mean_curvature": 0.2, "fisher_min_eig": 0.01}, {"mean_curvature": 0.1, "fisher_min_eig": 0.0}]}))
    out = tmp_path / "report"
    cfg = compose_config("eval", [f"model=[{run},{export}]", "data=demo", "bootstrap=20", f"output_dir={out}"], tmp_path)
    results = evaluate(cfg)
    assert list(results) == ["run_a", "export"] or len(results) == 2
    report = (out / "report.md").read_text()
    assert "run_a" in report and "Accuracy by difficulty" in report
    for png in ("accuracy_margins.png", "rounds.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
