"""Writing a MARS round's report: JSON and a PNG in the run folder, and to every logger."""
from __future__ import annotations

import json
import logging
import os
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)


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


def scalars(report: dict) -> dict[str, float]:
    """The report's numbers as flat `round/...` metrics."""
    out = {}
    for key, value in report.items():
        if isinstance(value, (bool, int, float)) and key != "digest":
            out[f"round/{key}"] = float(value)
    for d, share in enumerate(report.get("budget_by_abs_margin_decile", [])):
        out[f"round/budget_abs_decile_{d}"] = share
    for row_i, row in enumerate(report.get("fisher_bins", [])):
        out[f"round/fisher_min_eig_bin{row_i}"] = row["fisher_min_eig"]
        out[f"round/mean_curvature_bin{row_i}"] = row["mean_curvature"]
    return out


def log_round(trainer, report: dict, detail: Optional[dict], output_dir: Optional[str]) -> None:
    """Rank 0 only: scalars to all loggers; histogram and plot where the logger takes them."""
    if trainer.global_rank != 0:
        return
    t = report["round"]
    if report.get("warmup"):
        log.info("epoch %d: warm-up on D₀ (%d pairs), no allocation yet", trainer.current_epoch, report["train_pairs"])
    elif report.get("resumed"):
        log.info("round %d: restored from the checkpoint (|D^t|=%d)", t, report["train_pairs"])
        return
    elif t:
        log.info("round %d: |D^t|=%d (+%d synthetic of %d allocated), added on lowest/highest |Δ| decile "
                 "%.3f/%.3f, mis-ranked %.3f, curvature ratio %.3f", t, report["train_pairs"],
                 report["synthetic_added"], report["budget_allocated"], report["budget_by_abs_margin_decile"][0],
                 report["budget_by_abs_margin_decile"][-1], report["budget_misranked_fraction"],
                 report["curvature_ratio"])
        if report["shortfall"]:
            log.warning("round %d: the augmenter delivered %d of the %d synthetic pairs allocated (shortfall %d, on "
                        "%d pairs; %d failed requests): too few distinct variants of short texts, or a failing "
                        "endpoint. D^t is smaller than planned; to close the gap, use an augmenter that yields "
                        "more variants or lower loop.budget", t, report["synthetic_added"],
                        report["budget_allocated"], report["shortfall"], report["shortfall_pairs"],
                        report.get("augment_failures", 0))
    metrics = scalars(report)
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
    if not detail:
        return
    margins, allocation = np.asarray(detail["margins"]), np.asarray(detail["allocation"])
    added = np.asarray(detail.get("added", detail["allocation"]))
    fig = allocation_figure(margins, allocation, f"round {t}", added)
    if output_dir:
        folder = os.path.join(output_dir, "rounds")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"round_{t:02d}.json"), "w") as f:
            json.dump({**report, "allocation": detail["allocation"], "added": added.tolist(),
                       "margins": detail["margins"]}, f)
        fig.savefig(os.path.join(folder, f"round_{t:02d}.png"), dpi=100)
    for logger in trainer.loggers:
        kind = type(logger).__name__
        if kind == "WandbLogger":
            import wandb

            table = wandb.Table(columns=["margin", "allocation", "added"],
                                data=np.c_[margins, allocation, added].tolist())
            logger.experiment.log({"round/margin_hist": wandb.Histogram(margins),
                                   "round/allocation_plot": wandb.Image(fig),
                                   "round/allocation_table": table, "trainer/global_step": trainer.global_step})
        elif kind == "TensorBoardLogger":
            logger.experiment.add_histogram("round/margins", margins, trainer.global_step)
            logger.experiment.add_figure("round/allocation", fig, trainer.global_step)
    import matplotlib.pyplot as plt

    plt.close(fig)
