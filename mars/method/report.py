"""The report of a MARS round, built here alone: where the budget went, what it does to
curvature (docs/method.md §6), its flat metrics and its figure. Its keys are `Key`'s."""
from __future__ import annotations

from typing import Optional

import numpy as np


class Key:
    """The report keys read outside this module (the reporter, the run summary, the study)."""

    ROUND = "round"
    EPOCH = "epoch"
    WARMUP = "warmup"
    RESUMED = "resumed"
    TRAIN_PAIRS = "train_pairs"
    SYNTHETIC_ADDED = "synthetic_added"
    BUDGET_ALLOCATED = "budget_allocated"
    SHORTFALL = "shortfall"
    SHORTFALL_PAIRS = "shortfall_pairs"
    PAIRS_TOUCHED = "budget_pairs_touched"
    BUDGET_MAX = "budget_max"
    BY_ABS_DECILE = "budget_by_abs_margin_decile"
    MISRANKED = "budget_misranked_fraction"
    CURVATURE_RATIO = "curvature_ratio"
    MARGIN_STD = "base_margin_std"
    BASE_ACC = "base_acc"
    FISHER_BINS = "fisher_bins"
    FAILURES = "augment_failures"
    BUDGET_ON_FLIPPED = "budget_on_flipped_fraction"
    MISRANKED_FLIPPED = "misranked_among_flipped"
    MISRANKED_CLEAN = "misranked_among_clean"
    UNINFORMATIVE = "base_uninformative"
    DIGEST = "digest"
    SECONDS = "seconds"


def curvature_weight(margins: np.ndarray) -> np.ndarray:
    """w(Δ) = σ(Δ)(1 − σ(Δ)): the Bradley–Terry Hessian's weight on ψψᵀ, largest (1/4) at Δ = 0."""
    s = 1.0 / (1.0 + np.exp(-np.asarray(margins, dtype=np.float64)))
    return s * (1.0 - s)


def curvature_ratio(margins: np.ndarray, copies: np.ndarray) -> float:
    """Mean w over the training distribution (pair i weighted by its `copies` in D^t: itself plus
    its synthetic pairs, which inherit its margin) against the mean under uniform sampling."""
    w = curvature_weight(margins)
    return float(np.average(w, weights=copies) / w.mean())


def fisher_by_margin_bins(margins: np.ndarray, features: np.ndarray, bins: int = 5, dim: int = 16) -> list[dict]:
    """Figure 5: pairs sorted by |Δ| into equal-count bins; per bin the mean curvature weight and
    the smallest eigenvalue of the bin-averaged empirical Fisher (1/n)Σ w ψψᵀ.

    ψ = φ(x, y⁺) − φ(x, y⁻) are the reward head's input features, projected on their top `dim`
    singular directions (the full Fisher of a bin with fewer pairs than dimensions is singular).
    """
    margins = np.asarray(margins, dtype=np.float64)
    psi = np.asarray(features, dtype=np.float64)
    basis = np.linalg.svd(psi, full_matrices=False)[2][: min(dim, *psi.shape)]
    psi = psi @ basis.T
    w = curvature_weight(margins)
    rows = []
    for chunk in np.array_split(np.argsort(np.abs(margins), kind="stable"), bins):
        if len(chunk) == 0:
            continue
        fisher = (psi[chunk] * w[chunk, None]).T @ psi[chunk] / len(chunk)
        rows.append({"abs_margin_lo": float(np.abs(margins[chunk]).min()),
                     "abs_margin_hi": float(np.abs(margins[chunk]).max()),
                     "pairs": int(len(chunk)), "mean_curvature": float(w[chunk].mean()),
                     "fisher_min_eig": float(np.linalg.eigvalsh(fisher)[0])})
    return rows


def budget_by_decile(margins: np.ndarray, budget: np.ndarray, absolute: bool) -> list[float]:
    """Share of the round's budget on each decile of Δ (or |Δ|), lowest first."""
    key = np.abs(margins) if absolute else np.asarray(margins)
    total = max(1, int(budget.sum()))
    return [float(budget[c].sum() / total) for c in np.array_split(np.argsort(key, kind="stable"), 10)]


def allocation_report(margins: np.ndarray, budget: np.ndarray, copies: np.ndarray,
                      features: np.ndarray | None, bins: int, dim: int) -> dict:
    """Everything a round reports about its allocation, as plain numbers."""
    hist, edges = np.histogram(margins, bins=20)
    report = {
        "budget_total": int(budget.sum()),
        Key.PAIRS_TOUCHED: int((budget > 0).sum()),
        Key.BUDGET_MAX: int(budget.max(initial=0)),
        Key.MISRANKED: float(budget[margins < 0].sum() / max(1, budget.sum())),
        Key.BY_ABS_DECILE: budget_by_decile(margins, budget, absolute=True),
        "budget_by_margin_decile": budget_by_decile(margins, budget, absolute=False),
        "base_margin_mean": float(margins.mean()), Key.MARGIN_STD: float(margins.std()),
        Key.BASE_ACC: float((margins > 0).mean()),
        "margin_histogram": {"counts": hist.tolist(), "edges": edges.tolist()},
        Key.CURVATURE_RATIO: curvature_ratio(margins, copies),
        "mean_curvature_base": float(curvature_weight(margins).mean()),
    }
    if features is not None and len(features) >= bins:
        report[Key.FISHER_BINS] = fisher_by_margin_bins(margins, features, bins, dim)
    return report


def noise_report(margins: np.ndarray, added: np.ndarray, noisy: np.ndarray) -> dict:
    """Data with known flipped labels (robustness studies): where the budget went, and how well
    the margins single out flipped pairs (a model that learnt the true preference mis-ranks
    flipped pairs, by their recorded label, and few clean ones)."""
    misranked = margins < 0
    return {Key.BUDGET_ON_FLIPPED: float(added[noisy].sum() / max(1, added.sum())),
            "flipped_fraction": float(noisy.mean()),
            Key.MISRANKED_FLIPPED: float(misranked[noisy].mean()),
            Key.MISRANKED_CLEAN: float(misranked[~noisy].mean()) if (~noisy).any() else float("nan")}


def round_report(t: int, epoch: int, base: list, new: list, synthetic: list, budget: np.ndarray, scores,
                 augment_stats: dict[str, int], bins: int, dim: int) -> tuple[dict, dict]:
    """(the round's report, its per-pair detail: allocation, added, margins) from the pairs the
    augmenter delivered: it may deliver fewer variants than b_i, so the report says where the
    round's pairs went and keeps the intended allocation beside it."""
    added = np.bincount([p.meta["base_index"] for p in new], minlength=len(base))
    copies = np.ones(len(base))
    for p in synthetic:
        copies[p.meta["base_index"]] += 1
    report = {Key.ROUND: t, Key.EPOCH: epoch, Key.WARMUP: False, Key.TRAIN_PAIRS: len(base) + len(synthetic),
              Key.SYNTHETIC_ADDED: len(new), "synthetic_total": len(synthetic),
              Key.BUDGET_ALLOCATED: int(budget.sum()), Key.SHORTFALL: int(budget.sum()) - len(new),
              Key.SHORTFALL_PAIRS: int((added < budget).sum()), Key.UNINFORMATIVE: int(scores.uninformative.sum()),
              **{f"augment_{k}": v for k, v in augment_stats.items()},
              **allocation_report(scores.margins, added, copies, scores.features, bins, dim)}
    noisy = np.array([bool(p.meta.get("noise", {}).get("selected")) for p in base])
    if noisy.any():
        report.update(noise_report(scores.margins, added, noisy))
    return report, {"allocation": budget.tolist(), "added": added.tolist(), "margins": scores.margins.tolist()}


def scalars(report: dict) -> dict[str, float]:
    """The report's numbers as flat `round/...` metrics."""
    out = {}
    for key, value in report.items():
        if isinstance(value, (bool, int, float)) and key != Key.DIGEST:
            out[f"round/{key}"] = float(value)
    for d, share in enumerate(report.get(Key.BY_ABS_DECILE, [])):
        out[f"round/budget_abs_decile_{d}"] = share
    for row_i, row in enumerate(report.get(Key.FISHER_BINS, [])):
        out[f"round/fisher_min_eig_bin{row_i}"] = row["fisher_min_eig"]
        out[f"round/mean_curvature_bin{row_i}"] = row["mean_curvature"]
    return out


def allocation_figure(margins: np.ndarray, allocation: np.ndarray, title: str, added: Optional[np.ndarray] = None):
    """Synthetic pairs added against base margin, with the allocation b_i where the augmenter fell
    short of it (left); the base margins' histogram (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    added = allocation if added is None else added
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    short = added < allocation
    if short.any():
        ax1.scatter(margins[short], allocation[short], s=14, facecolors="none", edgecolors="tab:red",
                    label="allocated b_i (short)")
    ax1.scatter(margins, added, s=8, alpha=0.6, label="added")
    if short.any():
        ax1.legend(fontsize=8)
    ax1.set(xlabel="base margin Δ", ylabel="synthetic pairs", title=f"{title}: allocation")
    ax2.hist(margins, bins=40, color="tab:gray")
    ax2.axvline(0, color="tab:red", lw=1)
    ax2.set(xlabel="base margin Δ", ylabel="pairs", title=f"{title}: margins")
    fig.tight_layout()
    return fig
