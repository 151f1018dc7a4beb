"""Pairwise metrics of a scored set of pairs, with bootstrap confidence intervals."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from mars.data.records import PreferencePair
from mars.model.metrics import pairwise_metrics


def bootstrap(r_chosen: np.ndarray, r_rejected: np.ndarray, n: int = 1000, ci: float = 0.95,
              seed: int = 0) -> dict[str, dict[str, float]]:
    """Each metric's value on all pairs and its percentile interval over `n` resamples of pairs."""
    point = pairwise_metrics(torch.from_numpy(r_chosen), torch.from_numpy(r_rejected))
    rng = np.random.default_rng(seed)
    draws = defaultdict(list)
    for _ in range(n):
        idx = rng.integers(0, len(r_chosen), len(r_chosen))
        for k, v in pairwise_metrics(torch.from_numpy(r_chosen[idx]), torch.from_numpy(r_rejected[idx])).items():
            draws[k].append(v)
    lo_q, hi_q = (1 - ci) / 2 * 100, (1 + ci) / 2 * 100
    out = {}
    for k, v in point.items():
        values = np.asarray(draws[k], dtype=np.float64)
        values = values[np.isfinite(values)]
        lo, hi = (np.percentile(values, [lo_q, hi_q]) if len(values) else (np.nan, np.nan))
        out[k] = {"value": v, "lo": float(lo), "hi": float(hi)}
    return out


def by_group(pairs: list[PreferencePair], r_chosen: np.ndarray, r_rejected: np.ndarray, key: str) -> dict:
    """Accuracy and count per value of `meta[key]` (e.g. RewardBench "section", demo "difficulty")."""
    groups = defaultdict(list)
    for i, p in enumerate(pairs):
        if key in p.meta:
            groups[p.meta[key]].append(i)
    return {g: {"pairs": len(idx), "acc": float(np.mean(r_chosen[idx] > r_rejected[idx]))}
            for g, idx in sorted(groups.items())}


def format_table(metrics: dict[str, dict[str, float]], ci: float) -> str:
    lines = [f"{'metric':<14}{'value':>10}   {int(ci * 100)}% interval", "-" * 44]
    for k, v in metrics.items():
        lines.append(f"{k:<14}{v['value']:>10.4f}   [{v['lo']:.4f}, {v['hi']:.4f}]")
    return "\n".join(lines)
