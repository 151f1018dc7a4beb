"""Best-of-N: hand-computed win-rates, anchors and curves, tie-breaking, loaders, the real anchors."""
from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest

from mars.data.candidates import CandidateSet, load_alpacaeval_bon, load_candidates
from mars.data.records import DataFormatError
from mars.evaluation.best_of_n import best_of_n, format_best_of_n, pick
from tests.conftest import require_data

# Three instructions of three candidates: (texts, judge scores, rewards).
# A: picks 1 (0.8); longest is 2 (0.5); oracle 0.8.
# B: picks 1 (0.1); longest ties 0 and 1 at 3 chars -> 0 (0.9); oracle 0.9.
# C: rewards tie 0 and 1 -> picks 0 (0.3); longest is 2 (0.0); oracle 0.6.
FIXTURE = [
    (["aa", "a", "aaaa"], [0.2, 0.8, 0.5], [1.0, 3.0, 2.0]),
    (["bbb", "bbb", "b"], [0.9, 0.1, 0.4], [0.0, 5.0, 1.0]),
    (["c", "cc", "ccc"], [0.3, 0.6, 0.0], [2.0, 2.0, 1.0]),
]


def fixture_sets():
    sets = [CandidateSet(id=str(i), prompt=f"q{i}", candidates=c, scores=u) for i, (c, u, _) in enumerate(FIXTURE)]
    return sets, [np.array(r) for _, _, r in FIXTURE]


def test_fixture_by_hand():
    sets, rewards = fixture_sets()
    res = best_of_n(sets, rewards, n_boot=200)
    assert res["win_rate"]["value"] == pytest.approx((0.8 + 0.1 + 0.3) / 3)
    assert res["random"] == pytest.approx((1.5 / 3 + 1.4 / 3 + 0.9 / 3) / 3)
    assert res["longest"] == pytest.approx((0.5 + 0.9 + 0.0) / 3)
    assert res["oracle"] == pytest.approx((0.8 + 0.9 + 0.6) / 3)
    # k = 2 by listing the three 2-subsets of each instruction and the model's pick in each:
    # A {0,1}->0.8 {0,2}->0.5 {1,2}->0.8; B {0,1}->0.1 {0,2}->0.4 {1,2}->0.1; C {0,1}->0.3 {0,2}->0.3 {1,2}->0.6
    k2 = (2.1 / 3 + 0.6 / 3 + 1.2 / 3) / 3
    assert res["curve"] == pytest.approx({1: res["random"], 2: k2, 3: res["win_rate"]["value"]})
    # the judge's best of each 2-subset: A 0.8 0.5 0.8; B 0.9 0.9 0.4; C 0.6 0.3 0.6
    assert res["oracle_curve"] == pytest.approx({1: res["random"], 2: (2.1 / 3 + 2.2 / 3 + 1.5 / 3) / 3,
                                                 3: res["oracle"]})
    assert (res["instructions"], res["candidates"]) == (3, 3)
    assert res["win_rate"]["lo"] <= res["win_rate"]["hi"]
    assert 0.1 - 1e-12 <= res["win_rate"]["lo"] and res["win_rate"]["hi"] <= 0.8 + 1e-12  # the picks' range
    assert json.loads(json.dumps(res))["curve"]["2"] == pytest.approx(k2)
    table = format_best_of_n(res)
    assert "best-of-3 on 3 instructions" in table and "0.400" in table


def test_curve_matches_enumeration():
    rng = np.random.default_rng(3)
    n = 6
    rewards = rng.integers(0, 3, n).astype(float)  # few values: reward ties are certain
    utils = rng.random(n)
    res = best_of_n([CandidateSet("x", "p", [str(i) for i in range(n)], list(utils))], [rewards], n_boot=10)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(range(n), k))
        brute = np.mean([utils[list(s)[pick(rewards[list(s)])]] for s in subsets])
        assert res["curve"][k] == pytest.approx(brute, abs=1e-12)
        assert res["oracle_curve"][k] == pytest.approx(np.mean([utils[list(s)].max() for s in subsets]), abs=1e-12)


def test_pick_breaks_ties_by_lower_index():
    assert pick([1.0, 3.0, 3.0, 2.0]) == 1
    assert pick([0.5, 0.5, 0.5]) == 0
    assert pick(np.array([-1.0, 2.0, 2.0])) == 1
    for bad in ([], [1.0, float("nan")], [[1.0]]):
        with pytest.raises(ValueError):
            pick(bad)


def test_bootstrap_is_seeded_and_not_widened():
    sets, rewards = fixture_sets()
    a, b = best_of_n(sets, rewards, seed=1), best_of_n(sets, rewards, seed=1)
    assert a["win_rate"] == b["win_rate"]
    same = [CandidateSet(str(i), "p", ["x", "y"], [0.5, 0.2]) for i in range(5)]
    w = best_of_n(same, [np.array([1.0, 0.0])] * 5)["win_rate"]
    assert w == {"value": 0.5, "lo": 0.5, "hi": 0.5}


def test_inputs_are_checked():
    sets, rewards = fixture_sets()
    with pytest.raises(ValueError, match="3 candidate sets but 2"):
        best_of_n(sets, rewards[:2])
    with pytest.raises(ValueError, match="rewards for 3 candidates"):
        best_of_n(sets, [rewards[0], rewards[1], np.ones(2)])
    with pytest.raises(ValueError, match="no scores"):
        best_of_n([CandidateSet("u", "p", ["a"])], [np.ones(1)])


def alpaca_row(i: int, prefs: list[float]) -> dict:
    return {"id": i, "dataset": "koala", "instruction": f"q{i}", "reference": "ref",
            "reference_generator": "gpt", "candidates": [{"sample": j, "output": "o" * (j + 1), "preference": p}
                                                         for j, p in enumerate(prefs)]}


def test_alpacaeval_loader_and_limit(tmp_path: Path):
    path = tmp_path / "bon.jsonl"
    path.write_text("".join(json.dumps(alpaca_row(i, [1.0, 1.25, 2.0])) + "\n" for i in range(4)))
    sets = load_alpacaeval_bon(str(path))
    assert len(sets) == 4 and sets[0].id == "0" and sets[0].prompt == "q0" and sets[0].reference == "ref"
    assert sets[0].scores == [0.0, 0.25, 1.0] and sets[0].candidates == ["o", "oo", "ooo"]
    assert sets[0].meta == {"dataset": "koala", "reference_generator": "gpt"}
    assert [s.id for s in load_alpacaeval_bon(str(path), limit=2)] == ["0", "1"]


@pytest.mark.parametrize("line, message", [
    ("{not json", "malformed json"),
    (json.dumps({"instruction": "q"}), "field 'candidates' must be a non-empty list"),
    (json.dumps(alpaca_row(1, [1.0, 2.5])), r"candidates\[1\].preference=2.5 is outside \[1, 2\]"),
    (json.dumps(alpaca_row(1, [1.0, None])), r"candidates\[1\].preference"),
])
def test_alpacaeval_bad_line_is_named(tmp_path: Path, line: str, message: str):
    path = tmp_path / "bon.jsonl"
    path.write_text(json.dumps(alpaca_row(0, [1.5])) + "\n" + line + "\n")
    with pytest.raises(DataFormatError, match=f"{re.escape(str(path))}:2: .*{message}"):
        load_alpacaeval_bon(str(path))


def test_own_candidates_format(tmp_path: Path):
    path = tmp_path / "mine.jsonl"
    rows = [{"prompt": "p", "candidates": ["a", "b"], "scores": [0.1, 0.9], "source": "me"},
            {"id": "x", "prompt": "q", "candidates": ["c"]},
            {"prompt": "r", "candidates": ["d", "e"], "scores": [1.0]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first, second = load_candidates(str(path), limit=2)
    assert first == CandidateSet("0", "p", ["a", "b"], [0.1, 0.9]) and first.meta == {"source": "me"}
    assert second.id == "x" and second.scores is None
    with pytest.raises(DataFormatError, match=f"{re.escape(str(path))}:3: 1 scores for 2 candidates"):
        load_candidates(str(path))


def test_real_alpacaeval_anchors():
    path = require_data() / "alpacaeval-bon" / "alpacaeval-bon-n11.jsonl"
    sets = load_alpacaeval_bon(str(path))
    assert len(sets) == 403 and all(len(s.candidates) == 11 for s in sets)
    lengths = [np.array([len(c) for c in s.candidates], dtype=float) for s in sets]
    res = best_of_n(sets, lengths)  # a "reward model" that prefers length picks the longest
    assert (round(res["random"], 3), round(res["longest"], 3), round(res["oracle"], 3)) == (0.303, 0.351, 0.593)
    assert res["win_rate"]["value"] == pytest.approx(res["longest"])
    assert res["win_rate"]["lo"] < res["longest"] < res["win_rate"]["hi"]
    assert res["curve"][1] == pytest.approx(res["random"])
    assert res["oracle_curve"][11] == pytest.approx(res["oracle"])
    assert load_alpacaeval_bon(str(path), limit=5)[4].id == sets[4].id
