"""Per-round diagnostics of method.md §6: where the budget went and what it does to curvature."""
from __future__ import annotations

import numpy as np


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


def round_report(margins: np.ndarray, budget: np.ndarray, copies: np.ndarray,
                 features: np.ndarray | None, bins: int, dim: int) -> dict:
    """Everything a round logs about its allocation, as plain numbers."""
    hist, edges = np.histogram(margins, bins=20)
    report = {
        "budget_total": int(budget.sum()),
        "budget_pairs_touched": int((budget > 0).sum()),
        "budget_max": int(budget.max(initial=0)),
        "budget_misranked_fraction": float(budget[margins < 0].sum() / max(1, budget.sum())),
        "budget_by_abs_margin_decile": budget_by_decile(margins, budget, absolute=True),
        "budget_by_margin_decile": budget_by_decile(margins, budget, absolute=False),
        "base_margin_mean": float(margins.mean()), "base_margin_std": float(margins.std()),
        "base_acc": float((margins > 0).mean()),
        "margin_histogram": {"counts": hist.tolist(), "edges": edges.tolist()},
        "curvature_ratio": curvature_ratio(margins, copies),
        "mean_curvature_base": float(curvature_weight(margins).mean()),
    }
    if features is not None and len(features) >= bins:
        report["fisher_bins"] = fisher_by_margin_bins(margins, features, bins, dim)
    return report
