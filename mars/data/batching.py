"""Batches of pairs: one padded tensor with chosen rows first, then rejected (one forward); and
batches of single rows for the prediction pass.

`PairBatchSampler` shards across ranks itself (the trainer runs with
`use_distributed_sampler=False`): every rank draws the same seeded permutation, each pair lands
in exactly one batch of exactly one rank, and every rank gets the same number of batches, so an
epoch sees each pair once and DDP never waits on a missing batch (no padding by repetition).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from mars.data.encoding import EncodedPair


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded `input_ids` and `attention_mask` of token rows, as wide as the longest."""
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
    return input_ids, attention_mask


@dataclass
class PairCollator:
    """Stack chosen then rejected, pad once to the longest sequence of the batch.

    >>> batch = PairCollator(pad_id=0)([EncodedPair(7, [1, 2, 3], [1, 4])])
    >>> batch["input_ids"].tolist(), batch["pair_index"].tolist()
    ([[1, 2, 3], [1, 4, 0]], [7])
    """

    pad_id: int

    def __call__(self, pairs: Sequence[EncodedPair]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = pad_rows([p.chosen for p in pairs] + [p.rejected for p in pairs], self.pad_id)
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "pair_index": torch.tensor([p.index for p in pairs], dtype=torch.long)}


@dataclass
class RowCollator:
    """Single sequences `(row_index, ids)`, padded: the prediction pass scores rows, not pairs.

    >>> RowCollator(pad_id=0)([(4, [1, 2]), (0, [3])])["input_ids"].tolist()
    [[1, 2], [3, 0]]
    """

    pad_id: int

    def __call__(self, rows: Sequence[tuple[int, list[int]]]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = pad_rows([ids for _, ids in rows], self.pad_id)
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "row_index": torch.tensor([i for i, _ in rows], dtype=torch.long)}


class PairBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Seeded, optionally length-grouped batches of dataset positions for one rank.

    The N pairs are cut into `world_size * ceil(N / (batch_size * world_size))` batches of
    near-equal size (never above `batch_size`); rank r takes every world_size-th batch. Where so
    few pairs would leave a batch empty, there are fewer batches, one pair above `batch_size`.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, shuffle: bool, seed: int = 0,
                 epoch: int = 0, length_grouping: bool = True, rank: int = 0, world_size: int = 1):
        self.lengths = np.asarray(lengths)
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle, seed, epoch
        self.length_grouping, self.rank, self.world_size = length_grouping, rank, world_size
        n = len(self.lengths)
        if 0 < n < world_size:
            raise ValueError(f"{n} pairs cannot be shared by {world_size} ranks: each needs at least one")
        self.batches_per_rank = min(math.ceil(n / (batch_size * world_size)), n // world_size) if n else 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_rank

    def all_batches(self) -> list[np.ndarray]:
        """Every rank's batches, in rank-interleaved order (batch j belongs to rank j % world)."""
        n = len(self.lengths)
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.length_grouping:
            # Sort within mega-batches (shuffled runs keep randomness; eval sorts everything).
            mega = self.batch_size * self.world_size * 32 if self.shuffle else max(n, 1)
            order = np.concatenate([chunk[np.argsort(-self.lengths[chunk], kind="stable")]
                                    for chunk in np.array_split(order, math.ceil(n / mega))]) if n else order
        batches = np.array_split(order, self.batches_per_rank * self.world_size) if n else []
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.all_batches()[self.rank :: self.world_size]:
            yield batch.tolist()
