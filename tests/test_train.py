"""Training end to end on the real config with a tiny random backbone."""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import open_dict

from mars.config import validate
from mars.lightning.module import RewardModule
from mars.cli.runtime import DIGEST_KEY, checkpoint_meta, config_digest, resolve_ckpt_path
from tests.conftest import TINY, compose_config
from mars.cli.train import train


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


def test_bf16_mixed_precision_trains_with_gradient_clipping(tmp_path):
    """trainer=gpu and trainer=ddp use bf16-mixed with clipping; the AMP plugin refuses a fused AdamW."""
    cfg = compose_config("train", TINY + ["backbone=tiny_llama", "trainer.precision=bf16-mixed",
                                          "trainer.max_epochs=1", "test=false", "export=false"], tmp_path)
    assert cfg.trainer.gradient_clip_val > 0
    metrics, objects = train(cfg)
    assert objects["trainer"].global_step == 12 and metrics["train/loss"] == metrics["train/loss"]


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
    assert checkpoint_meta(str(run / "checkpoints" / "last.ckpt"))["digest"] == config_digest(cfg)

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


# ---- resume: only the state of this configuration, and all of it

def test_config_digest_covers_data_loop_and_model_not_the_trainer(tmp_path):
    digest = lambda *o: config_digest(compose_config("train", TINY + list(o), tmp_path))  # noqa: E731
    same = digest()
    assert digest("trainer.max_epochs=5") == digest("data.eval_batch_size=4") == same
    assert digest("paths.cache_dir=/elsewhere") == same  # where variants are cached is not what they are
    for other in ("data.split_seed=1", "data.train_size=80", "allocator=uniform", "loop.budget=10", "seed=1",
                  "finetune=head", "backbone.max_length=32"):
        assert digest(other) != same, other


def test_ckpt_path_last_resumes_the_newest_run_of_this_configuration(tmp_path, caplog):
    import os
    import time

    def checkpoint(run: str, digest: str) -> str:
        path = tmp_path / "train" / "multiruns" / "sweep" / run / "checkpoints" / "last.ckpt"
        path.parent.mkdir(parents=True)
        torch.save({DIGEST_KEY: digest, "epoch": 2, "global_step": 30}, path)
        return str(path)

    mine = checkpoint("0", "mine")
    time.sleep(0.05)
    newer = checkpoint("1", "another")  # a newer job of the same sweep, another configuration
    os.utime(newer, (time.time() + 10, time.time() + 10))
    with caplog.at_level("INFO"):
        assert resolve_ckpt_path("last", str(tmp_path), "train", "mine") == mine
    text = caplog.text
    assert "skipped 1 newer last.ckpt of other configurations: multiruns/sweep/1/checkpoints/last.ckpt" in text
    assert f"resuming {mine} at epoch 2 (step 30)" in text
    with pytest.raises(FileNotFoundError, match="none of the 2 last.ckpt .* this data and loop configuration"):
        resolve_ckpt_path("last", str(tmp_path), "train", "a third")


def test_resume_restores_the_best_validation_accuracy_and_the_epochs_summary(tmp_path, caplog):
    import csv

    cfg = TINY + ["trainer.max_epochs=3", "test=false", "export=false"]
    run_a = tmp_path / "logs" / "train" / "runs" / "killed"
    crashing = compose_config("train", cfg + ["+callbacks.crash._target_=tests.helpers.CrashAtEpoch",
                                              "+callbacks.crash.epoch=2"], tmp_path)
    with open_dict(crashing):
        crashing.paths.output_dir = str(run_a)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crashing)
    saved = torch.load(run_a / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert "val_acc_best.max_value" in saved  # the best so far is part of the checkpoint

    resumed = compose_config("train", cfg + ["ckpt_path=last"], tmp_path / "b")
    with open_dict(resumed):
        resumed.paths.log_dir = str(tmp_path / "logs")
    with caplog.at_level("INFO"):
        metrics, objects = train(resumed)
    val = {}
    for folder in (run_a, tmp_path / "b"):
        for row in csv.DictReader(open(folder / "csv" / "metrics.csv")):
            if row.get("val/acc"):
                val[int(row["epoch"])] = float(row["val/acc"])
    assert sorted(val) == [0, 1, 2]
    assert float(saved["val_acc_best.max_value"]) == max(val[0], val[1])
    assert metrics["val/acc_best"] == pytest.approx(max(val.values()))  # every epoch, not only those after the resume
    assert objects["model"].val_acc_best.compute().item() == pytest.approx(max(val.values()))
    (summary,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("run summary")]
    (epochs,) = [line for line in summary.splitlines() if "validation accuracy by epoch:" in line]
    assert [f"{e}: {val[e]:.3f}" in epochs for e in (0, 1, 2)] == [True] * 3, epochs  # those before the resume too


def test_a_restored_training_set_of_other_base_pairs_is_an_error(tmp_path, caplog):
    loop = TINY + ["allocator=mars", "augmenter=eda", "augmenter.cache_path=null", "loop.budget=24",
                   "test=false", "export=false"]
    first = compose_config("train", loop, tmp_path / "a")
    train(first)
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    other = compose_config("train", loop + ["data.train_size=48", "trainer.max_epochs=3", f"ckpt_path={last}"],
                           tmp_path / "b")
    with caplog.at_level("WARNING"), pytest.raises(ValueError, match="synthetic pairs whose base pair is not this run's"):
        train(other)
    assert "written with another data, loop or model configuration" in caplog.text


# ---- best-of-N after the test

def test_best_of_n_picks_are_the_best_checkpoints(tiny_cfg, tmp_path):
    from mars.evaluation.models import load_scorer

    sets = [{"id": i, "instruction": f"question {i}: what is {i} plus {i}?",
             "candidates": [{"output": f"answer {j} " * (j + 1), "preference": 1.0 + (i * 3 + j) % 5 / 4}
                            for j in range(4)]} for i in range(6)]
    path = tmp_path / "bon.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in sets))
    with open_dict(tiny_cfg):
        tiny_cfg.trainer.max_epochs = 2
        tiny_cfg.best_of_n = str(path)
    metrics, _ = train(tiny_cfg)
    result = json.loads((tmp_path / "best_of_n.json").read_text())
    scorer = load_scorer(str(tmp_path / "export"))  # the exported best checkpoint
    picks = [int(np.argmax(scorer.responses([(s["instruction"], c["output"]) for c in s["candidates"]])))
             for s in sets]
    assert result["picks"] == picks and result["ids"] == [str(i) for i in range(6)]
    assert result["picked_scores"] == [s["candidates"][k]["preference"] - 1 for s, k in zip(sets, picks)]
    assert metrics["best_of_n/win_rate"] == pytest.approx(np.mean(result["picked_scores"]))


def test_best_of_n_without_the_test_is_a_clear_error(tiny_cfg, tmp_path):
    with open_dict(tiny_cfg):
        tiny_cfg.test, tiny_cfg.best_of_n = False, str(tmp_path / "bon.jsonl")
    with pytest.raises(ValueError, match="best_of_n.*test=true"):
        train(tiny_cfg)


def test_pairs_truncation_makes_identical_are_counted_named_and_left_out(tmp_path, caplog):
    """Answers that differ only in their opening, then a long shared text, cut to 64 tokens from
    the left: both sides the same ids. Not in the loss, the test metrics or test_scores.json, but
    named in the log, test_scores.json and mars_export.json."""
    shared = " ".join(f"s{i}" for i in range(60))

    def write(name: str, n: int, early: int) -> str:
        rows = [{"prompt": f"{name} question {i}?", "chosen": f"a good {name} answer {i}", "rejected": f"poor {name} {i}"}
                for i in range(n)]
        rows += [{"prompt": f"why {name} {i}?", "chosen": f"Because it is true. {shared}",
                  "rejected": f"No idea {name} {i}. {shared}"} for i in range(early)]
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(path)

    cfg = compose_config("train", TINY + ["data=local", f"data.path={write('train', 40, 2)}",
                                          f"data.val_path={write('val', 8, 0)}", f"data.test_path={write('test', 8, 4)}",
                                          "data.train_size=42", "data.val_size=8", "data.test_size=12",
                                          "trainer.max_epochs=1"], tmp_path)
    metrics, objects = train(cfg)
    dm = objects["datamodule"]
    assert {k: len(v) for k, v in dm.uninformative.items()} == {"train": 2, "val": 0, "test": 4}
    dump = json.loads((tmp_path / "test_scores.json").read_text())
    assert len(dump["ids"]) == 8 and len(dump["uninformative"]) == 4 and not set(dump["ids"]) & set(dump["uninformative"])
    acc = np.mean(np.array(dump["r_chosen"]) > np.array(dump["r_rejected"]))
    assert metrics["test/acc"] == pytest.approx(acc, abs=1e-6)  # over the 8 that count, from the test pass itself
    assert objects["trainer"].global_step == 5  # 40 of 42 training pairs in batches of 8
    export = json.loads((tmp_path / "export" / "mars_export.json").read_text())
    assert export["uninformative"] == {"train": 2, "val": 0, "test": 4} and export["response_truncation"] == "keep_end"
    assert "test: 4 of 12 pairs are the same token ids on both sides" in caplog.text
    assert dump["uninformative"][0] in caplog.text and "backbone.truncation=keep_start" in caplog.text
