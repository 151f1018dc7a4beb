"""The DataModule: owns D₀, the growing training set D^t and the held-out splits.

Contract: `setup` loads and splits the data, hands the training split to the loop (which
prepares D₀) and tokenises the held-out splits once; every training epoch's loader is built from
the D^t the loop returns for that epoch. Pairs that truncation made uninformative (both sides the
same ids) are in no loader: they are counted and named per split (`uninformative`) instead. It
runs no collectives and never calls the model: the loop does both, through the collaborators it
was given.
"""
from __future__ import annotations

import logging
from typing import Optional

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from mars.config import DataConfig
from mars.data.batch import (Collator, PackedCollator, PairBatchSampler, PrefixSharedCollator, TokenBudgetSampler,
                             pair_tokens)
from mars.data.format import EncodedPair, PairFormatter, split_uninformative
from mars.data.records import PreferencePair
from mars.data.splits import load_splits
from mars.method.loop import MarsLoop

log = logging.getLogger(__name__)


class PreferenceDataModule(L.LightningDataModule):
    def __init__(self, data: DataConfig, formatter: PairFormatter, loop: MarsLoop, seed: int = 0):
        """`formatter`: pairs to token ids (its tokenizer is the model's); `loop`: the MARS rounds."""
        super().__init__()
        self.cfg, self.formatter, self.loop, self.seed = data, formatter, loop, seed
        self.collator = PrefixSharedCollator() if data.prefix_sharing else PackedCollator() if data.packing else \
            Collator(formatter.tokenizer.pad_token_id)
        self.token_budget = data.packing or data.prefix_sharing
        self.splits: dict[str, list[PreferencePair]] = {}
        self.truncated: dict[str, int] = {}
        self.uninformative: dict[str, list[str]] = {}  # ids per split (train: D₀, then each epoch's D^t)
        self.epoch_pairs: list[PreferencePair] = []  # D^t of the epoch being trained

    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits:
            return
        self.splits = load_splits(self.cfg)
        base = self.loop.start(self.splits["train"], {"val": self.splits["val"], "test": self.splits["test"]})
        self.encoded = {}
        for name, pairs in (("train", base), ("val", self.splits["val"]), ("test", self.splits["test"])):
            before = self.formatter.truncated
            self.encoded[name] = self.usable(name, pairs, self.formatter.encode(pairs))
            self.truncated[name] = self.formatter.truncated - before
        log.info("pairs: train %d, val %d, test %d; truncated to %d tokens (counted, never dropped): %s",
                 len(base), len(self.splits["val"]), len(self.splits["test"]), self.formatter.max_length,
                 self.truncated)

    def usable(self, split: str, pairs: list[PreferencePair], encoded: list[EncodedPair]) -> list[EncodedPair]:
        """The encoded pairs a loss and an accuracy can use; the others counted and named."""
        kept, left_out = split_uninformative(encoded)
        self.uninformative[split] = [pairs[i].id for i in left_out]
        if left_out:
            other = "backbone.truncation=keep_start" if self.formatter.truncation == "keep_end" else \
                "backbone.truncation=keep_end"
            log.warning("%s: %d of %d pairs are the same token ids on both sides after truncation to %d tokens "
                        "(what told them apart was cut); they are left out of the loss and of accuracy, e.g. %s. "
                        "Keep them with a larger backbone.max_length or %s", split, len(left_out), len(pairs),
                        self.formatter.max_length, ", ".join(self.uninformative[split][:3]), other)
        return kept

    @property
    def _rank_world(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)

    def _loader(self, encoded, batch_size: int, shuffle: bool, epoch: int = 0) -> DataLoader:
        rank, world = self._rank_world
        if self.token_budget:
            sampler = TokenBudgetSampler([pair_tokens(e, self.cfg.prefix_sharing) for e in encoded],
                                         self.cfg.max_tokens_per_batch,
                                         shuffle=shuffle, seed=self.seed, epoch=epoch, rank=rank, world_size=world)
        else:
            sampler = PairBatchSampler([e.length for e in encoded], batch_size, shuffle=shuffle, seed=self.seed,
                                       epoch=epoch, length_grouping=self.cfg.length_grouping, rank=rank,
                                       world_size=world)
        return DataLoader(encoded, batch_sampler=sampler, collate_fn=self.collator,
                          num_workers=self.cfg.num_workers, persistent_workers=False)

    def train_dataloader(self) -> DataLoader:
        # The round is asked for here, not in on_train_epoch_start: Lightning calls this at the
        # start of every epoch (reload_dataloaders_every_n_epochs=1) *before* it sizes the epoch
        # and draws its indices, so the epoch iterates exactly the D^t of its round.
        epoch = self.trainer.current_epoch if self.trainer else 0
        self.epoch_pairs = self.loop.next_training_set(epoch) if self.trainer else self.loop.training_set()
        encoded = self.usable("train", self.epoch_pairs, self.formatter.encode(self.epoch_pairs))
        return self._loader(encoded, self.cfg.batch_size, shuffle=True, epoch=epoch)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.encoded["val"], self.cfg.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.encoded["test"], self.cfg.eval_batch_size, shuffle=False)

    def train_batches(self, epochs: int, world: int) -> list[int]:
        """Training batches per rank of each epoch, as the samplers make them: from the sizes of
        D^t delivered so far and the loop's planned sizes after (packed: from D₀'s mean tokens
        per pair, as the budget fills)."""
        delivered = {h["epoch"]: h["train_pairs"] for h in self.loop.history if "epoch" in h}
        if self.epoch_pairs and self.trainer:
            delivered[self.trainer.current_epoch] = len(self.epoch_pairs)
        tokens = np.mean([pair_tokens(e, self.cfg.prefix_sharing) for e in self.encoded["train"]]) \
            if self.token_budget else 0
        batches = []
        for epoch in range(epochs):
            pairs = delivered.get(epoch, self.loop.planned_size(epoch))
            if self.token_budget:
                batches.append(max(1, int(np.ceil(pairs * tokens / self.cfg.max_tokens_per_batch / world))))
            else:
                batches.append(min(int(np.ceil(pairs / (self.cfg.batch_size * world))), pairs // world))
        return batches

    # ---- checkpoint entry: D^t and the loop's state
    def state_dict(self) -> dict:
        return {"loop": self.loop.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        # Only a resumed fit continues the loop; testing the best checkpoint keeps the final D^t.
        if self.trainer is None or self.trainer.state.fn == "fit":
            self.loop.load_state_dict(state["loop"])
