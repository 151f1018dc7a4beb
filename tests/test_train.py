"""Training end to end on the real config with a tiny random backbone."""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import open_dict

from mars.config import validate
from mars.model.module import RewardModule
from tests.conftest import TINY, compose_config
from train import train


def test_training_changes_every_trainable_parameter(tiny_cfg):
    with open_dict(tiny_cfg):
        tiny_cfg.trainer.max_epochs = 1
        # −log σ(r⁺ − r⁻) is blind to a shift of all rewards, so the head's bias gets a gradient
        # only from the centering term.
        tiny_cfg.loss.center_rewards_coef = 0.01
    typed = validate(tiny_cfg)
    L.seed_everything(tiny_cfg.seed, workers=True)
    initial = RewardModule(typed["backbone"], typed["finetune"], typed["optim"], typed["loss"])
    initial.configure_model()
    initial = initial.state_dict()
    metrics, objects = train(tiny_cfg)
    trained = objects["model"]
    unchanged = [n for n, p in trained.named_parameters()
                 if p.requires_grad and torch.equal(p.detach(), initial[n])]
    assert not unchanged, f"parameters not updated by training: {unchanged}"
    # The logged test accuracy is that of the per-pair scores the run dumped (exact, not batch means).
    dump = json.loads((Path(tiny_cfg.paths.output_dir) / "test_scores.json").read_text())
    acc = sum(c > r for c, r in zip(dump["r_chosen"], dump["r_rejected"])) / len(dump["ids"])
    assert metrics["test/acc"] == pytest.approx(acc, abs=1e-6) and len(dump["ids"]) == 32


@pytest.mark.parametrize("dropout", [0.0, 0.25, None])
def test_backbone_dropout_sets_every_dropout(dropout, tmp_path):
    from mars.model.backbone import load_network, load_tokenizer

    cfg = compose_config("train", TINY + ["+backbone.config_overrides.hidden_dropout_prob=0.1",
                                          "+backbone.config_overrides.attention_probs_dropout_prob=0.1",
                                          f"backbone.dropout={'null' if dropout is None else dropout}"], tmp_path)
    backbone = validate(cfg)["backbone"]
    model = load_network(backbone, load_tokenizer(backbone))
    rates = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == ({0.1} if dropout is None else {dropout})  # null keeps the checkpoint's own


def test_dropout_out_of_range_is_a_clear_error():
    from mars.config import BackboneConfig

    with pytest.raises(ValueError, match="backbone.dropout=1.0"):
        BackboneConfig(dropout=1.0)


def test_resume_continues_step_count(tmp_path):
    run = tmp_path / "logs" / "train" / "runs" / "first"
    cfg = compose_config("train", TINY + ["test=false", "export=false"], tmp_path)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run)
    _, first = train(cfg)
    steps_per_epoch = first["trainer"].global_step // 2
    assert (run / "checkpoints" / "last.ckpt").exists()

    resumed = compose_config("train", TINY + ["test=false", "export=false", "trainer.max_epochs=3",
                                               "ckpt_path=last"], tmp_path)
    with open_dict(resumed):
        resumed.paths.output_dir = str(tmp_path / "logs" / "train" / "runs" / "second")
    _, second = train(resumed)
    assert second["trainer"].current_epoch == 3
    assert second["trainer"].global_step == 3 * steps_per_epoch


def test_bad_ckpt_path_is_a_clear_error(tiny_cfg):
    with open_dict(tiny_cfg):
        tiny_cfg.ckpt_path = "/nonexistent/last.ckpt"
    with pytest.raises(FileNotFoundError, match="/nonexistent/last.ckpt"):
        train(tiny_cfg)


def test_metrics_json_and_export_written(tiny_cfg, tmp_path):
    from transformers import AutoModelForSequenceClassification

    with open_dict(tiny_cfg):
        tiny_cfg.trainer.max_epochs = 1
    metrics, _ = train(tiny_cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test/acc"] == pytest.approx(metrics["test/acc"])
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export")
    assert model.config.num_labels == 1 and model.config.pad_token_id == 0
