"""The one scorer: rewards of pairs (or of single responses) for the MARS round, eval.py and the
test-score dump.

Each distinct token sequence is scored once, alone, in length-sorted batches of rows (less
padding than batches of pairs). Under prefix sharing (decoders, `data.prefix_sharing`) a pair is
one sequence instead, its common prefix computed once. Under a distributed context every rank scores its share of the
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

from mars.data.batch import (Collator, EncodedRow, PackedCollator, PairBatchSampler, PrefixSharedCollator,
                             TokenBudgetSampler, pair_tokens)
from mars.data.format import PairFormatter
from mars.data.records import PreferencePair
from mars.distributed import LOCAL, Distributed


@dataclass
class Scores:
    margins: np.ndarray  # Δ per pair
    r_chosen: np.ndarray
    r_rejected: np.ndarray
    features: Optional[np.ndarray] = None  # ψ = φ(x,y⁺) − φ(x,y⁻), the head's input features
    truncated: Optional[np.ndarray] = None  # (pairs, 2) bool: chosen, rejected side cut
    uninformative: Optional[np.ndarray] = None  # both sides the same ids after truncation: Δ = 0 by construction

    def __post_init__(self) -> None:
        if self.uninformative is None:  # scores from elsewhere (a test's, a study's): every pair informative
            self.uninformative = np.zeros(len(self.margins), dtype=bool)


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
                 device: Optional[torch.device] = None, module: Optional[torch.nn.Module] = None,
                 prefix_sharing: bool = False):
        self.formatter, self.batch_size, self.packing, self.max_tokens = formatter, batch_size, packing, max_tokens
        self.prefix_sharing = prefix_sharing
        self.collate = PackedCollator() if packing else Collator(pad_id)
        self.model, self.module, self.dist = model, module if module is not None else model, dist
        self.device = device
        self.time = ScoringTime()

    def rows(self, rows: list[list[int]], features: bool = False) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Reward (and φ) of every token row, in order; identical on every rank."""
        items = [EncodedRow(i, ids) for i, ids in enumerate(rows)]
        lengths = [len(ids) for ids in rows]
        if self.packing:
            sampler = TokenBudgetSampler(lengths, self.max_tokens, shuffle=False, rank=self.dist.rank,
                                         world_size=self.dist.world_size)
        else:
            sampler = PairBatchSampler(lengths, 2 * self.batch_size, shuffle=False, rank=self.dist.rank,
                                       world_size=self.dist.world_size)
        rewards, phi = self._score(items, sampler, self.collate, 1, features)
        return rewards[:, 0], None if phi is None else phi[:, 0]

    @torch.no_grad()  # not inference_mode: FSDP2 would keep its gathered weights as inference tensors
    def _score(self, items: list, sampler, collate, sides: int,
               features: bool) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """[items, sides] rewards (and [items, sides, hidden] φ) of items of `sides` sequences each,
        gathered from every rank."""
        started = time.perf_counter()
        module, model = self.module, self.model
        device = self.device or next(module.parameters()).device
        was_training = module.training
        module.eval()
        index, rewards, phis = [], [], []
        try:
            batches = DataLoader(items, batch_sampler=sampler, collate_fn=collate)
            # disable=None: tqdm draws on a terminal only, so a log file gets no redraws
            for batch in tqdm(batches, desc="scoring", unit="batch", leave=False,
                              disable=True if self.dist.rank != 0 or len(batches) < 2 else None):
                index.append(batch.pop("index").numpy())
                self.time.slots += batch["input_ids"].numel()
                self.time.tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else \
                    batch["input_ids"].numel()
                r, phi = model({k: v.to(device) for k, v in batch.items()})
                # a batch's sequences are column by column: every item's first, then every second
                rewards.append(r.float().cpu().numpy().reshape(sides, -1).T)
                if features:
                    phis.append(phi.float().cpu().numpy().reshape(sides, -1, phi.shape[-1]).transpose(1, 0, 2))
        finally:
            module.train(was_training)
        local = (np.concatenate(index) if index else np.empty(0, np.int64),
                 np.concatenate(rewards) if rewards else np.empty((0, sides)),
                 np.concatenate(phis) if phis else None)
        reward_all, phi_all = np.zeros((len(items), sides)), None
        for idx, r, phi in self.dist.gather(local):
            reward_all[idx] = r
            if phi is not None:
                phi_all = np.zeros((len(items), sides, phi.shape[-1])) if phi_all is None else phi_all
                phi_all[idx] = phi
        self.time.seconds += time.perf_counter() - started
        self.time.rows += len(items) * sides
        self.time.calls += 1
        return reward_all, phi_all

    def pairs(self, pairs: list[PreferencePair], features: bool = False) -> Scores:
        """Δ, r⁺, r⁻ (and ψ) of every pair, each distinct sequence scored once; which sides were
        truncated and which pairs that made uninformative."""
        encoded = self.formatter.encode(pairs)
        truncated = np.array([e.truncated for e in encoded], dtype=bool).reshape(-1, 2)
        uninformative = np.array([e.uninformative for e in encoded], dtype=bool)
        if self.prefix_sharing:  # each pair one sequence, its common prefix once
            sampler = TokenBudgetSampler([pair_tokens(e, True) for e in encoded], self.max_tokens, shuffle=False,
                                         rank=self.dist.rank, world_size=self.dist.world_size)
            rewards, phi = self._score(encoded, sampler, PrefixSharedCollator(), 2, features)
            r_chosen, r_rejected = rewards[:, 0], rewards[:, 1]
            r_rejected[uninformative] = r_chosen[uninformative]  # the same ids: the same reward, exactly
            psi = None if phi is None else phi[:, 0] - phi[:, 1]
        else:
            row_of: dict[tuple[int, ...], int] = {}
            sides = np.array([[row_of.setdefault(tuple(ids), len(row_of)) for ids in (e.chosen, e.rejected)]
                              for e in encoded], dtype=np.int64).reshape(-1, 2)
            rewards, phi = self.rows([list(ids) for ids in row_of], features)
            chosen, rejected = sides[:, 0], sides[:, 1]
            r_chosen, r_rejected = rewards[chosen], rewards[rejected]
            psi = None if phi is None else phi[chosen] - phi[rejected]
        return Scores(r_chosen - r_rejected, r_chosen, r_rejected, psi, truncated, uninformative)

    def responses(self, prompt_response: list[tuple[str, str]]) -> np.ndarray:
        """Reward of each (prompt, response), formatted as pairs are (best-of-N candidates)."""
        row_of: dict[tuple[int, ...], int] = {}
        index = []
        for p, r in prompt_response:
            ids, cut = self.formatter.sequence(p, r)
            self.formatter.truncated += cut  # counted per response, as pairs count per pair
            index.append(row_of.setdefault(tuple(ids), len(row_of)))
        return self.rows([list(ids) for ids in row_of])[0][np.asarray(index, dtype=np.int64)]
