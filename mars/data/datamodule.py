"""The DataModule: owns D₀, the growing training set D^t and the held-out splits."""
from __future__ import annotations

import hashlib
import logging
from typing import Optional

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from mars.config import DataConfig
from mars.data.batch import Collator, PackedCollator, PairBatchSampler, TokenBudgetSampler
from mars.data.format import PairFormatter
from mars.data.records import PreferencePair
from mars.data.splits import check_no_heldout_leak, load_splits
from mars.loop import MarsLoop
from mars.round_logging import log_round

log = logging.getLogger(__name__)


def pairs_digest(pairs: list[PreferencePair]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in pairs:
        h.update(p.id.encode()), h.update(p.content_hash().encode())
    return h.hexdigest()


class PreferenceDataModule(L.LightningDataModule):
    def __init__(self, data: DataConfig, formatter: PairFormatter, loop: MarsLoop, seed: int = 0,
                 output_dir: Optional[str] = None):
        """`formatter`: pairs to token ids (its tokenizer is the model's); `loop`: the MARS round."""
        super().__init__()
        self.cfg, self.formatter, self.loop, self.seed = data, formatter, loop, seed
        self.collator = PackedCollator() if data.packing else Collator(formatter.tokenizer.pad_token_id)
        self.output_dir = output_dir
        self.splits: dict[str, list[PreferencePair]] = {}
        self.truncated: dict[str, int] = {}
        self.epoch_pairs: list[PreferencePair] = []  # D^t of the epoch being trained
        self.last_report: dict = {}

    # ---- set-up: load, split, prepare D₀, tokenise held-out sets once
    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits:
            return
        self.splits = load_splits(self.cfg)
        self.loop.on_rank0 = self._on_rank0
        self.loop.base = self._on_rank0(lambda: self.loop.augmenter.prepare(self.splits["train"]))
        self.encoded = {}
        for name, pairs in (("train", self.loop.base), ("val", self.splits["val"]), ("test", self.splits["test"])):
            before = self.formatter.truncated
            self.encoded[name] = self.formatter.encode(pairs)
            self.truncated[name] = self.formatter.truncated - before
        log.info("pairs: train %d, val %d, test %d; truncated to %d tokens (counted, never dropped): %s",
                 len(self.loop.base), len(self.splits["val"]), len(self.splits["test"]),
                 self.formatter.max_length, self.truncated)

    # ---- distributed helpers
    @property
    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer else (0, 1)

    def _on_rank0(self, fn):
        """Rank 0 runs `fn` (generating or reading its own cache) and every rank gets its result
        through torch.distributed: no shared filesystem between nodes is assumed."""
        rank, world = self._rank_world
        if world == 1 or not torch.distributed.is_initialized():
            return fn()
        result = [fn() if rank == 0 else None]
        torch.distributed.broadcast_object_list(result, src=0)
        return result[0]

    def _gather(self, obj) -> list:
        if self._rank_world[1] == 1 or not torch.distributed.is_initialized():
            return [obj]
        out = [None] * self._rank_world[1]
        torch.distributed.all_gather_object(out, obj)
        return out

    def _loader(self, encoded, batch_size: int, shuffle: bool, epoch: int = 0) -> DataLoader:
        rank, world = self._rank_world
        if self.cfg.packing:
            sampler = TokenBudgetSampler([len(e.chosen) + len(e.rejected) for e in encoded], self.cfg.max_tokens_per_batch,
                                         shuffle=shuffle, seed=self.seed, epoch=epoch, rank=rank, world_size=world)
        else:
            sampler = PairBatchSampler([e.length for e in encoded], batch_size, shuffle=shuffle, seed=self.seed,
                                       epoch=epoch, length_grouping=self.cfg.length_grouping, rank=rank,
                                       world_size=world)
        return DataLoader(encoded, batch_sampler=sampler, collate_fn=self.collator,
                          num_workers=self.cfg.num_workers, persistent_workers=False)

    def _batches_per_rank(self, pairs: int, world: int) -> int:
        """Training batches of an epoch of `pairs` pairs on each rank (as the samplers make them;
        packed: from D₀'s mean tokens per pair, as the budget fills)."""
        if self.cfg.packing:
            tokens = np.mean([len(e.chosen) + len(e.rejected) for e in self.encoded["train"]])
            return max(1, int(np.ceil(pairs * tokens / self.cfg.max_tokens_per_batch / world)))
        return min(int(np.ceil(pairs / (self.cfg.batch_size * world))), pairs // world)

    # ---- the per-epoch round
    def train_dataloader(self) -> DataLoader:
        # Built here, not in on_train_epoch_start: Lightning calls this at the start of every epoch
        # (reload_dataloaders_every_n_epochs=1) *before* it sizes the epoch and draws its indices,
        # so the epoch iterates exactly the D^t of its round.
        epoch = self.trainer.current_epoch if self.trainer else 0
        report = self.loop.build_round(epoch) if self.trainer else {}
        if report.get("synthetic_added"):  # no augmentation of a held-out pair is ever trained on
            check_no_heldout_leak(self.loop.synthetic, {"val": self.splits["val"], "test": self.splits["test"]})
        self.epoch_pairs = self.loop.training_set()
        digests = set(self._gather(pairs_digest(self.epoch_pairs)))
        if len(digests) != 1:
            raise RuntimeError(f"ranks built different training sets at epoch {epoch}: {digests}")
        if report and self.trainer:
            report["digest"] = digests.pop()
            self.last_report = report
            fresh = report.get("round") and not report.get("resumed")
            log_round(self.trainer, report, self.loop.history[-1] if fresh else None, self.output_dir)
        return self._loader(self.formatter.encode(self.epoch_pairs), self.cfg.batch_size, shuffle=True, epoch=epoch)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.encoded["val"], self.cfg.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.encoded["test"], self.cfg.eval_batch_size, shuffle=False)

    def planned_optimizer_steps(self) -> Optional[int]:
        """Optimiser steps of the whole run (the LR schedule's horizon): the sizes of D^t the loop
        delivered for this and earlier epochs, the planned sizes after, as the trainer limits them."""
        trainer = self.trainer
        if trainer is None or not self.loop.base:
            return None
        if not trainer.max_epochs or trainer.max_epochs < 0:
            return trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        delivered = {h["epoch"]: h["train_pairs"] for h in self.loop.history if "epoch" in h}
        if self.epoch_pairs:
            delivered[trainer.current_epoch] = len(self.epoch_pairs)
        limit, world = trainer.limit_train_batches, trainer.world_size
        steps = 0
        for epoch in range(trainer.max_epochs):
            batches = self._batches_per_rank(delivered.get(epoch, self.loop.planned_size(epoch)), world)
            batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
            steps += int(np.ceil(batches / trainer.accumulate_grad_batches))
        return min(steps, trainer.max_steps) if trainer.max_steps and trainer.max_steps > 0 else steps

    # ---- checkpoint entry: D^t and the loop's state
    def state_dict(self) -> dict:
        return {"loop": self.loop.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        # Only a resumed fit continues the loop; testing the best checkpoint keeps the final D^t.
        if self.trainer is None or self.trainer.state.fn == "fit":
            self.loop.load_state_dict(state["loop"])
