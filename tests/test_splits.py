"""Splits never leak: duplicates removed before splitting, overlapping held-out files rejected;
predictions map back to pair ids."""
from __future__ import annotations

import json

import pytest

from mars.config import DataConfig
from mars.data.records import DataFormatError
from mars.data.splits import load_splits
from tests.conftest import TINY, compose_config
from train import train


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
        load_splits(DataConfig(source="local", path=path, test_path=test, val_size=0))


def test_predict_returns_margins_by_pair_id(tmp_path):
    cfg = compose_config("train", TINY + ["trainer.max_epochs=1", "test=false", "export=false"], tmp_path)
    _, objects = train(cfg)
    trainer, dm = objects["trainer"], objects["datamodule"]
    margins = dm.margins_by_id(trainer.predict(objects["model"], datamodule=dm))
    assert set(margins) == {p.id for p in dm.splits["test"]}
