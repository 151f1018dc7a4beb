"""The MARS loop: rounds, crossings, accumulation, West-of-N selection, state; and in training:
margins from the previous round's model, epochs that iterate exactly D^t, and resume."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from omegaconf import open_dict

from mars.allocators.mars import MarsAllocator
from mars.allocators.none import NoAllocator
from mars.allocators.uniform import UniformAllocator
from mars.allocators.west_of_n import WestOfNAllocator
from mars.augmenters.eda import EDAAugmenter
from mars.config import LoopConfig
from mars.data.records import PreferencePair
from mars.model.export import load_for_eval
from mars.method.loop import MarsLoop, variant_counts
from mars.model.scoring import Scores
from tests.conftest import TINY, compose_config, require_data, score
from mars.cli.train import train

GOOD = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma".split()
BAD = "red green blue cyan magenta yellow black violet amber olive".split()


def base_pairs(n: int) -> list[PreferencePair]:
    rng = np.random.default_rng(0)
    text = lambda words: " ".join(rng.choice(words, 12))  # noqa: E731
    return [PreferencePair(f"p{i}", f"question {i}", text(GOOD), text(BAD)) for i in range(n)]


def mostly(text: str, words: list[str]) -> bool:
    tokens = text.split()
    return sum(t in words for t in tokens) > len(tokens) / 2


class FixedScorer:
    """Margins chosen by the test: base pair i has margin margins[i]; other pairs by a rule."""

    def __init__(self, margins):
        self.margins, self.calls, self.seen = np.asarray(margins, dtype=float), 0, []

    @staticmethod
    def rule(p: PreferencePair) -> float:
        return float(len(p.chosen) - len(p.rejected))

    def pairs(self, pairs, features=False):
        self.calls += 1
        if pairs and "~" not in pairs[0].id:
            m = self.margins[: len(pairs)]
            return Scores(m, m, np.zeros_like(m), np.random.default_rng(1).normal(size=(len(pairs), 8)))
        self.seen += pairs
        m = np.array([self.rule(p) for p in pairs])
        return Scores(m, m, np.zeros_like(m))


def run_round(loop: MarsLoop, epoch: int, scorer: FixedScorer) -> dict:
    loop.scorer = scorer
    return loop.build_round(epoch)


def make_loop(allocator, **cfg) -> MarsLoop:
    loop = MarsLoop(LoopConfig(**{"budget": 30, "warmup_epochs": 0, **cfg}), allocator, EDAAugmenter(seed=0), seed=3)
    loop.base = base_pairs(20)
    return loop


@pytest.mark.parametrize("b", range(0, 40))
def test_variant_counts_cover_the_budget_minimally(b):
    n_pos, n_neg = variant_counts(b)
    assert (n_pos + 1) * (n_neg + 1) - 1 >= b and abs(n_pos - n_neg) <= 1
    if b:
        smaller = (n_pos, n_neg - 1) if n_neg == n_pos else (n_pos - 1, n_neg)
        assert (smaller[0] + 1) * (smaller[1] + 1) - 1 < b


@pytest.mark.parametrize("accumulate", [True, False])
def test_rounds_grow_or_resample(accumulate):
    loop = make_loop(MarsAllocator(0.5), accumulate=accumulate)
    scorer = FixedScorer(np.linspace(-2, 2, 20))
    sizes = [run_round(loop, e, scorer)["train_pairs"] for e in range(3)]
    assert sizes == ([50, 80, 110] if accumulate else [50, 50, 50])
    assert [loop.planned_size(e) for e in range(3)] == sizes
    ids = [p.id for p in loop.training_set()]
    assert len(set(ids)) == len(ids) and ids[:20] == [p.id for p in loop.base]


def test_synthetic_pairs_keep_their_labels_and_sources():
    loop = make_loop(MarsAllocator(1.0))
    run_round(loop, 0, FixedScorer(np.linspace(-2, 2, 20)))
    by_id = {p.id: p for p in loop.base}
    for s in loop.synthetic:
        src = by_id[s.meta["base_id"]]
        assert s.prompt == src.prompt and (s.chosen, s.rejected) != (src.chosen, src.rejected)
        assert mostly(s.chosen, GOOD) and mostly(s.rejected, BAD)  # variants keep their side
    counts = Counter(s.meta["base_index"] for s in loop.synthetic)
    assert sum(counts.values()) == 30 == sum(loop.history[-1]["allocation"])
    assert all(counts[i] == b for i, b in enumerate(loop.history[-1]["allocation"]) if b)


def test_pairs_truncation_made_uninformative_draw_no_budget():
    """Their Δ is 0 by construction: to MARS they would look like the hardest pairs."""
    class Truncating(FixedScorer):
        def pairs(self, pairs, features=False):
            scores = super().pairs(pairs, features)
            scores.uninformative = np.arange(len(pairs)) < 3 if "~" not in pairs[0].id else scores.uninformative
            scores.margins[scores.uninformative] = 0.0
            return scores

    loop = make_loop(MarsAllocator(2.0))
    report = run_round(loop, 0, Truncating(np.linspace(1, 3, 20)))
    allocation = np.array(loop.history[-1]["allocation"])
    assert allocation[:3].sum() == 0 and allocation.sum() == 30 and report["base_uninformative"] == 3
    assert allocation[3] == allocation.max()  # the smallest real margin takes the most


def test_mars_puts_budget_on_small_margins_and_signed_on_misranked():
    margins = np.linspace(-3, 3, 20)
    abs_loop, signed_loop = make_loop(MarsAllocator(2.0, "abs")), make_loop(MarsAllocator(2.0, "signed"))
    r_abs = run_round(abs_loop, 0, FixedScorer(margins))
    r_signed = run_round(signed_loop, 0, FixedScorer(margins))
    assert r_abs["budget_by_abs_margin_decile"][0] > r_abs["budget_by_abs_margin_decile"][-1]
    assert r_signed["budget_by_margin_decile"][0] > r_signed["budget_by_margin_decile"][-1]
    assert r_signed["budget_misranked_fraction"] > r_abs["budget_misranked_fraction"]
    assert r_abs["curvature_ratio"] > 1.0  # more weight where σ(Δ)(1−σ(Δ)) is large
    assert len(r_abs["fisher_bins"]) == 5


def test_rounds_report_where_the_budget_goes_on_known_flipped_labels():
    import dataclasses

    margins = np.linspace(-3, 3, 20)  # the 5 most negative margins belong to flipped pairs
    loop = make_loop(MarsAllocator(2.0, "signed"))
    loop.base = [dataclasses.replace(p, meta={"noise": {"selected": i < 5}}) for i, p in enumerate(loop.base)]
    report = run_round(loop, 0, FixedScorer(margins))
    assert report["flipped_fraction"] == 0.25
    assert report["misranked_among_flipped"] == 1.0 and report["misranked_among_clean"] == pytest.approx(5 / 15)
    assert report["budget_on_flipped_fraction"] > 0.25  # signed margins favour the mis-ranked


def test_warmup_epochs_train_on_base_only():
    loop = make_loop(MarsAllocator(0.5), warmup_epochs=2)
    scorer = FixedScorer(np.zeros(20))
    reports = [run_round(loop, e, scorer) for e in range(3)]
    assert [r["round"] for r in reports] == [0, 0, 1] and reports[0]["warmup"]
    assert scorer.calls == 1 and len(loop.synthetic) == 30


def test_none_allocator_never_scores_or_augments():
    loop = make_loop(NoAllocator())
    scorer = FixedScorer(np.zeros(20))
    assert run_round(loop, 0, scorer)["train_pairs"] == 20 and scorer.calls == 0


def test_pool_crossing_uses_variant_by_variant_pairs():
    loop = make_loop(UniformAllocator(), crossing="pool", pool_size=3)
    run_round(loop, 0, FixedScorer(np.zeros(20)))
    by_id = {p.id: p for p in loop.base}
    for s in loop.synthetic:
        src = by_id[s.meta["base_id"]]
        assert s.chosen != src.chosen and s.rejected != src.rejected


def test_west_of_n_keeps_highest_margin_candidates():
    loop = make_loop(WestOfNAllocator("top_margin"), budget=20, pool_size=4)
    scorer = FixedScorer(np.zeros(20))
    run_round(loop, 0, scorer)
    assert scorer.calls == 2  # base margins, then the candidates
    picked = {(s.chosen, s.rejected) for s in loop.synthetic}
    assert len(picked) == 20 and len({s.meta["base_id"] for s in loop.synthetic}) == 20  # one each
    for s in loop.synthetic:  # each pick is its source's highest-margin candidate by the scorer
        rivals = [scorer.rule(c) for c in scorer.seen if c.meta["base_id"] == s.meta["base_id"]]
        assert len(rivals) > 1 and scorer.rule(s) == max(rivals)
        assert scorer.rule(s) > min(rivals)  # a real choice: not all candidates tie


def test_west_of_n_best_vs_worst_pairs_the_extremes():
    loop = make_loop(WestOfNAllocator("best_vs_worst"), budget=20, pool_size=3)
    run_round(loop, 0, FixedScorer(np.zeros(20)))
    for s in loop.synthetic:  # the fake model rewards length: the longest vs the shortest text
        src = next(p for p in loop.base if p.id == s.meta["base_id"])
        assert len(s.chosen) - len(s.rejected) >= abs(len(src.chosen) - len(src.rejected))


def test_state_dict_round_trip():
    loop = make_loop(MarsAllocator(0.5))
    run_round(loop, 0, FixedScorer(np.linspace(-1, 1, 20)))
    fresh = make_loop(MarsAllocator(0.5))
    fresh.load_state_dict(json.loads(json.dumps(loop.state_dict())))
    assert [p.id for p in fresh.training_set()] == [p.id for p in loop.training_set()]
    assert fresh.synthetic == loop.synthetic and fresh.history == loop.history


# ---- in training (tiny backbone, real config)

LOOP = TINY + ["allocator=mars", "augmenter=eda", "augmenter.cache_path=null", "allocator.temperature=5",
               "loop.budget=48", "loop.warmup_epochs=1", "trainer.max_epochs=3", "callbacks=audit",
               "callbacks.model_checkpoint.save_top_k=-1", "export=false"]


def audit(run, epoch, rank=0):
    return json.loads((run / "audit" / f"epoch{epoch}_rank{rank}.json").read_text())


def test_round_margins_come_from_previous_rounds_model_and_epochs_iterate_d_t(tmp_path):
    cfg = compose_config("train", LOOP + ["callbacks.model_checkpoint.filename='e{epoch}'"], tmp_path)
    _, objects = train(cfg)
    loop = objects["datamodule"].loop
    assert [h["round"] for h in loop.history] == [1, 2]
    for h, epoch in zip(loop.history, (1, 2)):
        module = load_for_eval(str(tmp_path / "checkpoints" / f"e{epoch - 1}.ckpt"))
        r_c, r_r, _ = score(module, loop.base)
        np.testing.assert_allclose(h["margins"], r_c - r_r, atol=1e-5)
    for epoch, size in ((0, 96), (1, 96 + 48), (2, 96 + 96)):
        record = audit(tmp_path, epoch)
        assert len(record["train_set"]) == size
        assert Counter(record["seen"]) == Counter(record["train_set"])  # each pair exactly once


def test_prediction_pass_scores_each_distinct_sequence_once(tiny_cfg):
    import dataclasses

    _, objects = train(tiny_cfg)
    dm, module = objects["datamodule"], objects["model"]
    base = dm.loop.base[:20]
    swapped = dataclasses.replace(base[0], id="swapped", chosen=base[0].rejected, rejected=base[0].chosen)
    pairs = base + [base[3], swapped]  # a repeated pair and one with its sides exchanged
    rows = []
    module.register_forward_pre_hook(lambda m, args: rows.append(len(args[0]["input_ids"])))
    scores = dm.loop.scorer.pairs(pairs, features=True)
    assert sum(rows) == len({s for e in dm.formatter.encode(pairs) for s in (tuple(e.chosen), tuple(e.rejected))})
    r_c, r_r, _ = score(module, pairs)
    np.testing.assert_allclose(scores.margins, r_c - r_r, atol=1e-5)
    assert scores.margins[-1] == -scores.margins[0] and scores.margins[-2] == scores.margins[3]
    np.testing.assert_allclose(scores.features[-1], -scores.features[0])


@pytest.mark.parametrize("packing", [False, True])
def test_killed_run_resumes_to_the_same_result(packing, tmp_path):
    # Dropout on: its masks come from (seed, epoch), so the resumed epochs draw the same ones.
    with_dropout = LOOP + ["backbone.dropout=0.1", f"data.packing={packing}", "data.max_tokens_per_batch=800"]
    straight = compose_config("train", with_dropout, tmp_path / "a")
    metrics_a, objects_a = train(straight)

    run_b = tmp_path / "b" / "logs" / "train" / "runs" / "killed"
    crashing = compose_config("train", with_dropout + ["+callbacks.crash._target_=tests.helpers.CrashAtEpoch",
                                               "+callbacks.crash.epoch=2"], tmp_path / "b")
    with open_dict(crashing):
        crashing.paths.output_dir = str(run_b)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crashing)
    resumed = compose_config("train", with_dropout + ["ckpt_path=last"], tmp_path / "b")
    metrics_b, objects_b = train(resumed)

    pairs_a = objects_a["datamodule"].loop.training_set()
    pairs_b = objects_b["datamodule"].loop.training_set()
    assert [(p.id, p.chosen, p.rejected) for p in pairs_a] == [(p.id, p.chosen, p.rejected) for p in pairs_b]
    for name, p in objects_a["model"].state_dict().items():
        torch.testing.assert_close(objects_b["model"].state_dict()[name], p)
    assert metrics_b["test/acc"] == metrics_a["test/acc"]
    assert metrics_b["test/margin_mean"] == pytest.approx(metrics_a["test/margin_mean"], rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("allocator", ["none", "uniform", "mars", "west_of_n"])
def test_each_allocator_on_real_hh_rlhf_pairs(allocator, tmp_path):
    require_data()
    # A wide initialisation gives the tiny model margins well apart after one warm-up epoch.
    cfg = compose_config("train", TINY + ["+backbone.config_overrides.initializer_range=0.5",
        "data=hh_rlhf_offline", "data.train_size=200", "data.val_size=50", "data.test_size=50",
        f"allocator={allocator}", "augmenter=eda", "augmenter.cache_path=null", "loop.budget=400",
        "loop.warmup_epochs=1", "trainer.max_epochs=2", "export=false", "test=false"]
        + (["allocator.temperature=2"] if allocator == "mars" else []), tmp_path)
    _, objects = train(cfg)
    loop = objects["datamodule"].loop
    if allocator == "none":
        assert loop.history == [] and len(loop.training_set()) == 200
        return
    (round1,) = loop.history
    allocation, margins = np.asarray(round1["allocation"]), np.asarray(round1["margins"])
    assert allocation.sum() == 400 and round1["synthetic_added"] == 400 - round1["shortfall"]
    assert round1["shortfall"] < 40  # EDA yields enough distinct variants on real dialogue text
    if allocator in ("uniform", "west_of_n"):
        assert set(allocation) == {2}
    if allocator == "mars":
        deciles = np.array_split(np.argsort(np.abs(margins)), 10)
        assert allocation[deciles[0]].mean() > allocation[deciles[-1]].mean()
        assert round1["curvature_ratio"] > 1.0
    if allocator in ("uniform", "west_of_n"):  # what was added per pair is what was allocated
        added = Counter(p.meta["base_index"] for p in loop.synthetic)
        assert sum(allocation[i] - added.get(i, 0) for i in range(200)) == round1["shortfall"]


def test_budget_schedule_sets_each_rounds_budget():
    loop = make_loop(MarsAllocator(0.5), budget_schedule=[10, 20])
    scorer = FixedScorer(np.zeros(20))
    added = [run_round(loop, e, scorer)["synthetic_added"] for e in range(3)]
    assert added == [10, 20, 20] and [loop.planned_size(e) for e in range(3)] == [30, 50, 70]
