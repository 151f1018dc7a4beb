"""Prefix sharing (`data.prefix_sharing`): a decoder pair as one sequence prefix · chosen ·
rejected gives the rewards and the training of its two sequences alone, through SDPA per pair and
the eager mask, with truncation on either side, multi-turn prompts, LoRA and the fast modes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mars.config import ConfigError, LossConfig, OptimConfig, validate
from mars.data.batch import PrefixSharedCollator, pair_tokens, shared_prefix
from mars.data.demo import demo_splits
from mars.data.format import PairFormatter
from mars.data.records import PreferencePair
from mars.lightning.module import RewardModule
from mars.model.scoring import Scorer
from tests.conftest import TINY, compose_config
from mars.cli.train import train


def build(name: str, tmp_path, *overrides: str, finetune: str = "full") -> RewardModule:
    torch.manual_seed(0)
    typed = validate(compose_config("train", [f"backbone={name}", f"finetune={finetune}",
                                              "+backbone.config_overrides.initializer_range=0.3", *overrides],
                                    tmp_path))
    module = RewardModule(typed["backbone"], typed["finetune"], OptimConfig(), LossConfig())
    module.configure_model()
    return module.eval()


def dialogues(n: int) -> list[PreferencePair]:
    """Multi-turn HH prompts, long enough that the 64-token backbones cut them (and some answers)."""
    pairs = []
    for i in range(n):
        turns = "".join(f"\n\nHuman: question {i} part {k} about things\n\nAssistant: answer {k} of {i}"
                        for k in range(1 + i % 4))
        pairs.append(PreferencePair(f"d{i}", turns + f"\n\nHuman: and finally {i}?\n\nAssistant:",
                                    f"Yes, because {i} " + "so " * (i * 3), f"No {i} " + "well " * (40 - i)))
    return pairs


def scores(module, pairs, **kw):
    scorer = Scorer(PairFormatter.of(module.tokenizer, module.backbone_cfg), module.tokenizer.pad_token_id, module,
                    8, max_tokens=400, **kw)
    return scorer.pairs(pairs, features=True)


@pytest.mark.parametrize("truncation", ["keep_end", "keep_start"])
@pytest.mark.parametrize("attention", ["default", "eager"])
@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen2"])
def test_shared_scores_equal_unshared(name, attention, truncation, tmp_path):
    overrides = [f"backbone.truncation={truncation}"] + ([] if attention == "default" else
                                                         [f"backbone.attn_implementation={attention}"])
    module = build(name, tmp_path, *overrides)
    pairs = demo_splits(40, 10, 30, seed=0)["test"][:12] + dialogues(12)
    alone, shared = scores(module, pairs), scores(module, pairs, prefix_sharing=True)
    np.testing.assert_allclose(shared.r_chosen, alone.r_chosen, atol=1e-4)
    np.testing.assert_allclose(shared.r_rejected, alone.r_rejected, atol=1e-4)
    np.testing.assert_allclose(shared.features, alone.features, atol=1e-4)
    assert np.std(alone.margins) > 1e-2 and alone.truncated.any()
    encoded = PairFormatter.of(module.tokenizer, module.backbone_cfg).encode(pairs)
    assert sum(shared_prefix(e.chosen, e.rejected) for e in encoded) > 0.2 * sum(len(e.chosen) for e in encoded)


@pytest.mark.parametrize("finetune", ["lora", "top_layers"])
def test_shared_scores_equal_unshared_with_lora_and_the_fast_modes(finetune, tmp_path):
    module = build("tiny_llama", tmp_path, finetune=finetune)
    pairs = dialogues(10)
    alone, shared = scores(module, pairs), scores(module, pairs, prefix_sharing=True)
    np.testing.assert_allclose(shared.margins, alone.margins, atol=1e-4)


def test_shared_scores_equal_unshared_on_qwen3(tmp_path):
    """qwen3 is in PACKING_VERIFIED, which gates prefix sharing too."""
    module = build("tiny_qwen3", tmp_path)
    pairs = dialogues(12)
    alone, shared = scores(module, pairs), scores(module, pairs, prefix_sharing=True)
    np.testing.assert_allclose(shared.r_chosen, alone.r_chosen, atol=1e-4)
    np.testing.assert_allclose(shared.r_rejected, alone.r_rejected, atol=1e-4)
    assert np.std(alone.margins) > 1e-2


def test_collator_layout():
    from mars.data.format import EncodedPair

    pairs = [EncodedPair(0, [5, 6, 7, 8], [5, 6, 9]), EncodedPair(1, [1, 2], [3, 4, 5])]
    batch = PrefixSharedCollator()(pairs)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 1, 2, 3, 4, 5]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 2, 0, 1, 0, 1, 2]]
    assert batch["segments"].tolist() == [[2, 2, 1], [0, 2, 3]]
    assert [pair_tokens(e, True) for e in pairs] == [5, 5] and [pair_tokens(e, False) for e in pairs] == [7, 5]
    assert shared_prefix([1, 2], [1, 2]) == 1  # each side keeps its last token


def test_training_is_the_same_as_packed(tmp_path):
    """One batch of all pairs per epoch either way, so the steps are the same; three of them."""
    common = TINY + ["backbone=tiny_llama", "data.train_size=24", "data.max_tokens_per_batch=100000",
                     "trainer.max_epochs=3", "export=false"]
    packed, _ = train(compose_config("train", common + ["data.packing=true"], tmp_path / "packed"))
    shared, objects = train(compose_config("train", common + ["data.prefix_sharing=true"], tmp_path / "shared"))
    assert objects["trainer"].global_step == 3
    for key in ("train/loss", "val/loss", "val/margin_mean", "test/margin_mean", "test/acc"):
        assert shared[key] == pytest.approx(packed[key], abs=1e-5), key


def test_an_encoder_is_refused(tmp_path):
    module = build("tiny", tmp_path)
    with pytest.raises(ConfigError, match="decoder-only"):
        scores(module, dialogues(2), prefix_sharing=True)
