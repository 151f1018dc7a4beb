"""Pairwise metrics (docs/method.md §5): exact values on small sets, and independent of batching."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mars.model.metrics import ECE_BINS, PairwiseMetrics, pairwise_metrics


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def brute_auc(pos, neg) -> float:
    """Mann–Whitney: P(r⁺ > r⁻) over all chosen × rejected, ties one half."""
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def brute_ece(margins) -> float:
    """Top-label ECE with 10 equal bins of confidence max(σ, 1 − σ) over [0.5, 1]."""
    margins = np.asarray(margins, dtype=np.float64)
    conf = 1 / (1 + np.exp(-np.abs(margins)))
    correct = (margins > 0) + 0.5 * (margins == 0)
    edges = np.linspace(0.5, 1.0, ECE_BINS + 1)
    bins = np.clip(np.digitize(conf, edges) - 1, 0, ECE_BINS - 1)
    return sum(abs(correct[bins == b].mean() - conf[bins == b].mean()) * (bins == b).mean()
               for b in np.unique(bins))


# Δ = [2, 0, −1, 1]: one tie, one mis-ranked pair.
CHOSEN = [2.0, 1.0, 0.5, 0.0]
REJECTED = [0.0, 1.0, 1.5, -1.0]


def test_hand_computed_values():
    m = pairwise_metrics(torch.tensor(CHOSEN), torch.tensor(REJECTED))
    assert m["acc"] == 0.5  # Δ = 2 and Δ = 1; the tie is not correct
    assert m["ties"] == 0.25
    assert m["margin_mean"] == pytest.approx(0.5)
    assert m["margin_std"] == pytest.approx(math.sqrt(5 / 3))  # deviations ±1.5, ±0.5; n − 1 = 3
    assert m["snr"] == pytest.approx(0.5 / math.sqrt(5 / 3))
    # chosen vs rejected: 2 beats all 4; 1 beats 2, ties 1; 0.5 beats 2; 0 beats 1, ties 1 → 10/16
    assert m["auc"] == pytest.approx(10 / 16)
    # bins of σ(|Δ|): Δ=2 → bin 7 (σ=.881, correct 1); Δ=0 → bin 0 (.5 vs .5);
    # Δ=±1 → bin 4 (σ=.731 twice, correct 1 and 0 → 0.5)
    ece = (1 - sigmoid(2)) * 1 / 4 + 0 + abs(0.5 - sigmoid(1)) * 2 / 4
    assert m["ece"] == pytest.approx(ece)
    rewards = CHOSEN + REJECTED
    assert m["reward_mean"] == pytest.approx(5 / 8)
    assert m["reward_std"] == pytest.approx(np.std(rewards, ddof=1))


def test_perfect_and_reversed_rankings():
    up = pairwise_metrics(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0]))
    assert (up["acc"], up["ties"], up["auc"]) == (1.0, 0.0, 1.0)
    down = pairwise_metrics(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0]))
    assert (down["acc"], down["ties"], down["auc"]) == (0.0, 0.0, 0.0)


def test_all_ties():
    m = pairwise_metrics(torch.ones(5), torch.ones(5))
    assert (m["acc"], m["ties"], m["auc"], m["margin_std"]) == (0.0, 1.0, 0.5, 0.0)
    assert math.isnan(m["snr"])  # std 0: SNR undefined, not infinite
    assert m["ece"] == pytest.approx(0.0)  # confidence ½, half right


def test_single_pair():
    m = pairwise_metrics(torch.tensor([1.0]), torch.tensor([0.0]))
    assert m["margin_std"] == 0.0 and math.isnan(m["snr"])
    assert m["ece"] == pytest.approx(1 - sigmoid(1))


@pytest.mark.parametrize("scale", [0.01, 1.0, 100.0])  # large rewards must not saturate the AUC
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_and_ece_match_brute_force(seed, scale):
    g = torch.Generator().manual_seed(seed)
    n = 40
    # integer-valued rewards: many ties between and within chosen and rejected
    chosen = torch.randint(-3, 5, (n,), generator=g).double() * scale
    rejected = torch.randint(-4, 4, (n,), generator=g).double() * scale
    m = pairwise_metrics(chosen, rejected)
    assert m["auc"] == pytest.approx(brute_auc(chosen.tolist(), rejected.tolist()))
    margins = (chosen - rejected).numpy()
    assert m["ece"] == pytest.approx(brute_ece(margins))
    assert m["acc"] == pytest.approx((margins > 0).mean())
    assert m["ties"] == pytest.approx((margins == 0).mean())


def test_ece_on_continuous_margins():
    margins = torch.randn(200, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 + 0.5
    m = pairwise_metrics(margins, torch.zeros_like(margins))
    assert m["ece"] == pytest.approx(brute_ece(margins.numpy()))
    assert 0.0 <= m["ece"] <= 0.5


@pytest.mark.filterwarnings("ignore:The ``compute`` method:UserWarning")
def test_empty():
    assert pairwise_metrics(torch.empty(0), torch.empty(0)) == {}
    assert PairwiseMetrics().compute() == {}


def _data(n=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g) + 0.3, torch.randn(n, generator=g)


@pytest.mark.parametrize("sizes", [[37], [1, 5, 10, 21], [3] * 12 + [1], [20, 0, 17]])
def test_metric_is_independent_of_batch_split(sizes):
    chosen, rejected = _data()
    metric = PairwiseMetrics()
    for c, r in zip(chosen.split(sizes), rejected.split(sizes)):
        metric.update(c, r)
    assert metric.compute() == pairwise_metrics(chosen, rejected)


@pytest.mark.filterwarnings("ignore:The ``compute`` method:UserWarning")
def test_metric_reset_and_reuse():
    chosen, rejected = _data()
    metric = PairwiseMetrics()
    metric.update(-chosen, chosen)
    metric.reset()
    assert metric.compute() == {}
    metric.update(chosen[:10], rejected[:10])
    metric.update(chosen[10:], rejected[10:])
    assert metric.compute() == pairwise_metrics(chosen, rejected)
