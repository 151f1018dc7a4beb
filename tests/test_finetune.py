"""The finetune policies on encoders and decoders: what trains, the cached forward of the fast
modes equals the whole network, LoRA touches only adapters and head, features persist."""
from __future__ import annotations

import lightning as L
import pytest
import torch
from omegaconf import open_dict

from mars.config import FinetuneConfig, LossConfig, OptimConfig, validate
from mars.model.finetune import CachedTrunk, bert_style
from mars.lightning.module import RewardModule
from tests.conftest import TINY, compose_config
from mars.cli.train import train

BACKBONES = ["tiny", "tiny_llama", "tiny_qwen2"]


def backbone_cfg(name: str, tmp_path, *overrides: str):
    return validate(compose_config("train", [f"backbone={name}", *overrides], tmp_path))["backbone"]


def build(name: str, tmp_path, finetune: str = "full", layers: int = 2, *overrides: str) -> RewardModule:
    torch.manual_seed(0)
    module = RewardModule(backbone_cfg(name, tmp_path, "+backbone.config_overrides.initializer_range=0.3",
                                       *overrides),
                          FinetuneConfig(name=finetune, layers=layers), OptimConfig(), LossConfig())
    module.configure_model()
    return module.eval()


def rows(module, padding_side: str = "right"):
    tok = module.tokenizer
    tok.padding_side = padding_side
    try:
        enc = tok(["the capital of France is Paris", "hi", "a much longer answer with many more words in it"],
                  padding=True, return_tensors="pt")
    finally:
        tok.padding_side = "right"
    return enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("k", [0, 1, 2])
def test_cached_forward_equals_the_whole_network(name, k, tmp_path):
    full = build(name, tmp_path)
    fast = build(name, tmp_path, "head" if k == 0 else "top_layers", k)
    fast.model.load_state_dict(full.model.state_dict())
    upper = fast.model.trunk.upper
    assert len(upper or []) == k  # the layers that train on the cached output of the ones below
    if k:  # the encoder's top layer runs at its first token only (what the pooler reads)
        assert bert_style(upper[-1]) == (name == "tiny")
    ids, mask = rows(full)
    expected, phi = full({"input_ids": ids, "attention_mask": mask})
    assert expected.std() > 1e-4  # rows differ (a BOS-pooled decoder would give one value)
    for _ in range(2):  # computed, then from the cache
        got, got_phi = fast({"input_ids": ids, "attention_mask": mask})
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got_phi, phi, atol=1e-5, rtol=1e-4)
    assert len(fast.model.trunk.cache) == 3


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("finetune", ["full", "lora", "head", "top_layers"])
def test_what_trains(name, finetune, tmp_path):
    module = build(name, tmp_path, finetune, 1)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert {n for n in trainable if n.startswith("model.head")} == {n for n, _ in module.model.head.named_parameters(
        prefix="model.head")}
    if finetune == "full":
        assert trainable == {n for n, _ in module.named_parameters()}
    elif finetune == "lora":
        assert all("lora_" in n or n.startswith("model.head") for n in trainable)
        assert any("lora_A" in n for n in trainable) and any("lora_B" in n for n in trainable)
    elif finetune == "head":
        assert all(n.startswith("model.head") for n in trainable)
    else:  # the top layer only (and pooler / final norm), never embeddings or lower layers
        assert not any("embed" in n for n in trainable)
        layer_ids = {int(part) for n in trainable for part in n.split(".") if part.isdigit()}
        assert layer_ids == {1}, trainable


def test_qlora_off_cuda_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="finetune=qlora .* needs a CUDA GPU"):
        build("tiny", tmp_path, "qlora")


def test_too_many_layers_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="the model has 2 layers"):
        build("tiny_llama", tmp_path, "top_layers", 3)


def test_backbone_train_layers_names_the_new_key(tmp_path):
    with pytest.raises(ValueError, match="finetune=head"):
        backbone_cfg("tiny", tmp_path, "backbone.train_layers=0")


@pytest.mark.parametrize("name,finetune", [("tiny", "lora"), ("tiny_llama", "lora"), ("tiny_llama", "full")])
def test_training_changes_exactly_the_trainable_parameters(name, finetune, tmp_path):
    # loss.center_rewards_coef: an encoder head's bias gets a gradient only from the centering term.
    cfg = compose_config("train", TINY + [f"backbone={name}", f"finetune={finetune}", "trainer.max_epochs=1",
                                          "optim.lr=1e-2", "loss.center_rewards_coef=0.01", "test=false",
                                          "export=false", "data.train_size=32"], tmp_path)
    typed = validate(cfg)
    L.seed_everything(cfg.seed, workers=True)
    initial = RewardModule(typed["backbone"], typed["finetune"], typed["optim"], typed["loss"])
    initial.configure_model()
    if finetune == "lora":  # LoRA's B starts at zero: only a trained B moves the output
        assert all(torch.all(p == 0) for n, p in initial.named_parameters() if "lora_B" in n)
    before = {n: p.detach().clone() for n, p in initial.named_parameters()}
    L.seed_everything(cfg.seed, workers=True)
    _, objects = train(cfg)
    for n, p in objects["model"].named_parameters():
        changed = not torch.equal(p.detach(), before[n])
        assert changed == p.requires_grad, (n, changed)


@pytest.mark.parametrize("finetune", ["head", "top_layers"])
def test_features_persist_across_runs(finetune, tmp_path, monkeypatch):
    overrides = TINY + [f"finetune={finetune}", "finetune.layers=1", "trainer.max_epochs=1", "optim.lr=1e-2"]
    cfg = compose_config("train", overrides, tmp_path / "first")
    with open_dict(cfg):
        cfg.paths.cache_dir = str(tmp_path / "cache")
    metrics, objects = train(cfg)
    (cache,) = (tmp_path / "cache" / "features").glob("*.pt")
    assert len(torch.load(cache)) >= 2 * 96  # every training sequence, once

    again = compose_config("train", overrides, tmp_path / "second")
    with open_dict(again):
        again.paths.cache_dir = str(tmp_path / "cache")
    computed = []
    frozen = CachedTrunk._frozen
    monkeypatch.setattr(CachedTrunk, "_frozen", lambda self, *a: computed.append(1) or frozen(self, *a))
    metrics_again, objects_again = train(again)
    assert objects_again["model"].model.trunk.cache_file == str(cache)
    assert not computed  # train, validation and test features all came from the first run's cache
    assert metrics_again["test/acc"] == metrics["test/acc"]
