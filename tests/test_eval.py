"""Export, reload and evaluation of an (untrained) tiny reward model: same rewards whichever way it is loaded."""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from mars.config import BackboneConfig, FinetuneConfig, LossConfig, OptimConfig, validate
from mars.data.batch import Collator
from mars.data.demo import demo_splits
from mars.data.format import PairFormatter, hh_messages
from mars.evaluation.pairwise import bootstrap, by_group
from mars.model.export import CheckpointMismatch, export_reward_model, load_for_eval, load_weights
from mars.model.metrics import pairwise_metrics
from mars.lightning.module import RewardModule
from tests.conftest import compose_config, score

TINY = BackboneConfig(name_or_path="minilm", random_init=True, max_length=64,
                      config_overrides=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                            intermediate_size=64))
TEXTS = ["\n\nHuman: What is the capital of France?\n\nAssistant: Paris.",
         "\n\nHuman: What is the capital of France?\n\nAssistant: I do not know, sorry about that."]


def spread(module: RewardModule) -> RewardModule:
    """Random init gives nearly constant rewards; make them spread out."""
    with torch.no_grad():
        for p in module.model.parameters():
            if p.ndim == 2:
                p.mul_(3.0)
        module.model.head.weight.mul_(30.0)
    return module


@pytest.fixture(scope="module")
def module():
    torch.manual_seed(0)
    m = RewardModule(TINY, FinetuneConfig(), OptimConfig(), LossConfig())
    m.configure_model()
    return spread(m).eval()


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
        ours, _ = module(dict(batch))
    assert theirs.shape == (2,) and torch.allclose(theirs, ours, atol=1e-6)
    assert (theirs[0] - theirs[1]).abs() > 1e-4  # the comparison is not between constants
    info = json.load(open(f"{export}/mars_export.json"))
    assert info["max_length"] == 64 and info["kind"] == "encoder" and "apply_chat_template" in info["format"]
    assert not any(isinstance(v, str) and v.startswith("/") for v in info.values())  # no paths of this machine


def forward_one_by_one(module, pairs):
    """Each pair alone, no batching or padding: the reference the batched scorer must match."""
    enc = PairFormatter.of(module.tokenizer, module.backbone_cfg)
    collate = Collator(module.tokenizer.pad_token_id)
    with torch.no_grad():
        rewards = [module.pair_rewards(collate([e])) for e in enc.encode(pairs)]
    return np.array([float(c) for c, _ in rewards]), np.array([float(r) for _, r in rewards])


def test_scores_of_export_equal_original(module, export, pairs):
    loaded = load_for_eval(export)
    assert loaded.backbone_cfg.max_length == 64
    rc, rr, truncated = score(loaded, pairs, batch_size=8)
    rc0, rr0, truncated0 = score(module, pairs, batch_size=8)
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
    rc, rr, _ = score(loaded, pairs, batch_size=16)
    rc0, rr0, _ = score(module, pairs, batch_size=16)
    assert np.array_equal(rc, rc0) and np.array_equal(rr, rr0)


def test_checkpoint_of_another_model_is_named_not_ignored(module, tmp_path):
    other = RewardModule(BackboneConfig(**{**vars(TINY), "config_overrides": {**TINY.config_overrides,
                                                                             "num_hidden_layers": 3}}),
                         FinetuneConfig(), OptimConfig(), LossConfig())
    other.configure_model()
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.strategy.connect(other)
    trainer.save_checkpoint(tmp_path / "other.ckpt")
    with pytest.raises(CheckpointMismatch, match=r"unexpected keys \['model\.net\.bert\.encoder\.layer\.2"):
        load_weights(module, str(tmp_path / "other.ckpt"))


def build(name: str, finetune: str, tmp_path) -> RewardModule:
    cfg = compose_config("train", [f"backbone={name}", f"finetune={finetune}"], tmp_path)
    typed = validate(cfg)
    torch.manual_seed(0)
    m = RewardModule(typed["backbone"], typed["finetune"], typed["optim"], typed["loss"])
    m.configure_model()
    with torch.no_grad():  # trained-looking adapters: LoRA's B starts at zero
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    return spread(m).eval()


def rewardbench_path(folder: str, pairs) -> tuple[np.ndarray, np.ndarray]:
    """How RewardBench scores an export: apply_chat_template([user, assistant], tokenize=False),
    the tokenizer, the model; nothing of mars."""
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    info = json.load(open(f"{folder}/mars_export.json"))
    out = []
    with torch.no_grad():
        for side in ("chosen", "rejected"):
            texts = [tok.apply_chat_template(hh_messages(p.prompt) + [{"role": "assistant", "content": getattr(p, side)}],
                                             tokenize=False) for p in pairs]
            batch = tok(texts, padding=True, return_tensors="pt", add_special_tokens=info["add_special_tokens"])
            out.append(model(**batch).logits.squeeze(-1).double().numpy())
    return out[0], out[1]


@pytest.mark.parametrize("name,finetune", [("tiny", "full"), ("tiny", "lora"), ("tiny_llama", "full"),
                                           ("tiny_llama", "lora"), ("tiny_qwen2", "lora")])
def test_export_scores_as_mars_through_the_rewardbench_path(name, finetune, pairs, tmp_path):
    module = build(name, finetune, tmp_path)
    folder = export_reward_model(module, str(tmp_path / "export"))
    short = pairs[:12]  # pairs that need no truncation
    rc, rr, truncated = score(module, short)
    assert truncated == 0
    theirs_c, theirs_r = rewardbench_path(folder, short)
    np.testing.assert_allclose(theirs_c, rc, atol=1e-4)
    np.testing.assert_allclose(theirs_r, rr, atol=1e-4)
    ours, theirs = pairwise_metrics(torch.tensor(rc), torch.tensor(rr)), pairwise_metrics(
        torch.tensor(theirs_c), torch.tensor(theirs_r))
    assert ours["acc"] == theirs["acc"] and np.std(rc - rr) > 1e-3
    reloaded = score(load_for_eval(folder), short)
    np.testing.assert_allclose(reloaded[0], rc, atol=1e-4)


def test_lora_adapter_folder_rebuilds_the_reward_model(pairs, tmp_path):
    from peft import PeftModel

    base = tmp_path / "base"
    plain = build("tiny_llama", "full", tmp_path)
    plain.model.hf_model().save_pretrained(base)  # a "pretrained" base model the adapter belongs to
    plain.model.detach_head()
    plain.tokenizer.save_pretrained(base)
    cfg = compose_config("train", [f"backbone.name_or_path={base}", "finetune=lora", "backbone=tiny_llama",
                                   "backbone.model_type=null", "backbone.tokenizer=null"], tmp_path)
    typed = validate(cfg)
    module = RewardModule(typed["backbone"], typed["finetune"], typed["optim"], typed["loss"])
    module.configure_model()
    with torch.no_grad():
        for n, p in module.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
        module.model.head.weight.normal_(0, 3.0)
    module.eval()
    export_reward_model(module, str(tmp_path / "export"), adapter=True)
    peft = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base),
                                     str(tmp_path / "export" / "adapter")).eval()
    tok = module.tokenizer
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours, _ = module(dict(batch))
        theirs = peft(**batch).logits.squeeze(-1)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)
    assert (ours[0] - ours[1]).abs() > 1e-3


def synthetic(n: int, seed: int = 0):
    g = np.random.default_rng(seed)
    return g.normal(0.5, 1, n), g.normal(0, 1, n)


def test_bootstrap_is_the_percentile_interval_and_narrows():
    small, large = bootstrap(*synthetic(40), n=200), bootstrap(*synthetic(2000), n=200)
    assert set(small) == {"acc", "ties", "margin_mean", "margin_std", "snr", "auc", "ece", "reward_mean", "reward_std"}
    rc, rr = synthetic(40)
    rng = np.random.default_rng(0)  # the same resamples, by hand
    accs = [np.mean(rc[i] > rr[i]) for i in (rng.integers(0, 40, 40) for _ in range(200))]
    assert small["acc"]["lo"] == pytest.approx(np.percentile(accs, 2.5))
    assert small["acc"]["hi"] == pytest.approx(np.percentile(accs, 97.5))
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
    from mars.cli.evaluate import evaluate

    cfg = compose_config("eval", [f"model={export}", "data=demo", "bootstrap=50"], tmp_path)
    (result,) = evaluate(cfg).values()
    (written,) = json.loads((tmp_path / "eval.json").read_text())["models"].values()
    assert written["pairs"] == result["pairs"] == 200
    metrics = written["metrics"]
    assert {"acc", "auc", "ece", "snr", "margin_mean"} <= set(metrics)
    difficulty = written["groups"]["difficulty"]
    assert set(difficulty) == {"easy", "hard"} and sum(g["pairs"] for g in difficulty.values()) == 200
    overall = sum(g["acc"] * g["pairs"] for g in difficulty.values()) / 200
    assert overall == pytest.approx(metrics["acc"]["value"])
    assert "rewardbench" not in written and "section" not in written["groups"]
    rows = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == 200 and {r["model"] for r in rows} == {Path(export).parent.name}
    assert np.mean([r["r_chosen"] > r["r_rejected"] for r in rows]) == pytest.approx(metrics["acc"]["value"])
    assert np.mean([r["r_chosen"] - r["r_rejected"] for r in rows]) == pytest.approx(metrics["margin_mean"]["value"])


def test_eval_leaves_uninformative_pairs_out_of_the_metrics(export, tmp_path):
    """Pairs whose difference is cut at the export's 64 tokens: counted, flagged in scores.jsonl,
    not in accuracy."""
    from mars.cli.evaluate import evaluate

    shared = " ".join(f"s{i}" for i in range(60))
    rows = [{"prompt": f"q {i}?", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(6)]
    rows += [{"prompt": f"why {i}?", "chosen": f"Yes. {shared}", "rejected": f"No {i}. {shared}"} for i in range(3)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = compose_config("eval", [f"model={export}", "data=local", f"data.path={path}", "split=all", "bootstrap=10"],
                         tmp_path)
    (result,) = evaluate(cfg).values()
    assert result["pairs"] == 9 and result["uninformative"] == 3 and result["truncated"] == 3
    lines = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    flagged = [r for r in lines if r["uninformative"]]
    assert len(flagged) == 3 and all(r["truncated_chosen"] and r["r_chosen"] == r["r_rejected"] for r in flagged)
    counted = [r for r in lines if not r["uninformative"]]
    assert result["metrics"]["acc"]["value"] == pytest.approx(np.mean([r["r_chosen"] > r["r_rejected"] for r in counted]))
    assert result["uninformative_ids"] == [r["id"] for r in flagged]
    assert "| 9 | 3 | 3 |" in (tmp_path / "report.md").read_text()


def test_report_side_by_side_with_rounds(export, tmp_path):
    """Two models, one given as a run folder with round reports: tables for both, valid PNGs."""
    import shutil

    from mars.cli.evaluate import evaluate

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
    assert list(results) == ["run_a", Path(export).parent.name]  # in the order given
    report = (out / "report.md").read_text()
    assert "run_a" in report and "Accuracy by difficulty" in report
    for png in ("accuracy_margins.png", "rounds.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_alpacaeval_bon_end_to_end(export, tmp_path):
    """data=alpacaeval_bon through eval.py: the picks of the one scorer, their judged win-rate, the report."""
    from mars.cli.evaluate import evaluate
    from mars.data.candidates import load_alpacaeval_bon
    from mars.evaluation.models import load_scorer
    from tests.conftest import require_data

    path = require_data() / "alpacaeval-bon" / "alpacaeval-bon-n11.jsonl"
    out = tmp_path / "report"
    cfg = compose_config("eval", [f"model={export}", "data=alpacaeval_bon", "data.limit=4", "bootstrap=50",
                                  f"output_dir={out}"], tmp_path)
    (result,) = evaluate(cfg).values()
    sets = load_alpacaeval_bon(str(path), limit=4)
    scorer = load_scorer(export)
    rows = [(s.prompt, c) for s in sets for c in s.candidates]
    rewards = scorer.responses(rows).reshape(4, 11)
    picked = [s.scores[int(np.argmax(r))] for s, r in zip(sets, rewards)]
    bon = result["best_of_n"]
    assert (bon["instructions"], bon["candidates"]) == (4, 11) and result["prompts"] == 4
    assert bon["win_rate"]["value"] == pytest.approx(np.mean(picked))
    assert bon["picks"] == [int(np.argmax(r)) for r in rewards]
    assert bon["oracle"] == pytest.approx(np.mean([max(s.scores) for s in sets]))
    assert result["truncated"] == sum(scorer.formatter.sequence(p, c)[1] for p, c in rows) > 0  # max_length 64
    written = json.loads((out / "eval.json").read_text())
    assert written["models"][Path(export).parent.name]["best_of_n"]["win_rate"] == bon["win_rate"]
    assert "best-of-11 on 4 instructions" in (out / "report.md").read_text()
    assert (out / "best_of_n.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "candidates.jsonl").exists()  # nothing sampled or re-judged


def test_eval_rewardbench2_local_file_end_to_end(export, tmp_path):
    """data=rewardbench2 with a local file of all six subsets: the leaderboard score of the scorer's rewards."""
    from mars.cli.evaluate import evaluate
    from mars.data.candidates import load_rewardbench2
    from mars.evaluation.models import load_scorer
    from mars.evaluation.rewardbench import V2_SUBSETS, rewardbench2_scores

    rows = [{"id": str(i), "prompt": f"Question {i}?", "chosen": [f"The right answer {i}."],
             "rejected": [f"Wrong {i}.", f"Also wrong, {i}.", "No idea."], "num_correct": 1, "subset": subset}
            for i, subset in enumerate(V2_SUBSETS[:-1])]
    rows += [{"id": "ref:7", "prompt": "Name a primary colour.", "chosen": ["Red."], "rejected": ["Green."],
              "num_correct": 1, "subset": "Ties"},
             {"id": "tied:7", "prompt": "Name a primary colour.", "chosen": ["Red.", "Blue.", "Yellow."],
              "rejected": ["Green.", "Purple."], "num_correct": 3, "subset": "Ties"}]
    path = tmp_path / "rb2.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = compose_config("eval", [f"model={export}", "data=rewardbench2", f"data.path={path}",
                                  f"output_dir={tmp_path / 'report'}"], tmp_path)
    (result,) = evaluate(cfg).values()
    sets = load_rewardbench2(str(path))
    flat = load_scorer(export).responses([(s.prompt, c) for s in sets for c in s.candidates])
    bounds = np.cumsum([0] + [len(s.candidates) for s in sets])
    expected = rewardbench2_scores(sets, [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])])
    rb2 = result["rewardbench2"]
    assert set(rb2["subsets"]) == set(V2_SUBSETS) and rb2["prompts"]["Ties"] == 2
    assert rb2["score"] is not None and rb2["score"] == pytest.approx(expected["score"])
    assert rb2["subsets"] == pytest.approx(expected["subsets"])
    assert "RewardBench 2 score" in (tmp_path / "report" / "report.md").read_text()


def test_models_with_one_frozen_trunk_share_its_forward(export, tmp_path):
    """Two exports that differ only in the head: one trunk pass, each model's own rewards."""
    import copy

    from mars.evaluation.models import CandidateRewards, load_scorer

    module = load_for_eval(export)
    other = copy.deepcopy(module)
    with torch.no_grad():
        other.model.head.weight.mul_(-2.0)
    second = export_reward_model(other, str(tmp_path / "other" / "export"))
    rows = [("What is the capital of France?", a) for a in ("Paris.", "Lyon.", "I do not know.", "Paris.")]
    shared, alone = CandidateRewards(), []
    for folder in (export, second, str(tmp_path / "third")):
        if folder.endswith("third"):  # a model with another trunk: its own pass
            third = copy.deepcopy(module)
            with torch.no_grad():
                next(third.model.net.parameters()).add_(0.1)
            folder = export_reward_model(third, folder)
        scorer = load_scorer(folder)
        np.testing.assert_allclose(shared(scorer, rows), scorer.responses(rows), atol=1e-5)
        alone.append(scorer.responses(rows))
    assert shared.forwards == 2
    np.testing.assert_allclose(alone[1], -2.0 * alone[0] + 3.0 * module.model.head.bias.item(), atol=1e-4)
