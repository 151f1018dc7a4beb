"""Collator layout (pairs, rows, per-pair margins) and PairBatchSampler sharding (batch.py docstring)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from mars.data.batch import Collator, EncodedRow, PairBatchSampler
from mars.data.format import EncodedPair

PAD = 0


def test_collator_layout():
    pairs = [EncodedPair(4, [1, 2, 3], [1, 9]), EncodedPair(0, [1, 5], [1, 6, 7, 8, 2])]
    batch = Collator(pad_id=PAD)(pairs)
    assert batch["input_ids"].tolist() == [
        [1, 2, 3, 0, 0],  # chosen rows first, in pair order
        [1, 5, 0, 0, 0],
        [1, 9, 0, 0, 0],  # then rejected rows
        [1, 6, 7, 8, 2],
    ]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["index"].tolist() == [4, 0]
    assert all(v.dtype == torch.long for v in batch.values())


def test_per_pair_margins_travel_in_the_batch():
    batch = Collator(pad_id=PAD)([EncodedPair(0, [1], [2], margin=1.5), EncodedPair(1, [3], [4])])
    assert batch["margin"][0] == 1.5 and torch.isnan(batch["margin"][1])  # NaN: the loss config's
    assert "margin" not in Collator(pad_id=PAD)([EncodedPair(0, [1], [2])])


def test_rows_share_the_batch_format():
    batch = Collator(pad_id=PAD)([EncodedRow(3, [1, 2]), EncodedRow(8, [4])])
    assert batch["input_ids"].tolist() == [[1, 2], [4, 0]] and batch["index"].tolist() == [3, 8]


def test_collator_pads_with_the_pad_id():
    batch = Collator(pad_id=99)([EncodedPair(0, [5], [5, 6, 7])])
    assert batch["input_ids"].tolist() == [[5, 99, 99], [5, 6, 7]]
    assert batch["attention_mask"].sum().item() == 4


def lengths(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(5, 200, n)


def rank_batches(n, batch_size, world_size, **kw) -> list[list[list[int]]]:
    return [list(PairBatchSampler(lengths(n), batch_size, rank=r, world_size=world_size, **kw))
            for r in range(world_size)]


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("n", [7, 50, 101, 256])
@pytest.mark.parametrize("batch_size", [2, 4, 16])
@pytest.mark.parametrize("shuffle,grouping", [(True, True), (True, False), (False, True), (False, False)])
def test_sharding_covers_each_pair_once(world_size, n, batch_size, shuffle, grouping):
    per_rank = rank_batches(n, batch_size, world_size, shuffle=shuffle, length_grouping=grouping, seed=3, epoch=1)
    flat = [i for batches in per_rank for b in batches for i in b]
    assert sorted(flat) == list(range(n))  # every pair exactly once over all ranks
    counts = {len(batches) for batches in per_rank}
    assert len(counts) == 1  # the same number of batches on every rank (no DDP hang)
    assert counts == {len(PairBatchSampler(lengths(n), batch_size, shuffle=shuffle, world_size=world_size))}
    sizes = [len(b) for batches in per_rank for b in batches]
    assert max(sizes) <= batch_size and min(sizes) >= 1


@pytest.mark.parametrize("world_size", [1, 3])
def test_seeded_and_epoch_dependent(world_size):
    def draw(seed, epoch):
        return rank_batches(300, 8, world_size, shuffle=True, seed=seed, epoch=epoch)

    assert draw(0, 0) == draw(0, 0)
    assert draw(0, 0) != draw(0, 1)
    assert draw(0, 0) != draw(1, 0)
    sampler = PairBatchSampler(lengths(300), 8, shuffle=True, seed=0, world_size=world_size)
    sampler.set_epoch(1)
    assert list(sampler) == draw(0, 1)[0]


def test_no_shuffle_is_stable_across_epochs():
    a = rank_batches(100, 8, 2, shuffle=False, epoch=0)
    assert a == rank_batches(100, 8, 2, shuffle=False, epoch=5)
    ungrouped = rank_batches(100, 8, 1, shuffle=False, length_grouping=False)[0]
    assert [i for b in ungrouped for i in b] == list(range(100))  # plain order


def padding(batches, lens) -> int:
    return sum(len(b) * lens[b].max() - lens[b].sum() for b in map(np.asarray, batches))


@pytest.mark.parametrize("shuffle", [True, False])
def test_length_grouping_reduces_padding(shuffle):
    n, lens = 2000, lengths(2000, seed=7)
    grouped = list(PairBatchSampler(lens, 16, shuffle=shuffle, length_grouping=True))
    plain = list(PairBatchSampler(lens, 16, shuffle=shuffle, length_grouping=False))
    assert padding(grouped, lens) < 0.25 * padding(plain, lens)
    assert sorted(itertools.chain(*grouped)) == list(range(n))


def test_empty_dataset():
    sampler = PairBatchSampler([], 8, shuffle=True, world_size=2)
    assert len(sampler) == 0 and list(sampler) == []
