"""Budget allocation (docs/method.md §2 steps 2–3, §4): q_i ∝ exp(−τ·s(Δ_i)), b_i by largest remainder."""
from __future__ import annotations

import numpy as np
import pytest

from mars.allocators.base import largest_remainder
from mars.allocators.mars import MarsAllocator
from mars.allocators.none import NoAllocator
from mars.allocators.uniform import UniformAllocator
from mars.allocators.west_of_n import WestOfNAllocator

MARGINS = np.array([-3.0, -0.1, 0.1, 3.0])


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("n", [1, 3, 10, 257])
@pytest.mark.parametrize("budget", [0, 1, 2, 9, 100, 5000, 123_457])
@pytest.mark.parametrize("seed", [0, 1])
def test_largest_remainder_sums_exactly(n, budget, seed):
    probs = rng(seed + 100).dirichlet(np.full(n, 0.3))
    b = largest_remainder(probs, budget, rng(seed))
    assert b.dtype == np.int64 and b.shape == (n,) and (b >= 0).all()
    assert b.sum() == budget
    exact = budget * probs / probs.sum()
    assert (np.abs(b - exact) < 1).all()  # floor(B·q) or one more
    floors = np.floor(exact)
    up, kept = (exact - floors)[b > floors], (exact - floors)[b == floors]
    if len(up) and len(kept):
        assert up.min() >= kept.max() - 1e-12  # the extra units went to the largest remainders


def test_largest_remainder_unnormalised_and_empty():
    assert largest_remainder(np.array([2.0, 1.0, 1.0]), 8, rng()).tolist() == [4, 2, 2]
    assert largest_remainder(np.array([]), 5, rng()).tolist() == []
    assert largest_remainder(np.array([0.5, 0.5]), 0, rng()).tolist() == [0, 0]


def test_largest_remainder_deterministic_under_seed():
    probs = np.full(50, 1 / 50)
    assert (largest_remainder(probs, 17, rng(4)) == largest_remainder(probs, 17, rng(4))).all()


def test_tie_breaking_varies_with_seed():
    probs = np.full(10, 0.1)  # every remainder ties: B = 3 < N units to place
    outcomes = set()
    for seed in range(10):
        b = largest_remainder(probs, 3, rng(seed))
        assert sorted(b.tolist()) == [0] * 7 + [1] * 3
        outcomes.add(tuple(np.flatnonzero(b)))
    assert len(outcomes) > 1  # not always the first three


@pytest.mark.parametrize("margin", ["abs", "signed"])
def test_zero_temperature_is_uniform(margin):
    q = MarsAllocator(0.0, margin).probabilities(MARGINS)
    assert q.tolist() == [0.25] * 4


def test_abs_mode_favours_small_margins_symmetrically():
    q = MarsAllocator(0.5, "abs").probabilities(MARGINS)
    assert q.sum() == pytest.approx(1.0)
    assert q[1] == pytest.approx(q[2]) and q[0] == pytest.approx(q[3])
    assert q[1] > q[0]
    w = np.exp(-0.5 * np.abs(MARGINS))
    assert q == pytest.approx(w / w.sum())
    b = MarsAllocator(0.5, "abs").allocate(MARGINS, 1000, rng())
    assert b.sum() == 1000 and b[1] > b[0] and b[2] > b[3] and abs(int(b[1]) - int(b[2])) <= 1


def test_signed_mode_favours_misranked_pairs():
    q = MarsAllocator(0.5, "signed").probabilities(MARGINS)
    assert q.sum() == pytest.approx(1.0)
    assert (np.diff(q) < 0).all()  # strictly decreasing in Δ: −3 gets the most
    w = np.exp(-0.5 * MARGINS)
    assert q == pytest.approx(w / w.sum())


@pytest.mark.parametrize("margin", ["abs", "signed"])
def test_large_temperature_times_margin_is_finite(margin):
    margins = np.array([-1e4, -50.0, 0.0, 50.0, 1e4])
    q = MarsAllocator(100.0, margin).probabilities(margins)
    assert np.isfinite(q).all() and q.sum() == pytest.approx(1.0)
    assert q.argmax() == (2 if margin == "abs" else 0)
    assert MarsAllocator(100.0, margin).allocate(margins, 77, rng()).sum() == 77


def test_invalid_mars_settings_raise():
    with pytest.raises(ValueError, match="margin"):
        MarsAllocator(0.5, "relative")
    with pytest.raises(ValueError, match="temperature"):
        MarsAllocator(-0.1)


def test_uniform_gives_equal_shares():
    margins = rng(1).normal(size=7)
    b = UniformAllocator().allocate(margins, 100, rng())
    assert b.sum() == 100 and set(b.tolist()) <= {14, 15}
    assert UniformAllocator().probabilities(margins) == pytest.approx(np.full(7, 1 / 7))


def test_none_spends_nothing():
    b = NoAllocator().allocate(MARGINS, 1000, rng())
    assert b.tolist() == [0, 0, 0, 0] and b.dtype == np.int64


@pytest.mark.parametrize("mode", ["top_margin", "best_vs_worst"])
def test_west_of_n_modes(mode):
    alloc = WestOfNAllocator(mode)
    assert alloc.select == mode and alloc.spends_budget
    b = alloc.allocate(MARGINS, 10, rng())
    assert b.sum() == 10 and set(b.tolist()) <= {2, 3}  # budget spread uniformly


def test_west_of_n_default_and_invalid():
    assert WestOfNAllocator().select == "top_margin"
    assert MarsAllocator(0.5).select == UniformAllocator().select == "random"
    with pytest.raises(ValueError, match="mode"):
        WestOfNAllocator("best")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_margins_stop_the_allocator(bad):
    margins = np.array([0.1, bad, -0.3])
    with pytest.raises(FloatingPointError, match="1 of 3 margins are not finite .*base pair 1"):
        MarsAllocator(0.5).allocate(margins, 10, np.random.default_rng(0))
