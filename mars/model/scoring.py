"""The one scorer: rewards of pairs (or of single responses) for the MARS round, eval.py and the
test-score dump.

Each distinct token sequence is scored once, alone, in length-sorted batches of rows (less
padding than batches of pairs). Under a distributed context every rank scores its share of the
rows through the model it is given (under a strategy, the wrapped or sharded one: every rank runs
the same number of batches) and the rewards are gathered, so every rank returns the same arrays.
Plain torch: the Lightning glue hands it the strategy's model (mars/lightning/strategy.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mars.data.batch import Collator, EncodedRow, PackedCollator, PairBatchSampler, TokenBudgetSampler
from mars.data.format import PairFormatter
from mars.data.records import PreferencePair
from mars.distributed import LOCAL, Distributed


@dataclass
class Scores:
    margins: np.ndarray  # Δ per pair
    r_chosen: np.ndarray
    r_rejected: np.ndarray
    features: Optional[np.ndarray] = None  # ψ = φ(x,y⁺) − φ(x,y⁻), the head's input features


@dataclass
class ScoringTime:
    """What the scorer spent, cumulative: benchmarks read it instead of wrapping the scorer."""

    seconds: float = 0.0
    rows: int = 0
    calls: int = 0
    tokens: int = 0  # real tokens scored
    slots: int = 0  # token positions run, padding included (packed batches: none)


class Scorer:
    """`model`: called on a padded or packed batch, returns (rewards, φ) per sequence (a
    RewardModel, a RewardModule, or the strategy's wrapper around one); `module`: whose train/eval
    mode the pass switches (default: `model`); `dist`: every rank scores its share, all get all.
    `packing`: padding-free batches of up to `max_tokens` tokens instead of `batch_size` pairs."""

    def __init__(self, formatter: PairFormatter, pad_id: int, model: torch.nn.Module, batch_size: int = 16,
                 packing: bool = False, max_tokens: int = 4096, dist: Distributed = LOCAL,
                 device: Optional[torch.device] = None, module: Optional[torch.nn.Module] = None):
        self.formatter, self.batch_size, self.packing, self.max_tokens = formatter, batch_size, packing, max_tokens
        self.collate = PackedCollator() if packing else Collator(pad_id)
        self.model, self.module, self.dist = model, module if module is not None else model, dist
        self.device = device
        self.time = ScoringTime()

    @torch.no_grad()  # not inference_mode: FSDP2 would keep its gathered weights as inference tensors
    def rows(self, rows: list[list[int]], features: bool = False) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Reward (and φ) of every token row, in order; identical on every rank."""
        started = time.perf_counter()
        module, model = self.module, self.model
        device = self.device or next(module.parameters()).device
        rank, world = self.dist.rank, self.dist.world_size
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
                self.time.slots += batch["input_ids"].numel()
                self.time.tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else \
                    batch["input_ids"].numel()
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
        for idx, r, phi in self.dist.gather(local):
            reward_all[idx] = r
            if phi is not None:
                phi_all = np.zeros((len(rows), phi.shape[1])) if phi_all is None else phi_all
                phi_all[idx] = phi
        self.time.seconds += time.perf_counter() - started
        self.time.rows += len(rows)
        self.time.calls += 1
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
