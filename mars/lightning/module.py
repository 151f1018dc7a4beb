"""The LightningModule: the reward model, its Bradley–Terry loss, optimiser and metrics per stage."""
from __future__ import annotations

import math
import warnings
from typing import Callable, Optional

import lightning as L
import numpy as np
import torch
from torchmetrics import MaxMetric, MeanMetric

from mars.config import BackboneConfig, ConfigError, FinetuneConfig, LossConfig, OptimConfig
from mars.model.backbone import load_tokenizer
from mars.model.build import build_reward_model
from mars.model.loss import bradley_terry_loss
from mars.model.metrics import PairwiseMetrics
from mars.model.reward_model import RewardModel
from mars.model.sharding import is_sharded, shard

STAGES = ("train", "val", "test")
# The hyperparameters in a checkpoint are these dataclasses: let weights-only loading (sharded
# checkpoints' metadata) accept them.
torch.serialization.add_safe_globals([BackboneConfig, FinetuneConfig, OptimConfig, LossConfig])

# Epoch metrics come from torchmetrics objects that already gather every rank's pairs: Lightning's
# extra reduction (sync_dist) would only average identical values, and inside rank-0-only
# callbacks (progress bar) it deadlocks, so it is off and its reminder silenced.
warnings.filterwarnings("ignore", message=".*sync_dist=True.*when logging on epoch level.*")


class RewardModule(L.LightningModule):
    def __init__(self, backbone: BackboneConfig, finetune: FinetuneConfig, optim: OptimConfig, loss: LossConfig,
                 seed: int = 0, tokenizer=None, feature_cache: Optional[str] = None,
                 epoch_batches: Optional[Callable[[int, int], list[int]]] = None):
        """`tokenizer`: shared with the DataModule (loaded from `backbone` when not given);
        `feature_cache`: a folder keeping the fast modes' frozen features across runs;
        `epoch_batches(epochs, world)`: training batches per rank of each epoch as the data
        delivers them (the DataModule's `train_batches`): the LR schedule's horizon."""
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer", "feature_cache", "epoch_batches"])
        self.backbone_cfg, self.finetune_cfg, self.optim_cfg, self.loss_cfg = backbone, finetune, optim, loss
        self.seed, self.feature_cache, self.epoch_batches = seed, feature_cache, epoch_batches
        self.tokenizer = tokenizer or load_tokenizer(backbone)
        self.model: Optional[RewardModel] = None  # built in configure_model(), inside the strategy
        self.metrics = torch.nn.ModuleDict({f"{s}_pairs": PairwiseMetrics() for s in STAGES})
        self.losses = torch.nn.ModuleDict({f"{s}_loss": MeanMetric() for s in STAGES})
        self.val_acc_best = MaxMetric()
        # The best so far spans epochs: its state goes into the checkpoint, so a resumed run's
        # val/acc_best covers the epochs before the resume too. (Per-stage metrics restart every
        # epoch and stay out: their state at a checkpoint is one rank's, mid-epoch.)
        self.val_acc_best.persistent(True)
        self.horizon_steps = 1
        self.test_rewards: Optional[tuple[np.ndarray, ...]] = None  # (index, r⁺, r⁻) of the last test

    def configure_model(self) -> None:
        """Build the reward model (under the strategy's init context) and apply the finetune policy."""
        if self.model is not None:
            return
        cfg = self.backbone_cfg
        self.model = build_reward_model(cfg, self.finetune_cfg, self.tokenizer)
        mesh = self.device_mesh  # set by ModelParallelStrategy (FSDP2)
        if mesh is not None:
            if self.model.trunk is not None:
                raise ConfigError(f"finetune={self.finetune_cfg.name} caches features per process and is not sharded: "
                                 "use trainer=ddp (or ddp_sim) with it")
            shard(self.model, mesh["data_parallel"], self.trainer.precision)
        if self.model.trunk is not None and self.feature_cache:
            world = self.trainer.world_size if self._trainer else 1
            identity = [cfg.name_or_path, cfg.model_type, cfg.tokenizer, cfg.random_init, cfg.config_overrides,
                        self.seed if cfg.random_init or cfg.model_type else None]
            self.model.trunk.attach_cache(self.feature_cache, identity,
                                          f".rank{self.global_rank}" if world > 1 else "")

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(reward of every sequence, φ of every sequence) of a padded or packed batch."""
        return self.model(batch)

    def pair_rewards(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward over chosen and rejected sequences; rewards split back into (r⁺, r⁻)."""
        rewards, _ = self(batch)
        return rewards.float().chunk(2)

    def target_margin(self, batch) -> float | torch.Tensor:
        """Each pair's own margin where the data gives one, else the loss config's."""
        if "margin" not in batch:
            return self.loss_cfg.target_margin
        return torch.nan_to_num(batch["margin"].float(), nan=self.loss_cfg.target_margin)

    def on_train_epoch_start(self) -> None:
        self.train()  # from_pretrained returns eval mode, and Lightning keeps modes as it finds them
        # Dropout masks from (seed, epoch): a resumed run draws what an uninterrupted one would.
        torch.manual_seed(self.seed * 100_003 + self.current_epoch)
        self.horizon_steps = self.total_steps()  # this epoch's D^t is built: the horizon is known

    def training_step(self, batch, batch_idx):
        r_chosen, r_rejected = self.pair_rewards(batch)
        loss = bradley_terry_loss(r_chosen, r_rejected, self.target_margin(batch), self.loss_cfg.center_rewards_coef)
        self.metrics["train_pairs"].update(r_chosen, r_rejected)
        self.losses["train_loss"].update(loss.detach(), r_chosen.numel())
        self.log("train/loss_step", loss, prog_bar=True)  # this rank's batch; the epoch mean is global
        return loss

    def _eval_step(self, stage: str, batch) -> None:
        r_chosen, r_rejected = self.pair_rewards(batch)
        loss = bradley_terry_loss(r_chosen, r_rejected, self.target_margin(batch))
        self.metrics[f"{stage}_pairs"].update(r_chosen, r_rejected, batch["index"])
        self.losses[f"{stage}_loss"].update(loss, r_chosen.numel())

    def validation_step(self, batch, batch_idx):
        self._eval_step("val", batch)

    def test_step(self, batch, batch_idx):
        self._eval_step("test", batch)

    def _log_stage(self, stage: str) -> dict[str, float]:
        values = self.metrics[f"{stage}_pairs"].compute()
        if self.losses[f"{stage}_loss"].update_count:
            values["loss"] = self.losses[f"{stage}_loss"].compute().item()
        self.metrics[f"{stage}_pairs"].reset(), self.losses[f"{stage}_loss"].reset()
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()})
        return values

    def keep_features(self) -> None:
        """Fast modes: write the frozen features the run added (held-out ones too), so that the
        next run of a sweep computes none. At the end of fit and test only: the file holds every
        distinct sequence, and a kill loses only what a rerun computes again."""
        if self.model.trunk is not None:
            self.model.trunk.save()

    def on_train_epoch_end(self) -> None:
        self._log_stage("train")

    def on_fit_end(self) -> None:
        self.keep_features()

    def on_validation_epoch_end(self) -> None:
        values = self._log_stage("val")
        if values and not self.trainer.sanity_checking:
            self.val_acc_best(values["acc"])
            self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def on_test_epoch_end(self) -> None:
        # The test pass's own rewards, every rank's: test_scores.json needs no second pass.
        self.test_rewards = tuple(t.cpu().numpy() for t in self.metrics["test_pairs"].rewards())
        self._log_stage("test")
        self.keep_features()

    def total_steps(self) -> int:
        """Optimiser steps of the whole run, from the data as the loop delivers it, as the
        trainer's limits cut it (Lightning's own estimate where the data gives no sizes)."""
        trainer, steps = self.trainer, None
        max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        if self.epoch_batches is not None and trainer.max_epochs and trainer.max_epochs > 0:
            limit = trainer.limit_train_batches
            steps = sum(int(np.ceil((min(b, limit) if isinstance(limit, int) else int(b * limit))
                                    / trainer.accumulate_grad_batches))
                        for b in self.epoch_batches(trainer.max_epochs, trainer.world_size))
            steps = min(steps, max_steps) if max_steps else steps
        elif self.epoch_batches is not None:
            steps = max_steps
        return max(1, int(steps or trainer.estimated_stepping_batches))

    def configure_optimizers(self):
        cfg = self.optim_cfg
        head = {id(p) for p in self.model.head.parameters()}
        groups: dict[tuple[float, float], list] = {}
        # The parameters as the strategy hands them (sharded under FSDP); weight decay by shape:
        # matrices decay, biases and norms do not, for every architecture and for LoRA.
        for p in self.trainer.model.parameters():
            if p.requires_grad:
                lr = cfg.head_lr if (cfg.head_lr and id(p) in head) else cfg.lr
                groups.setdefault((lr, cfg.weight_decay if p.ndim >= 2 else 0.0), []).append(p)
        # Lightning's mixed-precision plugin refuses gradient clipping with a fused optimiser
        fused = "mixed" not in str(self.trainer.precision) and all(
            p.device.type in ("cpu", "cuda") and not is_sharded(p) for ps in groups.values() for p in ps)
        optimizer = torch.optim.AdamW(
            [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()],
            betas=tuple(cfg.betas), eps=cfg.eps, fused=fused)  # one kernel per step (3x foreach on CPU)
        self.horizon_steps = self.total_steps()

        def factor(step: int) -> float:
            total = self.horizon_steps
            warmup = int(cfg.warmup_ratio * total)
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return {"linear": 1 - progress, "cosine": 0.5 * (1 + math.cos(math.pi * progress)),
                    "constant": 1.0}[cfg.schedule]

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
