"""Fast modes: the cached frozen part gives the model's own outputs, only the trainable part
trains, and the features persist across runs."""
from __future__ import annotations

import lightning as L
import pytest
import torch
from omegaconf import open_dict

from mars.config import BackboneConfig, LossConfig, OptimConfig
from mars.model.frozen import FrozenPrefix
from mars.model.module import RewardModule
from tests.conftest import TINY, compose_config
from train import train

TINY_BACKBONE = dict(name_or_path="minilm", random_init=True, max_length=64,
                     config_overrides=dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                           intermediate_size=64, initializer_range=0.3))


def batch(module):
    tok = module.tokenizer
    enc = tok(["the capital of France is Paris", "hi", "a much longer answer with many more words in it"],
              padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_cached_forward_equals_the_full_model(k):
    torch.manual_seed(0)
    module = RewardModule(BackboneConfig(**TINY_BACKBONE, train_layers=k), OptimConfig(), LossConfig()).eval()
    ids, mask = batch(module)
    full = module.model(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
    for _ in range(2):  # computed, then from the cache
        torch.testing.assert_close(module(ids, mask), full, atol=1e-5, rtol=1e-4)
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert {n for n in trainable if n.startswith("classifier")} == {"classifier.weight", "classifier.bias"}
    layers = {int(n.split(".")[3]) for n in trainable if ".encoder.layer." in n}
    assert layers == set(range(3 - k, 3))
    assert not any("embeddings" in n for n in trainable)


def test_too_many_layers_is_a_clear_error():
    with pytest.raises(ValueError, match="has 3 layers"):
        RewardModule(BackboneConfig(**TINY_BACKBONE, train_layers=4), OptimConfig(), LossConfig())


@pytest.mark.parametrize("k", [0, 1])
def test_only_the_trainable_part_trains_and_features_persist(k, tmp_path, monkeypatch):
    # loss.center_rewards_coef: the head's bias gets a gradient only from the centering term.
    overrides = TINY + [f"backbone.train_layers={k}", "trainer.max_epochs=1", "optim.lr=1e-2",
                        "loss.center_rewards_coef=0.01"]
    cfg = compose_config("train", overrides, tmp_path / "first")
    with open_dict(cfg):
        cfg.paths.cache_dir = str(tmp_path / "cache")
    from mars.config import validate

    typed = validate(cfg)
    L.seed_everything(cfg.seed, workers=True)
    initial = RewardModule(typed["backbone"], typed["optim"], typed["loss"]).state_dict()
    metrics, objects = train(cfg)
    for name, p in objects["model"].named_parameters():
        assert torch.equal(p.detach(), initial[name]) != p.requires_grad, name
    (cache,) = (tmp_path / "cache" / "features").glob("*.pt")
    assert len(torch.load(cache)) >= 2 * 96  # every training sequence, once

    again = compose_config("train", overrides, tmp_path / "second")
    with open_dict(again):
        again.paths.cache_dir = str(tmp_path / "cache")
    computed = []
    frozen_part = FrozenPrefix._frozen_part
    monkeypatch.setattr(FrozenPrefix, "_frozen_part", lambda self, *a: computed.append(1) or frozen_part(self, *a))
    metrics_again, objects_again = train(again)
    assert objects_again["model"].prefix.cache_file == str(cache)
    assert not computed  # train, validation and test features all came from the first run's cache
    assert metrics_again["test/acc"] == metrics["test/acc"]
