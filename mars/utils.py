"""Small helpers for the entry points: instantiate groups, log config, find checkpoints."""
from __future__ import annotations

import glob
import logging
import os
import re
from typing import Any, Optional

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

SECRET = re.compile(r"(api_?key|token|secret|password)", re.I)


def instantiate_group(group: Optional[DictConfig]) -> list[Any]:
    """Every `_target_` entry of a callbacks/logger group (null entries switch one off)."""
    if not group:
        return []
    return [hydra.utils.instantiate(c) for c in group.values() if isinstance(c, DictConfig) and "_target_" in c]


def loggable_config(cfg: DictConfig) -> dict:
    """The resolved config as a dict, with anything that looks like a secret removed."""

    def clean(node):
        if isinstance(node, dict):
            return {k: clean(v) for k, v in node.items() if not SECRET.search(str(k))}
        if isinstance(node, list):
            return [clean(v) for v in node]
        return node

    return clean(OmegaConf.to_container(cfg, resolve=True))


def resolve_ckpt_path(ckpt_path: Optional[str], log_dir: str, task_name: str) -> Optional[str]:
    """`ckpt_path=last`: the newest `last.ckpt` of this task's runs (single runs and multiruns)."""
    if ckpt_path != "last":
        if ckpt_path and not os.path.exists(ckpt_path):
            raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist")
        return ckpt_path
    found = glob.glob(os.path.join(log_dir, task_name, "**", "checkpoints", "last*.ckpt"), recursive=True)
    if not found:
        raise FileNotFoundError(f"ckpt_path=last: no last.ckpt under {os.path.join(log_dir, task_name)}")
    newest = max(found, key=os.path.getmtime)
    log.info("resuming from the latest checkpoint %s", newest)
    return newest


def compose_run_config(name: str, overrides: list[str], output_dir, data_dir) -> DictConfig:
    """The real config of `conf/NAME.yaml` composed outside `@hydra.main` (tests, benchmarks),
    with every path of the run under `output_dir`."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import mars.config  # noqa: F401  (registers the data/backbone schemas)

    GlobalHydra.instance().clear()
    conf = str(Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=False)
    output_dir = Path(output_dir)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir / "logs")
        cfg.paths.cache_dir = str(output_dir / "cache")
        cfg.paths.data_dir = str(data_dir)
    return cfg
