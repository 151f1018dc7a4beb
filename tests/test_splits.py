"""Splits never leak: duplicates removed before splitting, overlapping held-out files rejected;
"""
from __future__ import annotations

import dataclasses
import json
import re

import pytest

from mars.config import DataConfig, typed
from mars.data.records import DataFormatError, PreferencePair
from mars.data.splits import check_disjoint, check_no_heldout_leak, load_splits, split_pool
from tests.conftest import compose_config, require_data


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def rows(n, offset=0):
    return [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(offset, offset + n)]


def test_duplicates_are_removed_before_a_random_split(tmp_path):
    path = write(tmp_path / "pairs.jsonl", rows(30) + rows(30))  # every pair twice
    splits = load_splits(DataConfig(source="local", path=path, val_size=5, test_size=5))
    assert [len(splits[k]) for k in ("train", "val", "test")] == [20, 5, 5]
    train_hashes = {p.content_hash() for p in splits["train"]}
    assert not train_hashes & {p.content_hash() for p in splits["val"] + splits["test"]}


def test_a_test_file_overlapping_training_fails_loudly(tmp_path):
    path = write(tmp_path / "train.jsonl", rows(20))
    test = write(tmp_path / "test.jsonl", rows(5, offset=18))  # pairs 18 and 19 are in train
    with pytest.raises(DataFormatError, match="2 test pairs also occur in train"):
        load_splits(DataConfig(source="local", path=path, test_path=test, val_size=2))


def test_explicit_val_and_test_files_that_overlap_fail_loudly(tmp_path):
    path = write(tmp_path / "train.jsonl", rows(20))
    val = write(tmp_path / "val.jsonl", rows(4, offset=100))
    test = write(tmp_path / "test.jsonl", rows(4, offset=102))  # 102, 103 also in val
    with pytest.raises(DataFormatError, match=r"^2 test pairs also occur in val: 2 by normalised prompt"):
        load_splits(DataConfig(source="local", path=path, val_path=val, test_path=test))
    val = write(tmp_path / "val.jsonl", rows(4, offset=19))  # 19 is in train
    with pytest.raises(DataFormatError, match=rf"^1 val pairs also occur in train \({re.escape(path)}\)"):
        load_splits(DataConfig(source="local", path=path, val_path=val, test_size=5))


# ---------------------------------------------------------------------------------------------
# Prompt-grouped splits


def crossing(splits: dict[str, list[PreferencePair]]) -> list[tuple]:
    """(key, splits) for every normalised prompt or unordered response pair in two splits."""
    where: dict[tuple, set] = {}
    for name, pairs in splits.items():
        for p in pairs:
            if p.prompt_key():
                where.setdefault(("prompt", p.prompt_key()), set()).add(name)
            where.setdefault(("responses", p.responses_key()), set()).add(name)
    return [(key, names) for key, names in where.items() if len(names) > 1]


def twins_and_variants(n: int) -> list[dict]:
    """Per prompt i: a pair, its label-swapped twin, and a pair whose prompt differs only in
    whitespace; plus prompt-less pairs with their swapped twins."""
    out = []
    for i in range(n):
        out += [{"prompt": f"question {i}?", "chosen": f"good {i}", "rejected": f"bad {i}"},
                {"prompt": f"question {i}?", "chosen": f"bad {i}", "rejected": f"good {i}"},
                {"prompt": f"  question\n\t{i}?\n", "chosen": f"fine {i}", "rejected": f"poor {i}"}]
    for i in range(n // 2):
        out += [{"prompt": "", "chosen": f"yes {i}", "rejected": f"no {i}"},
                {"prompt": "", "chosen": f"no {i}", "rejected": f"yes {i}"}]
    return out


def test_swapped_twins_and_whitespace_variants_stay_in_one_split(tmp_path):
    path = write(tmp_path / "pairs.jsonl", twins_and_variants(40))  # 160 pairs in 60 groups
    for seed in range(5):
        splits = load_splits(DataConfig(source="local", path=path, val_size=20, test_size=30, split_seed=seed))
        assert crossing(splits) == []
        assert sum(map(len, splits.values())) == 160
        # Closest to the size that whole groups (of 3 or 2 pairs) allow: off by at most 1.
        assert abs(len(splits["val"]) - 20) <= 1 and abs(len(splits["test"]) - 30) <= 1


def test_grouped_split_is_deterministic_under_split_seed(tmp_path):
    path = write(tmp_path / "pairs.jsonl", twins_and_variants(40))
    ids = lambda s: {k: [p.id for p in v] for k, v in s.items()}  # noqa: E731
    cfg = DataConfig(source="local", path=path, val_size=20, test_size=30, split_seed=3)
    assert ids(load_splits(cfg)) == ids(load_splits(cfg))
    assert ids(load_splits(dataclasses.replace(cfg, split_seed=4))) != ids(load_splits(cfg))


def test_split_pool_fills_each_split_as_closely_as_whole_groups_allow():
    pool = [PreferencePair(f"p{i}-{j}", f"q{i}", f"a{i}-{j}", f"b{i}-{j}") for i in range(10) for j in range(4)]
    splits = split_pool(pool, {"test": 6, "val": 5}, -1, 0, "pool")  # ten groups of 4 pairs
    # test: 4 (gap 2) or 8 (gap 2): the tie goes to fewer groups; val: 4 (gap 1) beats 8.
    assert [len(splits[k]) for k in ("test", "val", "train")] == [4, 4, 32]
    assert len(split_pool(pool, {"test": 1, "val": 1}, -1, 0, "pool")["val"]) == 4  # never empty


def test_leak_check_catches_a_swapped_twin_and_a_whitespace_variant():
    train = [PreferencePair("t0", "Hello  there?", "a", "b"), PreferencePair("t1", "", "c", "d")]
    check_disjoint(train, test=[PreferencePair("x", "Other", "a", "e"), PreferencePair("y", "", "c", "e")])
    for leak, by in ((PreferencePair("x", " Hello\nthere? ", "e", "f"), "1 by normalised prompt, 0 by"),
                     (PreferencePair("x", "Other", "b", "a"), "0 by normalised prompt, 1 by"),
                     (PreferencePair("x", "", "d", "c"), "0 by normalised prompt, 1 by")):
        with pytest.raises(DataFormatError, match=rf"^1 test pairs also occur in train: {by}"):
            check_disjoint(train, val=train[:0], test=[leak])


def test_a_swapped_twin_in_an_explicit_test_file_fails_loudly(tmp_path):
    path = write(tmp_path / "train.jsonl", rows(20))
    swapped = [{"prompt": "another prompt", "chosen": "bad 3", "rejected": "good 3"}]
    for held in (swapped, [{"prompt": "  q3 ", "chosen": "x", "rejected": "y"}]):
        test = write(tmp_path / "test.jsonl", held)
        with pytest.raises(DataFormatError, match="1 test pairs also occur in train"):
            load_splits(DataConfig(source="local", path=path, test_path=test, val_size=2))


def test_check_no_heldout_leak():
    held = {"val": [PreferencePair("v", "What is  2+2?", "4", "5")],
            "test": [PreferencePair("t", "", "yes", "no")]}
    clean = [PreferencePair("s0", "What is 3+3?", "4", "6"), PreferencePair("s1", "", "yes", "nope")]
    check_no_heldout_leak(clean, held)
    for bad, split in ((PreferencePair("s", "What is 2+2?\n", "four", "five"), "val"),  # same prompt
                       (PreferencePair("s", "Rephrased", "5", "4"), "val"),  # its responses, swapped
                       (PreferencePair("s", "", "no", "yes"), "test")):
        with pytest.raises(DataFormatError, match=rf"^1 synthetic pairs derive from {split} pairs"):
            check_no_heldout_leak(clean + [bad], held)


# ---------------------------------------------------------------------------------------------
# Split sizes that cannot be met


def test_impossible_split_sizes_name_the_key_and_the_count(tmp_path):
    path = write(tmp_path / "pairs.jsonl", rows(30))
    cases = [
        ({"val_size": 20, "test_size": 15},
         "data.test_size=15 + data.val_size=20 = 35 held-out pairs, but {path} has only 30"),
        ({"val_size": 10, "test_size": 20},
         "data.test_size=20 + data.val_size=10 = 30 held-out pairs, but {path} has only 30"),
        ({"val_size": 10, "test_size": 10, "train_size": 11},
         "data.train_size=11, but only 10 pairs of {path} are left after test (10 pairs), val (10 pairs)"),
        ({"val_size": 0}, "data.val_size=0: validation needs at least one pair: the best checkpoint is "
                          "chosen by val/acc"),
        ({"val_size": -1}, "data.val_size=-1: a split size is a number of pairs"),
        ({"train_size": 0}, "data.train_size=0: use a number of pairs >= 1, or -1"),
    ]
    for sizes, message in cases:
        with pytest.raises(DataFormatError, match="^" + re.escape(message.format(path=path))):
            load_splits(DataConfig(source="local", path=path, **sizes))
    with pytest.raises(DataFormatError, match=r"^data\.val_size=0: validation needs at least one pair"):
        load_splits(DataConfig(source="demo", val_size=0))
    # An explicit validation file needs no val_size; a test set may be empty (benchmarks use it).
    val = write(tmp_path / "val.jsonl", rows(3, offset=100))
    splits = load_splits(DataConfig(source="local", path=path, val_path=val, val_size=0, test_size=0))
    assert [len(splits[k]) for k in ("train", "val", "test")] == [30, 3, 0]
    assert len(load_splits(DataConfig(source="local", path=path, val_size=10, test_size=10,
                                      train_size=10))["train"]) == 10


def test_an_empty_training_file_is_named_as_empty(tmp_path):
    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(DataFormatError, match=rf"^{re.escape(str(tmp_path / 'train.jsonl'))}: the file is empty$"):
        load_splits(DataConfig(source="local", path=str(tmp_path / "train.jsonl"), val_size=1, test_size=1))


# ---------------------------------------------------------------------------------------------
# The real sources ($MARS_DATA_DIR)


REAL = {  # data config -> overrides; the PKU preset asks for more pairs than its 2,395 (see report)
    "pku_saferlhf_offline": ["data.train_size=-1"],
    "hh_rlhf_offline": [],
    "ultrafeedback_offline": [],
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_sources_split_by_prompt_without_leaks(name, tmp_path):
    require_data()
    data = typed(compose_config("train", [f"data={name}", *REAL[name]], tmp_path), "data")
    splits = load_splits(data)
    assert crossing(splits) == []
    for split in ("val", "test"):
        if not getattr(data, f"{split}_path"):  # split from the pool: close to the size asked
            assert abs(len(splits[split]) - getattr(data, f"{split}_size")) <= 8, split
    ids = {k: [p.id for p in v] for k, v in splits.items()}
    assert ids == {k: [p.id for p in v] for k, v in load_splits(data).items()}
    other = load_splits(dataclasses.replace(data, split_seed=data.split_seed + 1))
    assert [p.id for p in other["val"]] != ids["val"] and crossing(other) == []
