"""The DataModule: owns D₀, the growing training set D^t and the held-out splits."""
from __future__ import annotations

import hashlib
import logging
from typing import Optional

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from mars.config import BackboneConfig, DataConfig
from mars.data.batching import PairBatchSampler, PairCollator, RowCollator
from mars.data.encoding import PairEncoder
from mars.data.records import PreferencePair
from mars.data.splits import load_splits
from mars.loop import MarsLoop, Scores
from mars.model.backbone import load_tokenizer
from mars.round_logging import log_round

log = logging.getLogger(__name__)


def pairs_digest(pairs: list[PreferencePair]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in pairs:
        h.update(p.id.encode()), h.update(p.content_hash().encode())
    return h.hexdigest()


class PreferenceDataModule(L.LightningDataModule):
    def __init__(self, data: DataConfig, backbone: BackboneConfig, loop: MarsLoop, seed: int = 0,
                 output_dir: Optional[str] = None):
        super().__init__()
        self.cfg, self.backbone_cfg, self.loop, self.seed = data, backbone, loop, seed
        self.output_dir = output_dir
        self.splits: dict[str, list[PreferencePair]] = {}
        self.truncated: dict[str, int] = {}
        self.epoch_pairs: list[PreferencePair] = []  # D^t of the epoch being trained
        self.last_report: dict = {}

    # ---- set-up: load, split, prepare D₀, tokenise held-out sets once
    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits:
            return
        tokenizer = load_tokenizer(self.backbone_cfg)
        self.collator = PairCollator(tokenizer.pad_token_id)
        self.encoder = PairEncoder(tokenizer, self.backbone_cfg.max_length, self.backbone_cfg.min_prompt_tokens,
                                   use_chat_template=self.backbone_cfg.chat_template == "auto"
                                   and bool(getattr(tokenizer, "chat_template", None)))
        self.splits = load_splits(self.cfg)
        self.loop.rank0_first = self._rank0_first
        self.loop.base = self._rank0_first(lambda: self.loop.augmenter.prepare(self.splits["train"]))
        self.encoded = {}
        for name, pairs in (("train", self.loop.base), ("val", self.splits["val"]), ("test", self.splits["test"])):
            before = self.encoder.truncated
            self.encoded[name] = self.encoder.encode(pairs)
            self.truncated[name] = self.encoder.truncated - before
        log.info("pairs: train %d, val %d, test %d; truncated to %d tokens (counted, never dropped): %s",
                 len(self.loop.base), len(self.splits["val"]), len(self.splits["test"]),
                 self.backbone_cfg.max_length, self.truncated)

    # ---- distributed helpers
    @property
    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer else (0, 1)

    def _rank0_first(self, fn):
        """Rank 0 runs `fn` first (filling caches), then the others: identical results, no duplicate work."""
        rank, world = self._rank_world
        if world == 1 or not torch.distributed.is_initialized():
            return fn()
        result = fn() if rank == 0 else None
        torch.distributed.barrier()
        return result if rank == 0 else fn()

    def _gather(self, obj) -> list:
        if self._rank_world[1] == 1 or not torch.distributed.is_initialized():
            return [obj]
        out = [None] * self._rank_world[1]
        torch.distributed.all_gather_object(out, obj)
        return out

    def _loader(self, encoded, batch_size: int, shuffle: bool, epoch: int = 0) -> DataLoader:
        rank, world = self._rank_world
        sampler = PairBatchSampler([e.length for e in encoded], batch_size, shuffle=shuffle, seed=self.seed,
                                   epoch=epoch, length_grouping=self.cfg.length_grouping, rank=rank,
                                   world_size=world)
        return DataLoader(encoded, batch_sampler=sampler, collate_fn=self.collator,
                          num_workers=self.cfg.num_workers, persistent_workers=False)

    # ---- the one narrow call into the model: margins of any pairs, identical on every rank
    def score(self, pairs: list[PreferencePair], features: bool = False) -> Scores:
        """Δ (and ψ = φ⁺ − φ⁻) of every pair. Each distinct sequence is scored once, alone, in
        length-sorted batches of rows (less padding than batches of pairs), shared across ranks."""
        row_of: dict[tuple[int, ...], int] = {}
        sides = np.array([[row_of.setdefault(tuple(ids), len(row_of)) for ids in (e.chosen, e.rejected)]
                          for e in self.encoder.encode(pairs)], dtype=np.int64).reshape(-1, 2)
        rows = [(j, list(ids)) for ids, j in row_of.items()]
        rank, world = self._rank_world
        sampler = PairBatchSampler([len(ids) for _, ids in rows], 2 * self.cfg.eval_batch_size, shuffle=False,
                                   rank=rank, world_size=world)
        loader = DataLoader(rows, batch_sampler=sampler, collate_fn=RowCollator(self.collator.pad_id))
        index, rewards, feats = self.trainer.lightning_module.score_rows(loader, features)
        reward_all, feat_all = np.zeros(len(rows)), None
        for idx, r, f in self._gather((index.numpy(), rewards.numpy(), None if feats is None else feats.numpy())):
            reward_all[idx] = r
            if f is not None:
                feat_all = np.zeros((len(rows), f.shape[1])) if feat_all is None else feat_all
                feat_all[idx] = f
        chosen, rejected = sides[:, 0], sides[:, 1]
        return Scores(reward_all[chosen] - reward_all[rejected],
                      None if feat_all is None else feat_all[chosen] - feat_all[rejected])

    # ---- the per-epoch round
    def train_dataloader(self) -> DataLoader:
        # Built here, not in on_train_epoch_start: Lightning calls this at the start of every epoch
        # (reload_dataloaders_every_n_epochs=1) *before* it sizes the epoch and draws its indices,
        # so the epoch iterates exactly the D^t of its round.
        epoch = self.trainer.current_epoch if self.trainer else 0
        report = self.loop.build_round(epoch, self.score) if self.trainer else {}
        self.epoch_pairs = self.loop.training_set()
        digests = set(self._gather(pairs_digest(self.epoch_pairs)))
        if len(digests) != 1:
            raise RuntimeError(f"ranks built different training sets at epoch {epoch}: {digests}")
        if report and self.trainer:
            report["digest"] = digests.pop()
            self.last_report = report
            fresh = report.get("round") and not report.get("resumed")
            log_round(self.trainer, report, self.loop.history[-1] if fresh else None, self.output_dir)
        return self._loader(self.encoder.encode(self.epoch_pairs), self.cfg.batch_size, shuffle=True, epoch=epoch)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.encoded["val"], self.cfg.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.encoded["test"], self.cfg.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def margins_by_id(self, predictions: list[dict], split: str = "test") -> dict[str, float]:
        """`trainer.predict` output (batches of pair_index, margin) as {pair id: Δ}."""
        pairs = self.splits[split]
        return {pairs[i].id: float(m) for batch in predictions
                for i, m in zip(batch["pair_index"].tolist(), batch["margin"].tolist())}

    def planned_optimizer_steps(self, trainer) -> int:
        """Steps of the whole run, with D^t growing as planned (the LR schedule's horizon)."""
        world, accumulate = trainer.world_size, trainer.accumulate_grad_batches
        batches = [int(np.ceil(self.loop.planned_size(e) / (self.cfg.batch_size * world)))
                   for e in range(trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1)]
        if isinstance(trainer.limit_train_batches, int):
            batches = [min(b, trainer.limit_train_batches) for b in batches]
        steps = sum(int(np.ceil(b / accumulate)) for b in batches)
        return min(steps, trainer.max_steps) if trainer.max_steps and trainer.max_steps > 0 else steps

    # ---- checkpoint entry: D^t and the loop's state
    def state_dict(self) -> dict:
        return {"loop": self.loop.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        # Only a resumed fit continues the loop; testing the best checkpoint keeps the final D^t.
        if self.trainer is None or self.trainer.state.fn == "fit":
            self.loop.load_state_dict(state["loop"])
