"""Best-of-N evaluation: how good are the candidates a reward model would pick?

Per prompt the reward model picks its highest-reward candidate; the win-rate is the mean judge score
of the picks (for AlpacaEval-BoN the judged win probability against the reference). Three anchors put
it in context: a uniform random pick (the mean score over candidates), always the longest candidate
(by characters), and the oracle (the judge's own best). The best-of-k curve (Gao et al. 2022,
"Scaling laws for reward model overoptimization") is the expected score of the model's pick among a
uniformly random k-subset of the N candidates, computed exactly: with candidates ranked by reward
(rank 0 = highest), the rank-j candidate is the pick of a k-subset iff it is in the subset and no
higher-ranked one is, which has probability C(N−1−j, k−1) / C(N, k).

Reward ties are broken by the lower candidate index, everywhere (`pick` and the curve's ranking), so a
result never depends on sort stability or on the order in which candidates were scored.
"""
from __future__ import annotations

from math import comb
from typing import Any, Sequence

import numpy as np

from mars.data.candidates import CandidateSet


def pick(rewards: Sequence[float] | np.ndarray) -> int:
    """Index of the highest reward; ties go to the lowest index (np.argmax returns the first maximum)."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 1 or r.size == 0 or not np.isfinite(r).all():
        # argmax would silently pick a nan, or fail on an empty set with a less useful message
        raise ValueError(f"rewards must be a non-empty 1-d array of finite numbers, got {r!r}")
    return int(np.argmax(r))


def _ranked(r: np.ndarray) -> np.ndarray:
    """Candidate indices from highest to lowest reward, equal rewards in index order (stable sort)."""
    return np.argsort(-r, kind="stable")


def _best_of_k(r: np.ndarray, u: np.ndarray, k: int) -> float:
    """Exact expected score `u` of the `r`-pick over all k-subsets (the module docstring's formula)."""
    n = len(r)
    weights = np.array([comb(n - 1 - j, k - 1) for j in range(n)], dtype=np.float64) / comb(n, k)
    return float(weights @ u[_ranked(r)])


def mean_interval(values: Sequence[float] | np.ndarray, n_boot: int = 1000, ci: float = 0.95,
                  seed: int = 0) -> dict[str, float]:
    """The mean of `values` with a percentile bootstrap interval over them (`n_boot` resamples)."""
    v = np.asarray(values, dtype=np.float64)
    draws = v[np.random.default_rng(seed).integers(0, len(v), (n_boot, len(v)))].mean(axis=1)
    lo, hi = np.percentile(draws, [(1 - ci) / 2 * 100, (1 + ci) / 2 * 100])
    return {"value": float(v.mean()), "lo": float(lo), "hi": float(hi)}


def best_of_n(sets: list[CandidateSet], rewards: list[np.ndarray], n_boot: int = 1000, ci: float = 0.95,
              seed: int = 0) -> dict[str, Any]:
    """Win-rate of the reward model's picks with a percentile bootstrap interval, anchors and curves.

    `rewards[i][j]` is the reward of `sets[i].candidates[j]`; every set needs `scores`. The interval
    resamples prompts (`n_boot` times, `seed`) and is reported as it comes out, not widened to contain
    the estimate. `picks` holds the picked index per set. The curves run k = 1..N (N: the smallest
    candidate count, `candidates`); the random anchor is flat in k, and the curve's k = 1 value equals it.
    """
    if len(sets) != len(rewards) or not sets:
        raise ValueError(f"{len(sets)} candidate sets but {len(rewards)} reward arrays (need equal, > 0)")
    utils, rs = [], []
    for s, r in zip(sets, rewards):
        r = np.asarray(r, dtype=np.float64)
        if s.scores is None:
            raise ValueError(f"set {s.id!r} has no scores: a win-rate needs judged candidates")
        if r.shape != (len(s.candidates),):
            raise ValueError(f"set {s.id!r}: {r.shape} rewards for {len(s.candidates)} candidates")
        utils.append(np.asarray(s.scores, dtype=np.float64))
        rs.append(r)
    picks = [pick(r) for r in rs]
    picked = np.array([u[k] for k, u in zip(picks, utils)])
    n = min(len(r) for r in rs)
    return {
        "win_rate": mean_interval(picked, n_boot, ci, seed),
        "ci": ci,
        "random": float(np.mean([u.mean() for u in utils])),
        "longest": float(np.mean([u[pick([len(c) for c in s.candidates])] for s, u in zip(sets, utils)])),
        "oracle": float(np.mean([u.max() for u in utils])),
        "curve": {k: float(np.mean([_best_of_k(r, u, k) for r, u in zip(rs, utils)])) for k in range(1, n + 1)},
        "oracle_curve": {k: float(np.mean([_best_of_k(u, u, k) for u in utils])) for k in range(1, n + 1)},
        "instructions": len(sets),
        "candidates": n,
        "picks": picks,  # the picked candidate of each set, in order (paired comparisons between models)
    }


def format_best_of_n(result: dict[str, Any]) -> str:
    """The result of `best_of_n` as a plain-text table for logs and the console."""
    w = result["win_rate"]
    lines = [
        f"best-of-{result['candidates']} on {result['instructions']} instructions (judged win-rate)",
        f"  reward model  {w['value']:.3f}  [{w['lo']:.3f}, {w['hi']:.3f}] {result['ci']:.0%} CI",
        f"  random        {result['random']:.3f}",
        f"  longest       {result['longest']:.3f}",
        f"  oracle        {result['oracle']:.3f}",
        "   k   model  oracle  random",
    ]
    lines += [f"  {k:>2}   {v:.3f}   {result['oracle_curve'][k]:.3f}   {result['random']:.3f}"
              for k, v in result["curve"].items()]
    return "\n".join(lines)


def score_best_of_n(scorer, path: str, seed: int = 0) -> dict[str, Any]:
    """A reward model's best-of-N picks on an AlpacaEval-BoN file (`scorer`: a mars Scorer): the
    result of `best_of_n` and, per instruction, the judged score of the pick (`picked_scores`, for
    paired comparisons across runs)."""
    from mars.data.candidates import load_alpacaeval_bon

    sets = load_alpacaeval_bon(path)
    rewards = scorer.responses([(s.prompt, c) for s in sets for c in s.candidates])
    bounds = np.cumsum([0] + [len(s.candidates) for s in sets])
    result = best_of_n(sets, [rewards[a:b] for a, b in zip(bounds[:-1], bounds[1:])], seed=seed)
    return result | {"ids": [s.id for s in sets],
                     "picked_scores": [s.scores[k] for s, k in zip(sets, result["picks"])]}
