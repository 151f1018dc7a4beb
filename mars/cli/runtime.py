"""Small helpers for the entry points: instantiate groups, log config, find checkpoints, keep the
log to what a user can act on, close loggers."""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import shlex
import warnings
from pathlib import Path
from typing import Any, Optional

import hydra
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from mars.config import register_schemas
from mars.lightning.callbacks import DIGEST_KEY

register_schemas()  # before anything composes train.yaml, whose groups start from the schemas

log = logging.getLogger(__name__)

SECRET = re.compile(r"(api_?key|token|secret|password)", re.I)


def user_error(error: BaseException) -> bool:
    """A mistake in the data, the config, a path or a model folder: its message says what to change."""
    from mars.config import ConfigError
    from mars.data.format import TemplateError
    from mars.data.records import DataFormatError
    from mars.model.export import CheckpointMismatch

    return isinstance(error, (ConfigError, DataFormatError, TemplateError, CheckpointMismatch, FileNotFoundError))


def report_user_errors(task):
    """`task(cfg)` whose user errors (`user_error`) print their message on stderr and exit with
    status 2, without a traceback; HYDRA_FULL_ERROR=1 shows the whole trace, and any other error
    keeps its traceback."""
    import functools
    import sys

    @functools.wraps(task)
    def run(cfg):
        try:
            return task(cfg)
        except Exception as e:  # noqa: BLE001  (sorted below: only user errors are caught)
            if not user_error(e) or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {e}\n(HYDRA_FULL_ERROR=1 shows the whole trace)", file=sys.stderr)
            sys.exit(2)

    return run


def instantiate_group(group: Optional[DictConfig]) -> list[Any]:
    """Every `_target_` entry of a callbacks/logger group (null entries switch one off)."""
    if not group:
        return []
    return [hydra.utils.instantiate(c) for c in group.values() if isinstance(c, DictConfig) and "_target_" in c]


def clean_secrets(node):
    """`node` (plain dicts and lists) without any key that looks like a secret."""
    if isinstance(node, dict):
        return {k: clean_secrets(v) for k, v in node.items() if not SECRET.search(str(k))}
    if isinstance(node, list):
        return [clean_secrets(v) for v in node]
    return node


def loggable_config(cfg: DictConfig) -> dict:
    """The resolved config as a dict, with anything that looks like a secret removed."""
    return clean_secrets(OmegaConf.to_container(cfg, resolve=True))


# What determines D^t and the model a run trains: `ckpt_path=last` resumes only a run of the same.
DIGEST_GROUPS = ("data", "loop", "allocator", "augmenter", "backbone", "finetune", "seed")
NOT_IN_DIGEST = {"cache_path", "num_workers", "eval_batch_size", "device"}  # where and how fast, not what


def config_digest(cfg: DictConfig) -> str:
    """A hash of the resolved data, loop, allocator, augmenter, backbone, finetune and seed config."""

    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in NOT_IN_DIGEST}
        return [strip(v) for v in node] if isinstance(node, list) else node

    chosen = {k: strip(clean_secrets(OmegaConf.to_container(cfg[k], resolve=True)) if isinstance(cfg[k], DictConfig)
                       else cfg[k]) for k in DIGEST_GROUPS if k in cfg}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checkpoint_meta(path: str) -> dict:
    """{digest, epoch, global_step} of a checkpoint file (or sharded checkpoint folder); {} if unreadable."""
    import torch

    files = [path]
    if os.path.isdir(path):  # FSDP: meta.pt; DeepSpeed: checkpoint/mp_rank_00_model_states.pt
        files = glob.glob(os.path.join(path, "meta.pt")) + glob.glob(os.path.join(path, "**", "*model_states.pt"),
                                                                      recursive=True)
    for file in files:
        try:
            ckpt = torch.load(file, map_location="cpu", mmap=True, weights_only=False)  # our own checkpoints
        except Exception:  # noqa: BLE001  (an unreadable or half-written file is skipped, not fatal)
            continue
        return {"digest": ckpt.get(DIGEST_KEY), "epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step")}
    return {}


def resolve_ckpt_path(ckpt_path: Optional[str], log_dir: str, task_name: str,
                      digest: Optional[str] = None) -> Optional[str]:
    """`ckpt_path=last`: the newest `last.ckpt` of this task's runs (single runs and multiruns)
    written with this run's config `digest` (config_digest); newer ones of other configurations
    are skipped, and said so. A path given explicitly is resumed as given (a warning if its
    digest differs)."""
    if ckpt_path != "last":
        if ckpt_path and not os.path.exists(ckpt_path):
            raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist")
        theirs = checkpoint_meta(ckpt_path).get("digest") if ckpt_path and digest else digest
        if theirs != digest:
            log.warning("ckpt_path=%s was written with another data, loop or model configuration (config digest "
                        "%s, this run %s): resuming it as asked; check that this is the run you meant",
                        ckpt_path, theirs or "none", digest)
        return ckpt_path
    root = os.path.join(log_dir, task_name)
    found = sorted(glob.glob(os.path.join(root, "**", "checkpoints", "last*.ckpt"), recursive=True),
                   key=os.path.getmtime, reverse=True)
    if not found:
        raise FileNotFoundError(f"ckpt_path=last: no last.ckpt under {root}")
    skipped = []
    for path in found:
        meta = checkpoint_meta(path)
        if digest is None or meta.get("digest") == digest:
            break
        skipped.append(path)
    else:
        raise FileNotFoundError(f"ckpt_path=last: none of the {len(found)} last.ckpt under {root} was written with "
                                f"this data and loop configuration (config digest {digest}); the newest is "
                                f"{found[0]}: pass ckpt_path=<file> to resume one anyway")
    if skipped:
        log.info("ckpt_path=last: skipped %d newer last.ckpt of other configurations: %s", len(skipped),
                 ", ".join(os.path.relpath(p, root) for p in skipped))
    log.info("ckpt_path=last: resuming %s at epoch %s (step %s), the newest run with this data and loop "
             "configuration (config digest %s)", path, meta.get("epoch"), meta.get("global_step"), digest)
    return path


class DropMessages(logging.Filter):
    """Drops a logger's records that start with one of `prefixes`."""

    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


# Messages that ask nothing of a mars user, silenced one by one (logger, message start, why).
NOISE = (
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip:", "an advertisement for a cloud logger"),
)
# Lightning's own call into torch's pytree, deprecated by torch 2.13, and transformers 5's renamed
# gradient checkpointing, called by TRL's trainers (mars.align): nothing for a user to change.
WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",
            r"`(is_)?gradient_checkpointing(_enable|_disable)?` is deprecated")


def quiet_known_noise() -> None:
    """Silence exactly the third-party messages in NOISE and WARNINGS (idempotent)."""
    for name, prefix, _why in NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) and prefix in f.prefixes for f in logger.filters):
            logger.addFilter(DropMessages(prefix))
    for message in WARNINGS:
        warnings.filterwarnings("ignore", message=message)


def close_loggers(loggers: list, failed: bool) -> None:
    """Close every logger: W&B's run is finished (exit code 1 on failure; each job of a multirun
    gets its own run); the others are finalised as failed (Lightning does so only for failures
    inside fit and test)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            if wandb.run is not None:  # this job's run, if it started one: never start a run only to close it
                wandb.run.finish(exit_code=1 if failed else 0)
        elif failed:
            logger.finalize("failed")


def next_commands(cfg: DictConfig, model: str, max_epochs: Optional[int]) -> list[str]:
    """What to try after a run: evaluate its model, train it on from its last checkpoint."""
    from hydra.core.hydra_config import HydraConfig

    data, overrides = "<data>", []
    if HydraConfig.initialized():  # under `python train.py`: the data choice and overrides as typed
        data = HydraConfig.get().runtime.choices.get("data", data)
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(("ckpt_path=", "trainer.max_epochs="))]
    here = os.path.relpath(model) if model and not os.path.relpath(model).startswith("..") else model
    commands = [f"python eval.py model={here} data={data}"] if model else []
    more = f" trainer.max_epochs={max_epochs + 2}" if max_epochs and max_epochs > 0 else ""
    commands.append(" ".join(["python train.py", *map(shlex.quote, overrides), f"ckpt_path=last{more}"])
                    + "   # train on")
    return commands


def compose_run_config(name: str, overrides: list[str], output_dir, data_dir=None) -> DictConfig:
    """The real config of `conf/NAME.yaml` composed outside `@hydra.main` (tests, benchmarks, the
    study), with every path of the run under `output_dir` and the data in `data_dir` (None: as
    configured)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import mars.config  # noqa: F401  (registers the data/backbone schemas)

    GlobalHydra.instance().clear()
    conf = str(Path(__file__).resolve().parents[2] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=False)
    return place_run(cfg, output_dir, data_dir)


def place_run(cfg: DictConfig, output_dir, data_dir=None) -> DictConfig:
    """`cfg` with every path of the run under `output_dir` and the data in `data_dir` (None: as
    configured)."""
    output_dir = Path(output_dir)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir / "logs")
        cfg.paths.cache_dir = str(output_dir / "cache")
        if data_dir is not None:
            cfg.paths.data_dir = str(data_dir)
    return cfg
