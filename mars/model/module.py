"""The LightningModule: a reward model, its Bradley–Terry loss, optimiser and metrics per stage."""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings

import lightning as L
import torch
from torchmetrics import MaxMetric, MeanMetric

from mars.config import BackboneConfig, LossConfig, OptimConfig
from mars.model.backbone import load_reward_model, load_tokenizer
from mars.model.frozen import FrozenPrefix
from mars.model.loss import bradley_terry_loss
from mars.model.metrics import PairwiseMetrics

STAGES = ("train", "val", "test")

# Epoch metrics come from torchmetrics objects that already gather every rank's pairs: Lightning's
# extra reduction (sync_dist) would only average identical values, and inside rank-0-only
# callbacks (progress bar) it deadlocks, so it is off and its reminder silenced.
warnings.filterwarnings("ignore", message=".*sync_dist=True.*when logging on epoch level.*")


class RewardModule(L.LightningModule):
    def __init__(self, backbone: BackboneConfig, optim: OptimConfig, loss: LossConfig, seed: int = 0,
                 feature_cache: str | None = None):
        """`feature_cache`: a folder keeping the fast modes' frozen features across runs."""
        super().__init__()
        self.save_hyperparameters()
        self.feature_cache = feature_cache
        self.backbone_cfg, self.optim_cfg, self.loss_cfg, self.seed = backbone, optim, loss, seed
        self.tokenizer = load_tokenizer(backbone)
        self.model = load_reward_model(backbone, self.tokenizer.pad_token_id)
        self.metrics = torch.nn.ModuleDict({f"{s}_pairs": PairwiseMetrics() for s in STAGES})
        self.losses = torch.nn.ModuleDict({f"{s}_loss": MeanMetric() for s in STAGES})
        self.val_acc_best = MaxMetric()
        self.prefix = FrozenPrefix(self.model, self.head(), backbone.train_layers) if backbone.train_layers >= 0 else None

    def setup(self, stage: str) -> None:
        cfg = self.backbone_cfg
        if self.prefix and self.feature_cache and self.prefix.cache_file is None:
            identity = json.dumps([cfg.name_or_path, cfg.tokenizer, cfg.random_init, cfg.config_overrides,
                                   self.seed if cfg.random_init else None, cfg.train_layers], sort_keys=True)
            name = hashlib.blake2b(identity.encode(), digest_size=8).hexdigest()
            rank = f".rank{self.global_rank}" if self.trainer.world_size > 1 else ""
            self.prefix.attach_cache(os.path.join(self.feature_cache, f"{name}{rank}.pt"))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.prefix:
            return self.prefix.forward(input_ids, attention_mask).squeeze(-1)
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1)

    def pair_rewards(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward over chosen and rejected rows; rewards split back into (r⁺, r⁻)."""
        rewards = self(batch["input_ids"], batch["attention_mask"]).float()
        return rewards.chunk(2)

    def head(self) -> torch.nn.Module:
        """The reward head (its input is φ(x, y), the features of the paper's linear theory)."""
        for name in ("score", "classifier"):
            if isinstance(getattr(self.model, name, None), torch.nn.Module):
                return getattr(self.model, name)
        raise AttributeError(f"{type(self.model).__name__} has no 'score' or 'classifier' head")

    @torch.inference_mode()
    def score_rows(self, batches, features: bool = False):
        """The MARS prediction pass: (row_index, reward, φ or None) for every sequence of `batches`
        (single rows, `RowCollator`); φ is the reward head's input."""
        was_training = self.training
        self.eval()
        index, rewards, phis = [], [], []
        captured = []
        hook = self.head().register_forward_pre_hook(lambda m, args: captured.append(args[0])) if features else None
        try:
            for batch in batches:
                batch = self.transfer_batch_to_device(batch, self.device, 0)
                index.append(batch["row_index"]), rewards.append(self(batch["input_ids"], batch["attention_mask"]).float())
                if features:
                    phi = captured.pop().float()
                    phis.append(phi[:, 0] if phi.dim() == 3 else phi)  # heads that pool themselves take [CLS]
        finally:
            if hook:
                hook.remove()
            self.train(was_training)
        if not index:
            return torch.empty(0, dtype=torch.long), torch.empty(0), None
        return torch.cat(index).cpu(), torch.cat(rewards).cpu(), torch.cat(phis).cpu() if features else None

    def on_train_epoch_start(self) -> None:
        self.train()  # from_pretrained returns eval mode, and Lightning keeps modes as it finds them
        # Dropout masks from (seed, epoch): a resumed run draws what an uninterrupted one would.
        torch.manual_seed(self.seed * 100_003 + self.current_epoch)

    def training_step(self, batch, batch_idx):
        r_chosen, r_rejected = self.pair_rewards(batch)
        margin = batch.get("target_margin", self.loss_cfg.target_margin)
        loss = bradley_terry_loss(r_chosen, r_rejected, margin, self.loss_cfg.center_rewards_coef)
        self.metrics["train_pairs"].update(r_chosen, r_rejected)
        self.losses["train_loss"].update(loss.detach(), r_chosen.numel())
        self.log("train/loss_step", loss, prog_bar=True)  # this rank's batch; the epoch mean is global
        return loss

    def _eval_step(self, stage: str, batch) -> None:
        r_chosen, r_rejected = self.pair_rewards(batch)
        loss = bradley_terry_loss(r_chosen, r_rejected, self.loss_cfg.target_margin)
        self.metrics[f"{stage}_pairs"].update(r_chosen, r_rejected)
        self.losses[f"{stage}_loss"].update(loss, r_chosen.numel())

    def validation_step(self, batch, batch_idx):
        self._eval_step("val", batch)

    def test_step(self, batch, batch_idx):
        self._eval_step("test", batch)

    def predict_step(self, batch, batch_idx):
        r_chosen, r_rejected = self.pair_rewards(batch)
        return {"pair_index": batch["pair_index"], "margin": r_chosen - r_rejected,
                "r_chosen": r_chosen, "r_rejected": r_rejected}

    def _log_stage(self, stage: str) -> dict[str, float]:
        values = self.metrics[f"{stage}_pairs"].compute()
        if self.losses[f"{stage}_loss"].update_count:
            values["loss"] = self.losses[f"{stage}_loss"].compute().item()
        self.metrics[f"{stage}_pairs"].reset(), self.losses[f"{stage}_loss"].reset()
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()})
        return values

    def _keep_features(self) -> None:
        """Fast modes: write the frozen features each stage added (held-out ones too), so that the
        next run of a sweep computes none."""
        if self.prefix:
            self.prefix.save()

    def on_train_epoch_end(self) -> None:
        self._log_stage("train")
        self._keep_features()

    def on_validation_epoch_end(self) -> None:
        self._keep_features()
        values = self._log_stage("val")
        if values and not self.trainer.sanity_checking:
            self.val_acc_best(values["acc"])
            self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def on_test_epoch_end(self) -> None:
        self._log_stage("test")
        self._keep_features()

    def total_steps(self) -> int:
        """Optimiser steps of the whole run; the DataModule knows them when the data grows."""
        planned = getattr(self.trainer.datamodule, "planned_optimizer_steps", None)
        steps = planned(self.trainer) if planned else None
        return max(1, int(steps or self.trainer.estimated_stepping_batches))

    def configure_optimizers(self):
        cfg = self.optim_cfg
        no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
        head = {n for n, _ in self.model.named_parameters() if n.startswith(("classifier", "score"))}
        groups: dict[tuple[float, float], list] = {}
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                lr = cfg.head_lr if (cfg.head_lr and name in head) else cfg.lr
                wd = 0.0 if name.endswith(no_decay) else cfg.weight_decay
                groups.setdefault((lr, wd), []).append(p)
        optimizer = torch.optim.AdamW(
            [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()],
            betas=tuple(cfg.betas), eps=cfg.eps, fused=True)  # one kernel per step (3x foreach on CPU)
        total = self.total_steps()
        warmup = int(cfg.warmup_ratio * total)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return {"linear": 1 - progress, "cosine": 0.5 * (1 + math.cos(math.pi * progress)),
                    "constant": 1.0}[cfg.schedule]

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
