"""The real decoder: SmolLM2-135M-Instruct with LoRA, a few steps on real UltraFeedback pairs:
the loss on the pairs it trained on falls, and the merged export reloads to the same scores."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mars.model.export import load_for_eval
from mars.model.loss import bradley_terry_loss
from tests.conftest import DATA_DIR, compose_config, require_data, score
from mars.cli.train import train

pytestmark = pytest.mark.slow


def loss(r_c, r_r) -> float:
    return float(bradley_terry_loss(torch.tensor(r_c), torch.tensor(r_r)))


def test_smollm2_lora_learns_and_export_reloads(tmp_path):
    require_data()
    cfg = compose_config("train", [
        "data=ultrafeedback_offline", "data.train_size=16", "data.val_size=8", "data.batch_size=4",
        "data.eval_batch_size=8", "backbone=smollm2", "backbone.max_length=64", "backbone.min_prompt_tokens=16",
        "finetune=lora", "finetune.r=8", "allocator=none", "augmenter=none", "trainer.max_epochs=1",
        "optim.lr=2e-3", "optim.warmup_ratio=0", "test=false", "callbacks.model_summary=null"], tmp_path)
    import lightning as L

    from mars.config import validate
    from mars.lightning.module import RewardModule

    typed = validate(cfg)
    L.seed_everything(cfg.seed)
    untrained = RewardModule(typed["backbone"], typed["finetune"], typed["optim"], typed["loss"])
    untrained.configure_model()
    _, objects = train(cfg)
    pairs = objects["datamodule"].loop.base
    before, after = loss(*score(untrained, pairs)[:2]), loss(*score(objects["model"], pairs)[:2])
    assert after < before - 0.05, (before, after)

    exported = load_for_eval(str(tmp_path / "export"))
    assert exported.model.decoder and exported.tokenizer.chat_template
    val = objects["datamodule"].splits["val"]
    e_c, e_r, _ = score(exported, val)
    m_c, m_r, _ = score(objects["model"], val)  # the best checkpoint's weights, adapters unmerged
    np.testing.assert_allclose(e_c, m_c, atol=1e-3)
    np.testing.assert_allclose(e_r, m_r, atol=1e-3)

    # prefix sharing on the real decoder: the rewards of the two sequences alone, on multi-turn
    # HH-RLHF dialogues that fit 192 tokens (their prompts shared whole) and on two cut pairs
    import dataclasses

    from mars.data.batch import shared_prefix
    from mars.data.format import PairFormatter
    from mars.data.sources import load_pairs
    from mars.model.scoring import Scorer

    module = objects["model"]
    formatter = PairFormatter.of(module.tokenizer, dataclasses.replace(module.backbone_cfg, max_length=192))
    hh = load_pairs("hh_rlhf", path=str(DATA_DIR / "hh-rlhf" / "harmless-base-test.jsonl.gz"), on_error="skip").pairs
    fitting = [p for p, e in zip(hh[:40], formatter.encode(hh[:40])) if not any(e.truncated)][:6]
    pairs = val[:2] + fitting
    encoded = formatter.encode(pairs)
    tokens = sum(len(e.chosen) + len(e.rejected) for e in encoded)
    assert len(fitting) == 6 and sum(shared_prefix(e.chosen, e.rejected) for e in encoded) > 0.2 * tokens
    alone, shared = (Scorer(formatter, module.tokenizer.pad_token_id, module.model, 8, max_tokens=512,
                            prefix_sharing=sharing).pairs(pairs) for sharing in (False, True))
    np.testing.assert_allclose(shared.r_chosen, alone.r_chosen, atol=1e-4)
    np.testing.assert_allclose(shared.r_rejected, alone.r_rejected, atol=1e-4)
