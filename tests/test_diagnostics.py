"""Curvature diagnostics of docs/method.md §6: w(Δ) = σ(Δ)(1 − σ(Δ)), its training-set ratio, Figure-5 bins."""
from __future__ import annotations

import numpy as np
import pytest

from mars.method.report import (allocation_report, budget_by_decile, curvature_ratio, curvature_weight,
                                fisher_by_margin_bins)

MARGINS = np.linspace(-4, 4, 41)


def test_curvature_weight_peak_and_symmetry():
    assert curvature_weight(np.array([0.0]))[0] == 0.25
    w = curvature_weight(MARGINS)
    assert w.max() == 0.25 and w[20] == 0.25  # the middle of MARGINS is Δ = 0
    assert w == pytest.approx(w[::-1])  # w(Δ) = w(−Δ)
    assert (np.diff(w[20:]) < 0).all()  # decreasing in |Δ|
    assert curvature_weight(np.array([2.0]))[0] == pytest.approx(np.exp(-2) / (1 + np.exp(-2)) ** 2)


def test_curvature_weight_extreme_margins():
    with np.errstate(over="ignore"):
        w = curvature_weight(np.array([-1e4, 1e4]))
    assert np.isfinite(w).all() and (w >= 0).all() and w.max() < 1e-100


def test_curvature_ratio():
    small = np.abs(MARGINS) < 1
    assert curvature_ratio(MARGINS, 1 + 10 * small) > 1  # copies on ambiguous pairs: more curvature
    assert curvature_ratio(MARGINS, 1 + 10 * (np.abs(MARGINS) > 3)) < 1
    assert curvature_ratio(MARGINS, np.full(41, 3)) == pytest.approx(1.0)
    # by hand: two pairs, Δ = 0 (w = ¼) with 3 copies and Δ = 2 with 1
    w2 = curvature_weight(np.array([2.0]))[0]
    expected = ((3 * 0.25 + w2) / 4) / ((0.25 + w2) / 2)
    assert curvature_ratio(np.array([0.0, 2.0]), np.array([3, 1])) == pytest.approx(expected)


@pytest.fixture
def margins_features():
    g = np.random.default_rng(0)
    return g.normal(0, 2, 200), g.normal(size=(200, 40))


@pytest.mark.parametrize("bins,dim", [(5, 16), (4, 8), (10, 40)])
def test_fisher_bins(margins_features, bins, dim):
    margins, features = margins_features
    rows = fisher_by_margin_bins(margins, features, bins, dim)
    assert len(rows) == bins and sum(r["pairs"] for r in rows) == len(margins)
    for a, b in zip(rows, rows[1:]):
        assert a["abs_margin_lo"] <= a["abs_margin_hi"] <= b["abs_margin_lo"]  # sorted by |Δ|
        assert a["mean_curvature"] > b["mean_curvature"]  # small-|Δ| bins have the most curvature
    assert all(r["fisher_min_eig"] >= -1e-12 for r in rows)  # PSD up to rounding
    first = np.argsort(np.abs(margins), kind="stable")[: rows[0]["pairs"]]
    assert rows[0]["mean_curvature"] == pytest.approx(curvature_weight(margins[first]).mean())


def test_fisher_smallest_eigenvalue_tracks_curvature():
    # the same features in every bin: the Fisher of a bin scales with its curvature weight
    g = np.random.default_rng(1)
    psi = np.tile(g.normal(size=(40, 4)), (5, 1))
    margins = np.repeat([0.0, 1.0, 2.0, 3.0, 4.0], 40)
    rows = fisher_by_margin_bins(margins, psi, bins=5, dim=4)
    eig = np.array([r["fisher_min_eig"] for r in rows])
    curv = np.array([r["mean_curvature"] for r in rows])
    assert (eig > 0).all() and (np.diff(eig) < 0).all()
    assert eig / curv == pytest.approx(np.full(5, eig[0] / curv[0]))


def test_budget_by_decile():
    g = np.random.default_rng(2)
    margins, budget = g.normal(size=100), g.integers(0, 20, 100)
    for absolute in (True, False):
        shares = budget_by_decile(margins, budget, absolute)
        assert len(shares) == 10 and sum(shares) == pytest.approx(1.0)
    on_ambiguous = (np.argsort(np.abs(margins))[:10, None] == np.arange(100)).any(0) * 5
    assert budget_by_decile(margins, on_ambiguous, absolute=True)[0] == pytest.approx(1.0)
    on_misranked = (np.argsort(margins)[:10, None] == np.arange(100)).any(0) * 5
    assert budget_by_decile(margins, on_misranked, absolute=False)[0] == pytest.approx(1.0)
    assert budget_by_decile(margins, np.zeros(100, dtype=int), absolute=True) == [0.0] * 10


def test_allocation_report():
    margins = np.array([-2.0, -0.5, 0.1, 0.3, 1.0, 2.0, 3.0, -1.0, 0.0, 4.0])
    budget = np.array([5, 3, 0, 0, 2, 0, 0, 1, 0, 0])
    report = allocation_report(margins, budget, 1 + budget, np.random.default_rng(3).normal(size=(10, 6)), 5, 4)
    assert set(report) == {
        "budget_total", "budget_pairs_touched", "budget_max", "budget_misranked_fraction",
        "budget_by_abs_margin_decile", "budget_by_margin_decile", "base_margin_mean", "base_margin_std",
        "base_acc", "margin_histogram", "curvature_ratio", "mean_curvature_base", "fisher_bins"}
    assert (report["budget_total"], report["budget_pairs_touched"], report["budget_max"]) == (11, 4, 5)
    assert report["budget_misranked_fraction"] == pytest.approx(9 / 11)
    assert report["base_acc"] == pytest.approx(0.6)
    assert sum(report["margin_histogram"]["counts"]) == 10 and len(report["fisher_bins"]) == 5
    assert report["curvature_ratio"] == pytest.approx(curvature_ratio(margins, 1 + budget))
    assert "fisher_bins" not in allocation_report(margins, budget, 1 + budget, None, 5, 4)
