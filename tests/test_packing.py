"""Packed, padding-free batches: packed scores equal padded ones (encoder and decoder), the token
budget sampler shards like the pair sampler, and packed training iterates exactly D^t."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from mars.config import FinetuneConfig, LossConfig, OptimConfig, validate
from mars.data.batch import TokenBudgetSampler
from mars.data.demo import demo_splits
from mars.data.format import PairFormatter
from mars.model.attention import VARLEN_SDPA
from mars.lightning.module import RewardModule
from mars.model.scoring import Scorer
from tests.conftest import TINY, compose_config
from mars.cli.train import train


def build(name: str, tmp_path, *overrides: str) -> RewardModule:
    torch.manual_seed(0)
    typed = validate(compose_config("train", [f"backbone={name}", "+backbone.config_overrides.initializer_range=0.3",
                                              *overrides], tmp_path))
    module = RewardModule(typed["backbone"], FinetuneConfig(), OptimConfig(), LossConfig())
    module.configure_model()
    return module.eval()


# Every architecture of PACKING_VERIFIED, as a tiny random model ("tiny": BERT, as MiniLM)
VERIFIED = {"tiny": [], "tiny_llama": [], "tiny_qwen2": [],
            "tiny_qwen3": ["backbone=tiny_qwen2", "backbone.model_type=qwen3", "+backbone.config_overrides.head_dim=16"]}


def test_every_verified_architecture_is_checked_here():
    from mars.model.backbone import PACKING_VERIFIED

    types = {"tiny": "bert", "tiny_llama": "llama", "tiny_qwen2": "qwen2", "tiny_qwen3": "qwen3"}
    assert sorted(types[k] for k in VERIFIED) == sorted(PACKING_VERIFIED)


@pytest.mark.parametrize("attention", ["default", "eager"])
@pytest.mark.parametrize("name", sorted(VERIFIED))
def test_packed_scores_equal_padded_scores(name, attention, tmp_path, monkeypatch):
    backbone = VERIFIED[name] or [f"backbone={name}"]
    module = build(backbone[0].split("=")[1], tmp_path, *backbone[1:],
                   *([] if attention == "default" else [f"backbone.attn_implementation={attention}"]))
    if attention == "default":  # SDPA per sequence, never the T × T block mask of the whole pack
        assert module.model.net.config._attn_implementation == VARLEN_SDPA
        monkeypatch.setattr("mars.model.reward_model.block_mask", None)
    pairs = demo_splits(40, 10, 30, seed=0)["test"]
    cfg = module.backbone_cfg
    scorer = lambda **kw: Scorer(PairFormatter.of(module.tokenizer, cfg),  # noqa: E731
                                 module.tokenizer.pad_token_id, module, 8, **kw)
    padded = scorer().pairs(pairs, features=True)
    packed = scorer(packing=True, max_tokens=300).pairs(pairs, features=True)
    np.testing.assert_allclose(packed.r_chosen, padded.r_chosen, atol=1e-4)
    np.testing.assert_allclose(packed.r_rejected, padded.r_rejected, atol=1e-4)
    np.testing.assert_allclose(packed.features, padded.features, atol=1e-4)
    assert np.std(padded.margins) > 1e-3


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("shuffle", [True, False])
def test_token_budget_sampler_shards_every_item_once(world, shuffle):
    tokens = np.random.default_rng(0).integers(5, 120, 101)
    per_rank = [list(TokenBudgetSampler(tokens, 256, shuffle=shuffle, seed=3, rank=r, world_size=world))
                for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1  # every rank runs the same number of batches
    assert len(per_rank[0]) == len(TokenBudgetSampler(tokens, 256, shuffle=shuffle, seed=3, world_size=world))
    flat = [i for batches in per_rank for batch in batches for i in batch]
    assert sorted(flat) == list(range(101))
    assert all(tokens[batch].sum() <= 256 for batches in per_rank for batch in batches)
    # filled, not one pair a batch: next-fit never leaves two neighbours that would fit together
    assert sum(map(len, per_rank)) <= 2 * np.ceil(tokens.sum() / 256) + world


def test_token_budget_sampler_when_every_item_exceeds_the_budget():
    batches = list(TokenBudgetSampler([300, 400, 500], 100, shuffle=False, world_size=2, rank=0)) + \
        list(TokenBudgetSampler([300, 400, 500], 100, shuffle=False, world_size=2, rank=1))
    assert sorted(i for b in batches for i in b) == [0, 1, 2] and len(batches) == 2


def test_packed_training_iterates_exactly_d_t(tmp_path):
    cfg = compose_config("train", TINY + ["data.packing=true", "data.max_tokens_per_batch=600", "allocator=mars",
                                          "augmenter=eda", "augmenter.cache_path=null", "loop.budget=48",
                                          "loop.warmup_epochs=1", "trainer.max_epochs=2", "callbacks=audit",
                                          "export=false"], tmp_path)
    metrics, objects = train(cfg)
    for epoch, size in ((0, 96), (1, 96 + 48)):
        record = json.loads((tmp_path / "audit" / f"epoch{epoch}_rank0.json").read_text())
        assert len(record["train_set"]) == size
        assert Counter(record["seen"]) == Counter(record["train_set"])  # each pair exactly once
    assert "test/acc" in metrics


def test_eval_packing_from_the_command_line(tmp_path):
    from mars.cli.evaluate import evaluate

    from mars.model.export import export_reward_model

    module = build("tiny_llama", tmp_path)
    folder = export_reward_model(module, str(tmp_path / "export"))
    out = {}
    for packing in ("false", "true"):
        cfg = compose_config("eval", [f"model={folder}", "data=demo", "bootstrap=20", f"data.packing={packing}",
                                      f"output_dir={tmp_path / packing}"], tmp_path)
        (out[packing],) = evaluate(cfg).values()
    for k in ("acc", "auc", "margin_mean", "snr"):
        assert out["true"]["metrics"][k]["value"] == pytest.approx(out["false"]["metrics"][k]["value"], abs=1e-4)


def test_an_unknown_attention_implementation_names_the_setting(tmp_path):
    with pytest.raises(ValueError, match="backbone.attn_implementation=flash_atention_2"):
        build("tiny_llama", tmp_path, "backbone.attn_implementation=flash_atention_2")


def test_packing_is_refused_for_an_unverified_architecture(tmp_path, caplog):
    """RoBERTa numbers positions from its padding index: not made exact by restarting position ids."""
    from mars.config import ConfigError

    roberta = TINY + ["backbone.model_type=roberta", "+backbone.config_overrides.vocab_size=30522",
                      "data.packing=true", "trainer.max_epochs=1", "export=false"]
    with pytest.raises(ConfigError, match="roberta the rewards of padded ones.*data.allow_unverified_packing=true"):
        train(compose_config("train", roberta, tmp_path))
    metrics, _ = train(compose_config("train", roberta + ["data.allow_unverified_packing=true"], tmp_path))
    assert "roberta, an architecture whose packed rewards mars has not checked" in caplog.text
    assert metrics["test/acc"] == metrics["test/acc"]
