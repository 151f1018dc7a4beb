"""The round reporter: binds the strategy's scorer to the MARS loop when a fit starts, and writes
each round's report (mars.method.report) to the log, to rounds/round_XX.json and .png in the run
folder and to every logger, in the form each logger takes (chosen by its class)."""
from __future__ import annotations

import json
import logging
import os
from typing import Optional, Sequence

import lightning as L
import numpy as np
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger

from mars.config import DataConfig
from mars.data.format import PairFormatter
from mars.lightning.strategy import strategy_scorer
from mars.method.loop import MarsLoop
from mars.method.report import Key, allocation_figure, scalars

log = logging.getLogger(__name__)


class RoundReporter(L.Callback):
    def __init__(self, loop: MarsLoop, formatter: PairFormatter, data: DataConfig, output_dir: Optional[str] = None):
        self.loop, self.formatter, self.data, self.output_dir = loop, formatter, data, output_dir
        self._reported: Optional[dict] = None

    def on_fit_start(self, trainer, pl_module) -> None:
        # The model the rounds score is the strategy's, known once the strategy has set it up.
        self.loop.scorer = strategy_scorer(trainer, self.formatter, self.data)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        report = self.loop.last_report  # built by this epoch's train_dataloader()
        if not report or report is self._reported:
            return
        self._reported = report
        fresh = report.get(Key.ROUND) and not report.get(Key.RESUMED)
        if trainer.global_rank == 0:
            write_round(report, self.loop.history[-1] if fresh else None, self.output_dir, trainer.loggers,
                        trainer.global_step, trainer.current_epoch)


def write_round(report: dict, detail: Optional[dict], output_dir: Optional[str], loggers: Sequence[Logger] = (),
                step: int = 0, epoch: int = 0) -> None:
    """Scalars to all loggers; the round's JSON and plot; histogram and plot where a logger takes them."""
    t = report[Key.ROUND]
    if report.get(Key.WARMUP):
        log.info("epoch %d: warm-up on D₀ (%d pairs), no allocation yet", epoch, report[Key.TRAIN_PAIRS])
    elif report.get(Key.RESUMED):
        log.info("round %d: restored from the checkpoint (|D^t|=%d)", t, report[Key.TRAIN_PAIRS])
        return
    elif t:
        log.info("round %d: |D^t|=%d (+%d synthetic of %d allocated), added on lowest/highest |Δ| decile "
                 "%.3f/%.3f, mis-ranked %.3f, curvature ratio %.3f", t, report[Key.TRAIN_PAIRS],
                 report[Key.SYNTHETIC_ADDED], report[Key.BUDGET_ALLOCATED], report[Key.BY_ABS_DECILE][0],
                 report[Key.BY_ABS_DECILE][-1], report[Key.MISRANKED], report[Key.CURVATURE_RATIO])
        if report[Key.SHORTFALL]:
            log.warning("round %d: the augmenter delivered %d of the %d synthetic pairs allocated (shortfall %d, on "
                        "%d pairs; %d failed requests): too few distinct variants of short texts, or a failing "
                        "endpoint. D^t is smaller than planned; to close the gap, use an augmenter that yields "
                        "more variants or lower loop.budget", t, report[Key.SYNTHETIC_ADDED],
                        report[Key.BUDGET_ALLOCATED], report[Key.SHORTFALL], report[Key.SHORTFALL_PAIRS],
                        report.get(Key.FAILURES, 0))
    metrics = scalars(report)
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
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
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            table = wandb.Table(columns=["margin", "allocation", "added"],
                                data=np.c_[margins, allocation, added].tolist())
            logger.experiment.log({"round/margin_hist": wandb.Histogram(margins),
                                   "round/allocation_plot": wandb.Image(fig),
                                   "round/allocation_table": table, "trainer/global_step": step})
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_histogram("round/margins", margins, step)
            logger.experiment.add_figure("round/allocation", fig, step)
    import matplotlib.pyplot as plt

    plt.close(fig)
