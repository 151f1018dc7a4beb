"""Plots of evaluation reports and studies: accuracy with intervals (the paper's Figure 4), margin
densities, budget against base margin per round, and curvature by margin bin (Figure 5)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def accuracy_bars(ax, names: list[str], rows: list[dict], title: str, ylabel: str = "held-out accuracy") -> None:
    """Bars of accuracy (or another rate) with their interval (rows: {"mean"|"value", "lo", "hi"})."""
    means = np.array([r.get("mean", r.get("value")) for r in rows])
    # An honest bootstrap interval may exclude the estimate: no negative bar ends.
    err = np.array([[max(0.0, m - r["lo"]) for m, r in zip(means, rows)], [max(0.0, r["hi"] - m) for m, r in zip(means, rows)]])
    ax.bar(names, means, yerr=err, capsize=4, color="tab:blue", alpha=0.8)
    los, his = [r["lo"] for r in rows], [r["hi"] for r in rows]  # whole whiskers in view
    ax.set(ylabel=ylabel, title=title, ylim=(max(0.0, min(los) - 0.03), min(1.0, max(his) + 0.02)))
    ax.tick_params(axis="x", rotation=30)


def margin_densities(ax, margins: dict[str, np.ndarray], title: str) -> None:
    """Density of Δ = r⁺ − r⁻ per model or method."""
    lo = min(np.percentile(m, 1) for m in margins.values())
    hi = max(np.percentile(m, 99) for m in margins.values())
    bins = np.linspace(lo, hi, 40)
    for name, m in margins.items():
        ax.hist(m, bins=bins, density=True, histtype="step", lw=1.5, label=name)
    ax.axvline(0, color="k", lw=0.8)
    ax.set(xlabel="margin Δ = r⁺ − r⁻", ylabel="density", title=title)
    ax.legend(fontsize=7)


def budget_vs_margin(ax, rounds: list[dict], title: str) -> None:
    """Synthetic pairs given to each base pair against its margin, one colour per round."""
    for r in rounds:
        ax.scatter(r["margins"], r.get("added", r["allocation"]), s=6, alpha=0.5, label=f"round {r['round']}")
    ax.set(xlabel="base margin Δ", ylabel="budget b_i", title=title)
    if rounds:
        ax.legend(fontsize=7)


def curvature_bins(ax, bins_by_name: dict[str, list[dict]], title: str) -> None:
    """Mean σ(Δ)(1−σ(Δ)) (solid) and smallest Fisher eigenvalue (dashed, right axis) per |Δ| bin."""
    right = ax.twinx()
    for name, rows in bins_by_name.items():
        x = np.arange(1, len(rows) + 1)
        line, = ax.plot(x, [r["mean_curvature"] for r in rows], marker="o", label=name)
        right.plot(x, [r["fisher_min_eig"] for r in rows], ls="--", color=line.get_color())
    ax.set(xlabel="|Δ| bin (smallest first)", ylabel="mean curvature weight", title=title)
    right.set_ylabel("λ_min of bin Fisher (dashed)")
    ax.legend(fontsize=7)


def study_plots(runs: list[dict], summary: dict, out: Path) -> list[Path]:
    """The study's figures, one panel per dataset."""
    datasets = list(summary)
    paths = []
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        methods = [m for m in summary[ds] if " - " not in m]
        accuracy_bars(ax, methods, [summary[ds][m]["acc"] for m in methods], ds)
    paths.append(_save(fig, out / "accuracy.png"))

    judged = [ds for ds in datasets if any("win_rate" in row for row in summary[ds].values())]
    if judged:
        fig, axes = plt.subplots(1, len(judged), figsize=(5 * len(judged), 4), squeeze=False)
        for ax, ds in zip(axes[0], judged):
            methods = [m for m, row in summary[ds].items() if " - " not in m and "win_rate" in row]
            accuracy_bars(ax, methods, [summary[ds][m]["win_rate"] for m in methods], f"{ds}: best-of-N",
                          "judged win-rate of the pick")
            anchors = next(r["bon_anchors"] for r in runs if r["dataset"] == ds and "bon_anchors" in r)
            for key, style in (("random", ":"), ("longest", "--"), ("oracle", "-")):
                ax.axhline(anchors[key], color="k", ls=style, lw=1, label=f"{key} {anchors[key]:.3f}")
            ax.set_ylim(0.0, anchors["oracle"] + 0.05)
            ax.legend(fontsize=7)
        paths.append(_save(fig, out / "best_of_n.png"))

    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        margins = {}
        for r in runs:
            if r["dataset"] == ds:
                margins.setdefault(r["method"], []).append(r["r_chosen"] - r["r_rejected"])
        margin_densities(ax, {m: np.concatenate(v) for m, v in margins.items()}, ds)
    paths.append(_save(fig, out / "margins.png"))

    first = {}
    for r in sorted(runs, key=lambda r: r["seed"]):
        if r["rounds"]:
            first.setdefault((r["dataset"], r["method"]), r)
    methods = sorted({m for _, m in first})
    if methods:
        fig, axes = plt.subplots(len(datasets), len(methods), figsize=(4 * len(methods), 3.2 * len(datasets)),
                                 squeeze=False)
        for i, ds in enumerate(datasets):
            for j, m in enumerate(methods):
                budget_vs_margin(axes[i][j], first[(ds, m)]["rounds"] if (ds, m) in first else [], f"{ds}: {m}")
        paths.append(_save(fig, out / "budget_vs_margin.png"))

        fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
        for ax, ds in zip(axes[0], datasets):
            bins = {m: first[(ds, m)]["rounds"][-1].get("fisher_bins", []) for m in methods if (ds, m) in first}
            curvature_bins(ax, {m: b for m, b in bins.items() if b}, f"{ds}: last round")
        paths.append(_save(fig, out / "curvature.png"))
    return paths


def eval_plots(results: dict[str, dict], scores: dict[str, np.ndarray], rounds: dict[str, list[dict]],
               out: Path) -> list[Path]:
    """An evaluation report's figures for one or several models side by side."""
    names = list(results)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    accuracy_bars(a1, names, [results[n]["metrics"]["acc"] for n in names], "accuracy (bootstrap interval)")
    margin_densities(a2, scores, "margin densities")
    paths = [_save(fig, out / "accuracy_margins.png")]
    with_rounds = {n: r for n, r in rounds.items() if r}
    if with_rounds:
        fig, axes = plt.subplots(2, len(with_rounds), figsize=(5 * len(with_rounds), 7), squeeze=False)
        for j, (name, rs) in enumerate(with_rounds.items()):
            budget_vs_margin(axes[0][j], rs, f"{name}: budget per round")
            curvature_bins(axes[1][j], {f"round {r['round']}": r.get("fisher_bins", []) for r in rs
                                        if r.get("fisher_bins")}, f"{name}: curvature by |Δ| bin")
        paths.append(_save(fig, out / "rounds.png"))
    return paths


def best_of_n_plots(results: dict[str, dict], out: Path) -> list[Path]:
    """Best-of-N: win-rate of each model's picks with its interval beside random, longest and
    oracle, and the best-of-k curves (the expected win-rate of the pick among k candidates)."""
    if not results:
        return []
    names = list(results)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    wins = [results[n]["win_rate"] for n in names]
    err = np.array([[max(0.0, w["value"] - w["lo"]) for w in wins], [max(0.0, w["hi"] - w["value"]) for w in wins]])
    a1.bar(names, [w["value"] for w in wins], yerr=err, capsize=4, color="tab:blue", alpha=0.8)
    first = results[names[0]]
    for key, style in (("random", ":"), ("longest", "--"), ("oracle", "-")):
        a1.axhline(first[key], color="k", ls=style, lw=1, label=f"{key} {first[key]:.3f}")
    a1.set(ylabel="judged win-rate of the pick", title="best-of-N picks (bootstrap interval)")
    a1.legend(fontsize=7), a1.tick_params(axis="x", rotation=30)
    for name in names:
        curve = results[name]["curve"]
        a2.plot([int(k) for k in curve], list(curve.values()), marker="o", ms=3, label=name)
    oracle = first["oracle_curve"]
    a2.plot([int(k) for k in oracle], list(oracle.values()), color="k", ls="-", lw=1, label="oracle")
    a2.axhline(first["random"], color="k", ls=":", lw=1, label="random")
    a2.set(xlabel="k candidates", ylabel="expected win-rate of the pick", title="best-of-k")
    a2.legend(fontsize=7)
    return [_save(fig, out / "best_of_n.png")]
