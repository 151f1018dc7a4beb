"""The one scorer: rewards of pairs (or of single responses) for the MARS round, eval.py and the
test-score dump.

Each distinct token sequence is scored once, alone, in length-sorted batches of rows (less
padding than batches of pairs). Under a distributed strategy every rank scores its share of the
rows through the strategy's model (the wrapped or sharded one: every rank runs the same number
of batches) and the rewards are gathered, so every rank returns the same arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mars.data.batch import Collator, EncodedRow, PackedCollator, PairBatchSampler, TokenBudgetSampler
from mars.data.format import PairFormatter
from mars.data.records import PreferencePair


@dataclass
class Scores:
    margins: np.ndarray  # Δ per pair
    r_chosen: np.ndarray
    r_rejected: np.ndarray
    features: Optional[np.ndarray] = None  # ψ = φ(x,y⁺) − φ(x,y⁻), the head's input features


class Scorer:
    """`module`: a RewardModule scored directly (eval.py); or `trainer`: its strategy's model.
    `packing`: padding-free batches of up to `max_tokens` tokens instead of `batch_size` pairs."""

    def __init__(self, formatter: PairFormatter, pad_id: int, batch_size: int = 16, module=None, trainer=None,
                 packing: bool = False, max_tokens: int = 4096):
        if (module is None) == (trainer is None):
            raise ValueError("Scorer needs either a module or a trainer")
        self.formatter, self.batch_size, self.packing, self.max_tokens = formatter, batch_size, packing, max_tokens
        self.collate = PackedCollator() if packing else Collator(pad_id)
        self.module, self.trainer = module, trainer

    def _distributed(self) -> tuple[int, int]:
        if self.trainer is None or self.trainer.world_size == 1 or not torch.distributed.is_initialized():
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _gather(self, obj) -> list:
        rank, world = self._distributed()
        if world == 1:
            return [obj]
        out = [None] * world
        torch.distributed.all_gather_object(out, obj)
        return out

    @torch.no_grad()  # not inference_mode: FSDP2 would keep its gathered weights as inference tensors
    def rows(self, rows: list[list[int]], features: bool = False) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Reward (and φ) of every token row, in order; identical on every rank."""
        module = self.trainer.lightning_module if self.trainer else self.module
        model = self.trainer.strategy.model if self.trainer else self.module
        device = self.trainer.strategy.root_device if self.trainer else module.device
        rank, world = self._distributed()
        items = [EncodedRow(i, ids) for i, ids in enumerate(rows)]
        lengths = [len(ids) for ids in rows]
        if self.packing:
            sampler = TokenBudgetSampler(lengths, self.max_tokens, shuffle=False, rank=rank, world_size=world)
        else:
            sampler = PairBatchSampler(lengths, 2 * self.batch_size, shuffle=False, rank=rank, world_size=world)
        was_training = module.training
        module.eval()
        index, rewards, phis = [], [], []
        try:
            batches = DataLoader(items, batch_sampler=sampler, collate_fn=self.collate)
            for batch in tqdm(batches, desc="scoring", unit="batch", leave=False, disable=rank != 0 or len(batches) < 2):
                index.append(batch.pop("index").numpy())
                r, phi = model({k: v.to(device) for k, v in batch.items()})
                rewards.append(r.float().cpu().numpy())
                if features:
                    phis.append(phi.float().cpu().numpy())
        finally:
            module.train(was_training)
        local = (np.concatenate(index) if index else np.empty(0, np.int64),
                 np.concatenate(rewards) if rewards else np.empty(0),
                 np.concatenate(phis) if phis else None)
        reward_all, phi_all = np.zeros(len(rows)), None
        for idx, r, phi in self._gather(local):
            reward_all[idx] = r
            if phi is not None:
                phi_all = np.zeros((len(rows), phi.shape[1])) if phi_all is None else phi_all
                phi_all[idx] = phi
        return reward_all, phi_all

    def pairs(self, pairs: list[PreferencePair], features: bool = False) -> Scores:
        """Δ, r⁺, r⁻ (and ψ) of every pair, each distinct sequence scored once."""
        row_of: dict[tuple[int, ...], int] = {}
        sides = np.array([[row_of.setdefault(tuple(ids), len(row_of)) for ids in (e.chosen, e.rejected)]
                          for e in self.formatter.encode(pairs)], dtype=np.int64).reshape(-1, 2)
        rewards, phi = self.rows([list(ids) for ids in row_of], features)
        chosen, rejected = sides[:, 0], sides[:, 1]
        return Scores(rewards[chosen] - rewards[rejected], rewards[chosen], rewards[rejected],
                      None if phi is None else phi[chosen] - phi[rejected])

    def responses(self, prompt_response: list[tuple[str, str]]) -> np.ndarray:
        """Reward of each (prompt, response), formatted as pairs are (best-of-N candidates)."""
        row_of: dict[tuple[int, ...], int] = {}
        index = []
        for p, r in prompt_response:
            ids, cut = self.formatter.sequence(p, r)
            self.formatter.truncated += cut  # counted per response, as pairs count per pair
            index.append(row_of.setdefault(tuple(ids), len(row_of)))
        return self.rows([list(ids) for ids in row_of])[0][np.asarray(index, dtype=np.int64)]
