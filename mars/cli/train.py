"""Train a reward model: `train(cfg)` behind `python train.py [group=choice ...] [key=value ...]`.

Compose the config → seed → instantiate data (with the MARS loop), model, callbacks, loggers and
trainer → fit → test the best checkpoint (and its best-of-N picks where `best_of_n` names an
AlpacaEval-BoN file) → export it as a `from_pretrained` folder → summary.
"""
from __future__ import annotations

import json
import logging
import os
import re
import warnings

import hydra
import lightning as L
from omegaconf import DictConfig

from mars.cli.runtime import (close_loggers, config_digest, instantiate_group, loggable_config, next_commands,
                              quiet_known_noise, resolve_ckpt_path)
from mars.config import ConfigError, validate
from mars.data.format import PairFormatter
from mars.evaluation.best_of_n import format_best_of_n, score_best_of_n
from mars.lightning.callbacks import FitGuard, RunSummary
from mars.lightning.datamodule import PreferenceDataModule
from mars.lightning.module import RewardModule
from mars.lightning.progress import progress_reporting
from mars.lightning.rounds import RoundReporter
from mars.lightning.strategy import full_module, load_best, strategy_scorer
from mars.method.loop import MarsLoop
from mars.model.backbone import check_packing, load_tokenizer, model_config
from mars.model.export import export_reward_model

log = logging.getLogger("mars.train")


def train(cfg: DictConfig) -> tuple[dict[str, float], dict]:
    """Fit, test and export as configured; returns the final metrics and the objects built.
    Every logger is closed, on failure too (a failed W&B run is finished with exit code 1)."""
    quiet_known_noise()
    loggers = instantiate_group(cfg.get("logger"))
    try:
        result = run(cfg, loggers)
    except BaseException:
        close_loggers(loggers, failed=True)
        raise
    close_loggers(loggers, failed=False)
    return result


def write_test_scores(path: str, datamodule: PreferenceDataModule, rewards) -> None:
    """The test pass's rewards per pair id; the pairs truncation made uninformative listed apart."""
    pairs = datamodule.splits["test"]
    index, r_chosen, r_rejected = rewards
    with open(path, "w") as f:
        json.dump({"ids": [pairs[i].id for i in index], "r_chosen": r_chosen.tolist(),
                   "r_rejected": r_rejected.tolist(), "uninformative": datamodule.uninformative.get("test", [])}, f)


def run(cfg: DictConfig, loggers: list) -> tuple[dict[str, float], dict]:
    """`train` with its loggers built."""
    typed = validate(cfg)
    if cfg.get("best_of_n") and not cfg.get("test"):
        raise ConfigError("best_of_n scores the best checkpoint after the test: it needs test=true")
    L.seed_everything(cfg.seed, workers=True)
    backbone, data = typed["backbone"], typed["data"]
    tokenizer = load_tokenizer(backbone)  # one tokenizer for the data and the model
    formatter = PairFormatter.of(tokenizer, backbone)
    if data.packing or data.prefix_sharing:  # before any model is built or data loaded
        check_packing(model_config(backbone, tokenizer).model_type, data.allow_unverified_packing)
    digest, summary = config_digest(cfg), RunSummary()
    loop = MarsLoop(typed["loop"], hydra.utils.instantiate(cfg.allocator), hydra.utils.instantiate(cfg.augmenter),
                    seed=cfg.seed)
    datamodule = PreferenceDataModule(data, formatter, loop, cfg.seed)
    rounds = RoundReporter(loop, formatter, data, cfg.paths.output_dir)  # first: a round is written before a crash
    callbacks = [rounds] + instantiate_group(cfg.get("callbacks")) + [FitGuard(digest), summary]
    # Not on a terminal (nohup, SLURM, `> train.log`): log lines instead of Lightning's bar
    progress, bar = progress_reporting(typed["progress"], callbacks, cfg.trainer.get("enable_progress_bar", True))
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks + progress,
                                                 enable_progress_bar=bar)
    model = RewardModule(backbone, typed["finetune"], typed["optim"], typed["loss"], cfg.seed, tokenizer,
                         feature_cache=os.path.join(cfg.paths.cache_dir, "features"),
                         epoch_batches=datamodule.train_batches)
    for logger in loggers:
        logger.log_hyperparams(loggable_config(cfg))

    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.log_dir, cfg.task_name, digest)
    if ckpt_path and trainer.checkpoint_callback:
        # Keep checkpointing where the resumed run did, so its best/last tracking carries on (and
        # Lightning's warning that this folder is not empty is what resuming means).
        folder = trainer.checkpoint_callback.dirpath = os.path.dirname(os.path.abspath(ckpt_path))
        warnings.filterwarnings("ignore", message=f"Checkpoint directory {re.escape(folder)} exists and is not empty")
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False)  # our own checkpoints
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    last = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""  # before test restores
    if cfg.get("test"):
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=False,
                     verbose=False)  # the summary below has the test metrics that matter
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
        if trainer.is_global_zero:  # per-pair rewards: paired comparisons and bootstrap across runs
            write_test_scores(os.path.join(cfg.paths.output_dir, "test_scores.json"), datamodule, model.test_rewards)
        if cfg.get("best_of_n"):
            result = score_best_of_n(strategy_scorer(trainer, formatter, data), cfg.best_of_n, cfg.seed)
            model.keep_features()
            metrics["best_of_n/win_rate"] = result["win_rate"]["value"]
            if trainer.is_global_zero:
                with open(os.path.join(cfg.paths.output_dir, "best_of_n.json"), "w") as f:
                    json.dump(result, f)
                log.info(format_best_of_n(result))
    if cfg.get("export"):
        if best:
            load_best(trainer, model, best)
        exportable = full_module(model)  # sharded: the full weights, gathered on rank 0
    if cfg.get("export") and trainer.is_global_zero:
        export_reward_model(exportable, os.path.join(cfg.paths.output_dir, "export"),
                            {"checkpoint": os.path.relpath(best, cfg.paths.output_dir) if best else None,
                             "metrics": metrics, "truncated": datamodule.truncated,
                             "uninformative": {k: len(v) for k, v in datamodule.uninformative.items()}},
                            adapter=typed["finetune"].export_adapter)
    if trainer.is_global_zero:
        os.makedirs(cfg.paths.output_dir, exist_ok=True)  # outside Hydra nothing else may have made it
        with open(os.path.join(cfg.paths.output_dir, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        out = cfg.paths.output_dir
        outputs = {"checkpoint": best, "last": last, "export": os.path.join(out, "export") if cfg.get("export") else "",
                   "round plots": os.path.join(out, "rounds") if os.path.isdir(os.path.join(out, "rounds")) else "",
                   "metrics": os.path.join(out, "metrics.json")}
        log.info(summary.text(out, metrics, loop.history, loop.cfg.warmup_epochs, outputs,
                              next_commands(cfg, outputs["export"] or best, trainer.max_epochs)))
    return metrics, {"model": model, "datamodule": datamodule, "trainer": trainer}
