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
    assert set(typed) == {"data", "backbone", "finetune", "optim", "loss", "loop", "progress"}


@pytest.mark.parametrize("group", ["allocator", "trainer", "callbacks"])
def test_targets_instantiate(group, tmp_path):
    import lightning as L

    from mars.allocators.base import Allocator

    for member in members(group):
        cfg = compose_config("train", [f"{group}={member}"], tmp_path)
        node = cfg[group]
        if group == "callbacks":
            built = [hydra.utils.instantiate(c) for c in node.values() if c and "_target_" in c]
            assert all(isinstance(c, L.Callback) for c in built) and (built or member == "none"), member
        elif group == "trainer":
            if member in ("gpu", "ddp", "fsdp", "deepspeed"):
                continue  # needs a GPU (and deepspeed); composed above, their strategies below
            trainer = hydra.utils.instantiate(node)
            assert isinstance(trainer, L.Trainer) and trainer.max_epochs == node.max_epochs, member
        else:
            allocator = hydra.utils.instantiate(node)
            assert isinstance(allocator, Allocator) and allocator.spends_budget == (member != "none"), member


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


def test_default_config_is_the_schemas(tmp_path):
    """Every default written once: the composed train config's optim, loss and loop are the
    schemas' own defaults, and the typed groups' files set nothing their schema does not know."""
    import dataclasses

    from omegaconf import OmegaConf

    from mars.config import SCHEMAS

    cfg = compose_config("train", [], tmp_path)
    for group in ("optim", "loss", "loop"):
        defaults = OmegaConf.to_container(OmegaConf.structured(SCHEMAS[group]))
        assert OmegaConf.to_container(cfg[group]) == defaults, group
    typed = validate(cfg)
    for group, schema in SCHEMAS.items():
        assert {f.name for f in dataclasses.fields(schema)} >= set(cfg[group]), group
    assert typed["loop"] == SCHEMAS["loop"]()  # budget 400 and one warm-up epoch, as train.yaml used to say


@pytest.mark.parametrize("group", ["allocator", "augmenter", "judge", "policy"])
def test_target_members_agree_with_their_constructors(group, tmp_path):
    """A value a `_target_` member's YAML sets is the one a user overrides; where its constructor
    also has a default, the two may not disagree (a member built on another, like mars_signed on
    mars, changes its base's values on purpose)."""
    import inspect

    from hydra.utils import get_class
    from omegaconf import OmegaConf

    for member in members(group):
        if "defaults" in OmegaConf.load(Path(CONF) / group / f"{member}.yaml"):
            continue
        name = "eval" if group in ("judge", "policy") else "train"
        overrides = [f"{group}={member}"] + (["model=x"] if name == "eval" else [])
        node = OmegaConf.to_container(compose_config(name, overrides, tmp_path)[group], resolve=False)
        params = inspect.signature(get_class(node.pop("_target_"))).parameters
        for key, value in node.items():
            default = params[key].default if key in params else inspect.Parameter.empty
            if isinstance(default, tuple):
                default = list(default)
            if default is not inspect.Parameter.empty and not (isinstance(value, str) and ("${" in value or value == "???")):
                assert default == value, f"conf/{group}/{member}.yaml sets {key}={value!r}, its constructor {default!r}"


def test_eval_scores_in_the_data_groups_batches(tmp_path):
    """One batch size for scoring, the data group's (no second `batch_size` beside it)."""
    cfg = compose_config("eval", ["model=x", "data=hh_rlhf_offline"], tmp_path)
    assert "batch_size" not in cfg and validate(cfg)["data"].eval_batch_size == cfg.data.eval_batch_size
