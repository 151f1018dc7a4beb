"""Callbacks of mars's own (Lightning's stock ones are configured in conf/callbacks/).

`FitGuard`, `RunSummary` and the round reporter (mars/lightning/rounds.py) are part of every fit
(mars.cli.train adds them); `PairAudit` is configured.
"""
from __future__ import annotations

import json
import logging
import os
import re

import lightning as L

from mars.method.report import Key

log = logging.getLogger("mars.train")

DIGEST_KEY = "mars_config_digest"  # the checkpoint entry FitGuard writes and `ckpt_path=last` matches


class PairAudit(L.Callback):
    """Writes, per epoch and rank, the training set D^t the rank built and the pairs it trained on.

    `audit/epoch{e}_rank{r}.json` = {"train_set": [ids of D^t], "seen": [ids in batch order]}: an
    audit trail of what the model saw (and the check that each pair is seen once across ranks).
    """

    def __init__(self, dirpath: str):
        self.dirpath = dirpath
        self.seen: list[str] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        pairs = trainer.datamodule.epoch_pairs
        self.seen += [pairs[i].id for i in batch["index"].tolist()]

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        os.makedirs(self.dirpath, exist_ok=True)
        path = os.path.join(self.dirpath, f"epoch{trainer.current_epoch}_rank{trainer.global_rank}.json")
        with open(path, "w") as f:
            json.dump({"train_set": [p.id for p in trainer.datamodule.epoch_pairs], "seen": self.seen}, f)


class FitGuard(L.Callback):
    """What a fit must not get wrong, whatever the callbacks config:

    - every checkpoint carries the run's config digest (mars.cli.runtime.config_digest), which
      `ckpt_path=last` matches (mars.cli.runtime.resolve_ckpt_path);
    - training starts with every module in train mode.
    (That a restored D^t grows from this run's base pairs, the loop checks as it loads.)
    """

    def __init__(self, digest: str):
        self.digest = digest

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[DIGEST_KEY] = self.digest

    def on_fit_start(self, trainer, pl_module) -> None:
        # from_pretrained builds in eval mode; RewardModule trains every module (its
        # on_train_epoch_start), so Lightning's "modules in eval mode" check before it would be false.
        pl_module.train()


class LoadReport(logging.Filter):
    """Takes transformers' weight-loading table (a WARNING whenever a head starts fresh) off the
    log when it lists only MISSING and UNEXPECTED keys: the model line says those, from the
    network's `loading_info`. A table with any other status passes."""

    LOGGER = "transformers.modeling_utils"
    ROW = re.compile(r"^\s*(\S+)\s*\|\s*([A-Z]+)\s*\|")
    SAID = ("MISSING", "UNEXPECTED")

    def filter(self, record: logging.LogRecord) -> bool:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(record.msg))
        if "LOAD REPORT" not in text:
            return True
        rows = [m.groups() for m in map(self.ROW.match, text.splitlines()) if m and m.group(1) != "Key"]
        return any(status not in self.SAID for _, status in rows)  # mismatched shapes: transformers' words


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n:,}"


class RunSummary(L.Callback):
    """What a user reads about a run, in mars's words: the reward model in one line at fit start
    (in place of Lightning's layer table and transformers' weight-loading table), and at the end
    (`text`) the validation accuracy per epoch (kept in the checkpoint: a resumed run's summary
    covers every epoch), each round, the test metrics that matter and where the outputs are."""

    def __init__(self):
        self.val_acc: dict[int, float] = {}
        self.loading = LoadReport()

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":  # configure_model, right after this hook, loads the weights
            logging.getLogger(LoadReport.LOGGER).addFilter(self.loading)

    def on_fit_start(self, trainer, pl_module) -> None:
        logging.getLogger(LoadReport.LOGGER).removeFilter(self.loading)
        if trainer.is_global_zero:
            self.log_model(pl_module)

    def on_exception(self, trainer, pl_module, exception) -> None:
        logging.getLogger(LoadReport.LOGGER).removeFilter(self.loading)  # a load that failed says so itself

    def log_model(self, module) -> None:
        cfg, model = module.backbone_cfg, module.model
        total = sum(p.numel() for p in module.parameters())
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        net = getattr(model, "net", model)
        info = getattr(net, "loading_info", {})  # peft's wrapper hands the attribute through
        missing, unused = info.get("missing_keys", []), info.get("unexpected_keys", [])
        head = getattr(model, "head_path", "")
        if cfg.random_init or cfg.model_type:
            weights = "random weights (backbone.random_init)"
        elif missing:
            weights = "head initialised fresh"
        else:
            weights = "head loaded from the checkpoint"
        if unused:
            weights += f"; {len(unused)} checkpoint weights unused ({', '.join(unused[:3])})"
        name = os.path.basename(cfg.name_or_path.rstrip("/")) if os.path.isabs(cfg.name_or_path) else cfg.name_or_path
        log.info("reward model: %s (%s, %s), %s parameters, %s trainable (finetune=%s); %s", name,
                 type(getattr(model, "net", model)).__name__, "decoder" if model.decoder else "encoder",
                 _count(total), _count(trainable), module.finetune_cfg.name, weights)
        trunk = [k for k in missing if not (head and k.startswith(head + "."))]
        if trunk:
            log.warning("%d weights of the backbone are not in %s and start random (%s): check backbone.name_or_path",
                        len(trunk), cfg.name_or_path, ", ".join(trunk[:5]))

    def on_validation_end(self, trainer, pl_module) -> None:
        acc = trainer.callback_metrics.get("val/acc")
        if acc is not None and not trainer.sanity_checking:
            self.val_acc[trainer.current_epoch] = float(acc)

    def state_dict(self) -> dict:
        return {"val_acc": dict(self.val_acc)}

    def load_state_dict(self, state: dict) -> None:
        # Testing the best checkpoint restores its (earlier) state too: add epochs, never drop later ones.
        for epoch, acc in state.get("val_acc", {}).items():
            self.val_acc.setdefault(int(epoch), acc)

    def text(self, run_dir: str, metrics: dict[str, float], rounds: list[dict], warmup_epochs: int,
             outputs: dict[str, str], commands: list[str]) -> str:
        """The end-of-run summary: a few lines, top to bottom."""
        here = lambda path: os.path.relpath(path) if not os.path.relpath(path).startswith("..") else path  # noqa: E731
        best = max(self.val_acc, key=lambda e: (self.val_acc[e], -e), default=None)  # the first best
        epochs = ", ".join(f"{e}: {a:.3f}" + (" (warm-up)" if rounds and e < warmup_epochs else "")
                           + (" best" if e == best else "") for e, a in sorted(self.val_acc.items()))
        lines = [f"run summary ({here(run_dir)})", f"  validation accuracy by epoch: {epochs or 'none'}"]
        for r in rounds:
            deciles = r[Key.BY_ABS_DECILE]
            lines.append(f"  round {r[Key.ROUND]}: |D^t| = {r[Key.TRAIN_PAIRS]}, +{r[Key.SYNTHETIC_ADDED]} synthetic "
                         f"pairs ({r.get(Key.BUDGET_ALLOCATED, r[Key.SYNTHETIC_ADDED])} allocated) on "
                         f"{r[Key.PAIRS_TOUCHED]} base pairs: {deciles[0]:.0%} on the smallest-|Δ| tenth, "
                         f"{deciles[-1]:.0%} on the largest, {r[Key.MISRANKED]:.0%} on mis-ranked pairs")
        if not rounds:
            lines.append("  rounds: none (no augmentation budget: every epoch trained on D₀)")
        test = [f"{name} {metrics[f'test/{key}']:.3f}" for key, name in
                (("acc", "accuracy"), ("snr", "SNR"), ("auc", "AUC"), ("ece", "ECE")) if f"test/{key}" in metrics]
        if test:
            lines.append(f"  test (best checkpoint): {', '.join(test)}")
        width = max(map(len, outputs), default=0)
        lines += [f"  {name + ':':<{width + 1}} {here(path)}" for name, path in outputs.items() if path]
        lines += [f"  {'next:' if i == 0 else '     '} {c}" for i, c in enumerate(commands)]
        return "\n".join(lines)
