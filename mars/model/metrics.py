"""Pairwise reward-model metrics, exact over the whole set and gathered across ranks.

Rewards are kept (not batch means) and everything is computed once at the end, so the result
does not depend on batch size or sharding. Ties (Δ = 0) are counted apart and are not correct.
"""
from __future__ import annotations

import torch
from torchmetrics import Metric

ECE_BINS = 10


def _auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """Mann–Whitney ROC-AUC from average ranks (ties count one half). Exact for any reward scale:
    `binary_auroc` squashes values outside [0, 1] with a sigmoid, which merges large rewards."""
    _, inverse, counts = torch.unique(torch.cat([pos, neg]), return_inverse=True, return_counts=True)
    ranks = (counts.cumsum(0) - (counts - 1) / 2).double()[inverse]  # 1-based average ranks
    n_pos, n_neg = pos.numel(), neg.numel()
    return ((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).item()


def pairwise_metrics(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> dict[str, float]:
    """acc, ties, margin mean/std, SNR, ROC-AUC, ECE of σ(Δ), reward mean/std.

    ECE treats σ(Δ) as the probability that the labelled order is right: confidence
    max(σ(Δ), 1 − σ(Δ)) in 10 equal bins over [0.5, 1], against the share ranked right
    (a tie counts one half).
    """
    r_chosen, r_rejected = r_chosen.double(), r_rejected.double()
    margin = r_chosen - r_rejected
    n = margin.numel()
    if n == 0:
        return {}
    correct = (margin > 0).double() + 0.5 * (margin == 0).double()
    confidence = torch.sigmoid(margin.abs())
    bins = ((confidence - 0.5) * 2 * ECE_BINS).long().clamp(0, ECE_BINS - 1)
    ece = sum((correct[bins == b].mean() - confidence[bins == b].mean()).abs() * (bins == b).sum() / n
              for b in bins.unique())
    rewards = torch.cat([r_chosen, r_rejected])
    std = margin.std() if n > 1 else margin.new_tensor(0.0)
    return {
        "acc": (margin > 0).double().mean().item(),
        "ties": (margin == 0).double().mean().item(),
        "margin_mean": margin.mean().item(),
        "margin_std": std.item(),
        "snr": (margin.mean() / std).item() if std > 0 else float("nan"),
        "auc": _auc(r_chosen, r_rejected),
        "ece": float(ece),
        "reward_mean": rewards.mean().item(),
        "reward_std": rewards.std().item() if rewards.numel() > 1 else 0.0,
    }


def _cat(xs) -> torch.Tensor:
    return torch.cat(xs) if isinstance(xs, list) else xs  # synced: already one tensor


class PairwiseMetrics(Metric):
    """Collects rewards of chosen and rejected (and each pair's index in its set); `compute()`
    gives `pairwise_metrics` of all of them, `rewards()` the rewards themselves, every rank's."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("r_chosen", default=[], dist_reduce_fx="cat")
        self.add_state("r_rejected", default=[], dist_reduce_fx="cat")
        self.add_state("index", default=[], dist_reduce_fx="cat")

    def update(self, r_chosen: torch.Tensor, r_rejected: torch.Tensor, index: torch.Tensor | None = None) -> None:
        self.r_chosen.append(r_chosen.detach().float())
        self.r_rejected.append(r_rejected.detach().float())
        self.index.append(torch.full_like(r_chosen, -1, dtype=torch.long) if index is None else index.detach())

    def compute(self) -> dict[str, float]:
        if isinstance(self.r_chosen, list) and not self.r_chosen:
            return {}
        return pairwise_metrics(_cat(self.r_chosen), _cat(self.r_rejected))

    def rewards(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(index, r⁺, r⁻) of every pair seen on any rank, in index order."""
        if isinstance(self.r_chosen, list) and not self.r_chosen:
            return torch.empty(0, dtype=torch.long), torch.empty(0), torch.empty(0)
        with self.sync_context():
            index, r_chosen, r_rejected = _cat(self.index), _cat(self.r_chosen), _cat(self.r_rejected)
        order = torch.argsort(index, stable=True)
        return index[order], r_chosen[order], r_rejected[order]
