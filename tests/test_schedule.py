"""The learning-rate horizon is the run the loop actually delivers: max_steps without an epoch
limit, an augmenter shortfall, a fractional batch limit; and per-pair target margins reach the loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mars.model.loss import bradley_terry_loss
from tests.conftest import TINY, compose_config
from mars.cli.train import train

QUICK = TINY + ["test=false", "export=false", "optim.warmup_ratio=0", "optim.lr=1e-3",
                "+callbacks.lr._target_=tests.helpers.RecordLR"]


def lrs(objects) -> np.ndarray:
    (cb,) = [c for c in objects["trainer"].callbacks if type(c).__name__ == "RecordLR"]
    return np.asarray(cb.lrs) / 1e-3


def test_max_steps_without_an_epoch_limit_is_the_horizon(tmp_path):
    # 96 pairs / 8 = 12 steps an epoch; 30 steps run 2.5 epochs and the LR decays over all 30.
    _, objects = train(compose_config("train", QUICK + ["trainer.max_epochs=-1", "+trainer.max_steps=30"], tmp_path))
    factors = lrs(objects)
    assert len(factors) == 30
    np.testing.assert_allclose(factors, 1 - np.arange(30) / 30, atol=1e-6)


def test_fractional_batch_limit_shortens_the_horizon(tmp_path):
    _, objects = train(compose_config("train", QUICK + ["trainer.max_epochs=2", "+trainer.limit_train_batches=0.5"],
                                      tmp_path))
    factors = lrs(objects)
    assert len(factors) == 12  # 6 of 12 batches, twice
    np.testing.assert_allclose(factors, 1 - np.arange(12) / 12, atol=1e-6)


def test_shortfall_of_variants_is_in_the_horizon(tmp_path, monkeypatch):
    """An augmenter that delivers nothing: rounds add no pairs, and the LR still ends at zero."""
    from mars.augmenters.eda import EDAAugmenter

    monkeypatch.setattr(EDAAugmenter, "augment", lambda self, requests: [[] for _ in requests])
    cfg = QUICK + ["allocator=mars", "augmenter=eda", "augmenter.cache_path=null", "loop.budget=48",
                   "loop.warmup_epochs=1", "trainer.max_epochs=3"]
    _, objects = train(compose_config("train", cfg, tmp_path))
    factors = lrs(objects)
    assert len(factors) == 36 and objects["datamodule"].loop.history[-1]["shortfall"] == 48
    assert factors[-1] == pytest.approx(1 / 36, abs=1e-6)  # the last step's LR, one step from zero


def test_per_pair_margin_reaches_the_loss(tmp_path):
    import json

    rows = [{"prompt": f"q{i}", "chosen": f"good answer {i}", "rejected": f"bad {i}", "margin": 2.0 * (i % 2)}
            for i in range(40)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = compose_config("train", QUICK + ["data=local", f"data.path={path}", "data.val_size=8", "data.test_size=8",
                                           "data.train_size=-1", "trainer.max_epochs=1"], tmp_path)
    _, objects = train(cfg)
    dm, module = objects["datamodule"], objects["model"]
    batch = dm.collator(dm.formatter.encode(dm.splits["train"][:8]))
    margins = torch.tensor([p.meta["margin"] for p in dm.splits["train"][:8]])
    assert torch.equal(batch["margin"], margins) and margins.any()
    r_c, r_r = torch.zeros(8), torch.zeros(8)
    assert torch.equal(module.target_margin(batch), margins)
    expected = bradley_terry_loss(r_c, r_r, margins)
    assert expected != bradley_terry_loss(r_c, r_r, 0.0)  # the config's margin would give another loss
