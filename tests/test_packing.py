"""Packed, padding-free batches: packed scores equal padded ones (encoder and decoder), the token
budget sampler shards like the pair sampler, packed training iterates exactly D^t, and packing is
refused on architectures where that equality is not checked."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from mars.config import ConfigError, FinetuneConfig, LossConfig, OptimConfig, validate
from mars.data.batch import TokenBudgetSampler
from mars.data.demo import demo_splits
from mars.data.format import PairFormatter
from mars.model.attention import VARLEN_SDPA
from mars.model.backbone import PACKING_VERIFIED, check_packing
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


# Every architecture of PACKING_VERIFIED as a tiny random model ("tiny": BERT, as MiniLM)
VERIFIED = {"tiny": "bert", "tiny_llama": "llama", "tiny_qwen2": "qwen2", "tiny_qwen3": "qwen3"}
# Tiny RoBERTa: positions counted from the padding index, so packed rewards differ from padded ones
ROBERTA = ["backbone.model_type=roberta", "+backbone.config_overrides.vocab_size=30522"]


def test_every_verified_architecture_is_checked_here():
    assert sorted(VERIFIED.values()) == sorted(PACKING_VERIFIED)


@pytest.mark.parametrize("attention", ["default", "eager"])
@pytest.mark.parametrize("name", sorted(VERIFIED))
def test_packed_scores_equal_padded_scores(name, attention, tmp_path, monkeypatch):
    module = build(name, tmp_path, *([] if attention == "default" else [f"backbone.attn_implementation={attention}"]))
    assert module.model.config.model_type == VERIFIED[name]
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


class Built(Exception):
    """Raised where the model would be built: the run got past the packing check."""


def test_packing_is_refused_for_an_unverified_architecture(tmp_path, monkeypatch, caplog):
    """train.py: an error naming the architecture, the checked ones and the override, before any
    model is built; with the override the run goes on, with a warning."""
    def build_reward_model(*args):
        raise Built

    monkeypatch.setattr("mars.lightning.module.build_reward_model", build_reward_model)
    for packed in ("data.packing=true", "data.prefix_sharing=true"):
        with pytest.raises(ConfigError, match=r"give roberta .*\(checked: bert, llama, qwen2, qwen3\).*"
                                              r"data\.allow_unverified_packing=true"):
            train(compose_config("train", TINY + ROBERTA + [packed], tmp_path))
    forced = TINY + ROBERTA + ["data.packing=true", "data.allow_unverified_packing=true"]
    with pytest.raises(Built):
        train(compose_config("train", forced, tmp_path))
    assert "packed batches on roberta, an architecture whose packed rewards mars has not checked" in caplog.text


def test_eval_refuses_unverified_packing_unless_forced(tmp_path, caplog):
    """eval.py's loader: refused before scoring; forced, it scores with a warning, and RoBERTa's
    packed rewards are indeed not its padded ones (were they equal, roberta could join the list)."""
    from mars.evaluation.models import load_scorer
    from mars.model.export import export_reward_model

    folder = export_reward_model(build("tiny", tmp_path, *ROBERTA), str(tmp_path / "export"))
    with pytest.raises(ConfigError, match="give roberta "):
        load_scorer(folder, packing=True)
    from mars.serve.api import RewardAPI  # the server's keys are its own, top-level ones

    with pytest.raises(ConfigError, match=r"^packing: .* Use packing=false, or force it unverified with "
                                          r"allow_unverified_packing=true$"):
        RewardAPI(folder, max_items=8, packing=True).setup("cpu")
    pairs = demo_splits(8, 4, 8)["test"]
    packed = load_scorer(folder, packing=True, allow_unverified_packing=True).pairs(pairs)
    assert "packed batches on roberta, an architecture whose packed rewards mars has not checked" in caplog.text
    assert np.abs(packed.r_chosen - load_scorer(folder).pairs(pairs).r_chosen).max() > 0.1


def test_verified_architectures_pass_the_check_silently(caplog):
    for model_type in PACKING_VERIFIED:
        check_packing(model_type)
    assert not caplog.records
