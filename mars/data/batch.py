"""One batch format for training, the prediction pass and evaluation, and the batch sampler.

A batch holds items (pairs, or the single rows of the prediction pass): the first sequence of
every item, then the second, … so one forward scores them all and the rewards split back into
per-item columns. `Collator` pads them once to the longest; `PackedCollator` (`data.packing`)
concatenates them into one row with position ids that restart at 0 and no padding at all, and
`TokenBudgetSampler` fills such batches up to a token budget instead of a pair count.

`PairBatchSampler` shards across ranks itself (the trainer runs with
`use_distributed_sampler=False`): every rank draws the same seeded permutation, each item lands
in exactly one batch of exactly one rank, and every rank gets the same number of batches, so an
epoch sees each pair once and DDP never waits on a missing batch (no padding by repetition).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from mars.data.format import EncodedPair


@dataclass
class EncodedRow:
    """One token sequence to score alone (the prediction pass scores each distinct row once)."""

    index: int
    ids: list[int]
    margin: Optional[float] = None

    @property
    def length(self) -> int:
        return len(self.ids)


def sequences(item: EncodedPair | EncodedRow) -> tuple[list[int], ...]:
    return (item.ids,) if isinstance(item, EncodedRow) else (item.chosen, item.rejected)


def with_items(batch: dict[str, torch.Tensor], items) -> dict[str, torch.Tensor]:
    """`index`: each item's place in its set; `margin`: each pair's own target margin (NaN where
    it has none), for the loss."""
    batch["index"] = torch.tensor([item.index for item in items], dtype=torch.long)
    if any(item.margin is not None for item in items):
        batch["margin"] = torch.tensor([math.nan if item.margin is None else item.margin for item in items])
    return batch


@dataclass
class Collator:
    """Stack the items' sequences column by column (pairs: chosen rows, then rejected), pad once.

    `margin` (a pair's own target margin, NaN where it has none) travels in the batch to the loss.

    >>> batch = Collator(pad_id=0)([EncodedPair(7, [1, 2, 3], [1, 4])])
    >>> batch["input_ids"].tolist(), batch["index"].tolist()
    ([[1, 2, 3], [1, 4, 0]], [7])
    >>> Collator(pad_id=0)([EncodedRow(4, [1, 2]), EncodedRow(0, [3])])["input_ids"].tolist()
    [[1, 2], [3, 0]]
    """

    pad_id: int

    def __call__(self, items: Sequence[EncodedPair | EncodedRow]) -> dict[str, torch.Tensor]:
        rows = [seq for column in zip(*map(sequences, items)) for seq in column]
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention_mask[i, : len(row)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        return with_items(batch, items)


@dataclass
class PackedCollator:
    """Every sequence of the batch in one row, chosen ones first: no padding.

    >>> b = PackedCollator()([EncodedPair(7, [1, 2, 3], [1, 4])])
    >>> b["input_ids"].tolist(), b["position_ids"].tolist(), b["seq_lengths"].tolist()
    ([[1, 2, 3, 1, 4]], [[0, 1, 2, 0, 1]], [3, 2])
    """

    def __call__(self, items: Sequence[EncodedPair | EncodedRow]) -> dict[str, torch.Tensor]:
        rows = [seq for column in zip(*map(sequences, items)) for seq in column]
        batch = {"input_ids": torch.tensor([[t for row in rows for t in row]], dtype=torch.long),
                 "position_ids": torch.tensor([[i for row in rows for i in range(len(row))]], dtype=torch.long),
                 "seq_lengths": torch.tensor([len(row) for row in rows], dtype=torch.long)}
        return with_items(batch, items)


def shared_prefix(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two sequences, leaving each at least its last token (where
    a decoder reads the reward)."""
    n, k = min(len(a), len(b)) - 1, 0
    while k < n and a[k] == b[k]:
        k += 1
    return k


def pair_tokens(e: EncodedPair, prefix_sharing: bool) -> int:
    """Tokens a pair takes in a packed batch: its common prefix once under prefix sharing."""
    return len(e.chosen) + len(e.rejected) - (shared_prefix(e.chosen, e.rejected) if prefix_sharing else 0)


@dataclass
class PrefixSharedCollator:
    """Every pair as one sequence prefix · chosen · rejected in one row (`data.prefix_sharing`):
    the tokens both sides share (the prompt, for a decoder the same computation twice) once.
    Position ids of the rejected part continue from the prefix, as if it followed it alone;
    `segments` holds (prefix, chosen part, rejected part) lengths per pair, from which attention
    keeps the two parts apart (mars.model.attention) and the rewards are read at each part's end.

    >>> b = PrefixSharedCollator()([EncodedPair(7, [1, 2, 3], [1, 2, 4, 5])])
    >>> b["input_ids"].tolist(), b["position_ids"].tolist(), b["segments"].tolist()
    ([[1, 2, 3, 4, 5]], [[0, 1, 2, 2, 3]], [[2, 1, 2]])
    """

    def __call__(self, items: Sequence[EncodedPair]) -> dict[str, torch.Tensor]:
        ids, positions, segments = [], [], []
        for e in items:
            p = shared_prefix(e.chosen, e.rejected)
            ids += e.chosen + e.rejected[p:]
            positions += list(range(len(e.chosen))) + list(range(p, len(e.rejected)))
            segments.append((p, len(e.chosen) - p, len(e.rejected) - p))
        batch = {"input_ids": torch.tensor([ids], dtype=torch.long),
                 "position_ids": torch.tensor([positions], dtype=torch.long),
                 "segments": torch.tensor(segments, dtype=torch.long)}
        return with_items(batch, items)


class TokenBudgetSampler(torch.utils.data.Sampler[list[int]]):
    """Seeded batches of items holding at most `max_tokens` tokens each (an item longer than the
    budget alone), sharded like `PairBatchSampler`: each item in exactly one batch of one rank,
    the same number of batches on every rank (the fullest batches are split until it divides)."""

    def __init__(self, tokens: Sequence[int], max_tokens: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.tokens = np.asarray(tokens)
        self.max_tokens, self.shuffle, self.seed, self.epoch = max_tokens, shuffle, seed, epoch
        self.rank, self.world_size = rank, world_size
        if 0 < len(self.tokens) < world_size:
            raise ValueError(f"{len(self.tokens)} pairs cannot be shared by {world_size} ranks: each needs at least one")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def all_batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.tokens)) if self.shuffle else np.argsort(-self.tokens, kind="stable")
        batches, current, used = [], [], 0
        for i in order:
            if current and used + self.tokens[i] > self.max_tokens:
                batches.append(np.array(current))
                current, used = [], 0
            current.append(i)
            used += self.tokens[i]
        if current:
            batches.append(np.array(current))
        while len(batches) % self.world_size:
            j = max(range(len(batches)), key=lambda k: len(batches[k]))
            if len(batches[j]) > 1:
                batches[j: j + 1] = np.array_split(batches[j], 2)
            else:  # every item alone exceeds the budget: the two smallest share a batch
                a, b = sorted(range(len(batches)), key=lambda k: self.tokens[batches[k]].sum())[:2]
                batches[a] = np.concatenate([batches[a], batches[b]])
                del batches[b]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __len__(self) -> int:
        return len(self.all_batches()) // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.all_batches()[self.rank :: self.world_size]:
            yield batch.tolist()


class PairBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Seeded, optionally length-grouped batches of dataset positions for one rank.

    The N items are cut into `world_size * ceil(N / (batch_size * world_size))` batches of
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
