"""Every group member composes; typed groups reject unknown keys and choices loudly."""
from __future__ import annotations

from pathlib import Path

import hydra
import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import open_dict

from mars.config import validate
from tests.conftest import CONF, compose_config

GROUPS = ["data", "backbone", "finetune", "augmenter", "allocator", "trainer", "logger", "callbacks", "experiment",
          "debug"]


def members(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF) / group).glob("*.yaml"))


@pytest.mark.parametrize("group,member", [(g, m) for g in GROUPS for m in members(g)])
def test_every_member_composes_and_validates(group, member, tmp_path):
    cfg = compose_config("train", [f"{group}={member}"], tmp_path)
    if group == "data" and member == "local":
        with open_dict(cfg):
            cfg.data.path = "pairs.jsonl"
    typed = validate(cfg)
    assert set(typed) == {"data", "backbone", "finetune", "optim", "loss", "loop"}


@pytest.mark.parametrize("group", ["allocator", "trainer", "callbacks"])
def test_targets_instantiate(group, tmp_path):
    for member in members(group):
        cfg = compose_config("train", [f"{group}={member}"], tmp_path)
        node = cfg[group]
        if group == "callbacks":
            [hydra.utils.instantiate(c) for c in node.values() if c and "_target_" in c]
        elif group == "trainer":
            if member in ("gpu", "ddp", "fsdp", "deepspeed"):
                continue  # needs a GPU (and deepspeed); composed above, their strategies below
            hydra.utils.instantiate(node)
        else:
            hydra.utils.instantiate(node)


def test_sharded_trainers_name_lightnings_strategies(tmp_path):
    from lightning.pytorch.strategies import ModelParallelStrategy

    fsdp = compose_config("train", ["trainer=fsdp", "trainer.num_nodes=8"], tmp_path).trainer
    strategy = hydra.utils.instantiate(fsdp.strategy)
    assert isinstance(strategy, ModelParallelStrategy) and fsdp.num_nodes == 8 and fsdp.precision == "bf16-true"
    ds = compose_config("train", ["trainer=deepspeed", "trainer.strategy.stage=3"], tmp_path).trainer
    assert ds.strategy._target_ == "lightning.pytorch.strategies.DeepSpeedStrategy" and ds.strategy.stage == 3


def test_eval_config_composes(tmp_path):
    cfg = compose_config("eval", ["model=some/folder", "data=hh_rlhf_offline"], tmp_path)
    assert cfg.split == "test" and validate(cfg)["data"].source == "hh_rlhf"


def test_unknown_group_member_fails(tmp_path):
    with pytest.raises(ConfigCompositionException, match="backbone"):
        compose_config("train", ["backbone=gpt7"], tmp_path)


@pytest.mark.parametrize("override,message", [
    ("+data.sourse=demo", "sourse"),                # misspelt key
    ("data.source=imdb", "data.source='imdb' is not one of"),
    ("++data.on_error=ignore", "data.on_error='ignore'"),
    ("optim.schedule=step", "optim.schedule='step'"),
    ("loop.crossing=grid", "loop.crossing='grid'"),
    ("+backbone.max_len=64", "max_len"),
    ("data.batch_size=many", "batch_size"),
])
def test_bad_values_fail_loudly(override, message, tmp_path):
    # Typed groups reject wrong types while composing; choices and unknown keys at validation.
    with pytest.raises((ValueError, ConfigCompositionException), match=message):
        validate(compose_config("train", [override], tmp_path))


def test_unknown_allocator_option_fails(tmp_path):
    cfg = compose_config("train", ["allocator=mars", "allocator.margin=squared"], tmp_path)
    with pytest.raises(Exception, match="squared"):  # hydra wraps the ValueError
        hydra.utils.instantiate(cfg.allocator)
