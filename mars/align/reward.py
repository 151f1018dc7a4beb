"""A mars reward model as a TRL reward function, scored exactly as mars scores (same formatter,
truncation and scorer as eval.py), with the paper's optional per-batch normalisation.

TRL calls each reward function with the batch's prompts and completions and passes the dataset's
other columns as keywords: `mars_prompt` is the prompt as mars formats it (an HH-RLHF dialogue
string or a plain instruction), so the reward model sees what it was trained on.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from mars.config import ConfigError
from mars.evaluation.models import load_scorer, resolve_model
from mars.model.scoring import Scorer


def check_reward_model(key: str, path: str) -> str:
    """What to load for `path` (a mars export, run folder or .ckpt, or a sequence-classification
    model with one label); anything else is a ConfigError naming `key`, before any training."""
    target, _ = resolve_model(path)
    if target.endswith(".ckpt"):
        if not os.path.isfile(target):
            raise ConfigError(f"{key}={path}: no such checkpoint")
        return target
    if os.path.exists(os.path.join(target, "mars_export.json")):
        return target
    if os.path.isdir(path) and not os.path.exists(os.path.join(target, "config.json")):
        raise ConfigError(f"{key}={path} is not a reward model: no mars_export.json, export/ or config.json in it "
                          "(give a mars export, a train.py run folder or a .ckpt)")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(target)
    except OSError as e:
        raise ConfigError(f"{key}={path}: not a folder, checkpoint or reachable Hub model ({e})") from None
    heads = [a for a in (config.architectures or []) if a.endswith("ForSequenceClassification")]
    if not heads or getattr(config, "num_labels", 1) != 1:
        raise ConfigError(f"{key}={path} is not a reward model: its architectures are {config.architectures} "
                          f"with {getattr(config, 'num_labels', '?')} labels; a reward model is a sequence "
                          "classifier with one output (a mars export, a train.py run folder, a .ckpt)")
    return target


def completion_text(completion) -> str:
    """A TRL completion: a string, or a conversation whose last message is the answer."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


class RewardFunction:
    """Rewards of a batch's (prompt, completion) under one reward model; `normalize`: z-scored over
    the batch and clipped to ±`clip` (the paper's v2). `raw` holds the last batch's raw rewards."""

    def __init__(self, name: str, scorer: Scorer, normalize: bool = False, clip: Optional[float] = None):
        self.__name__ = name  # TRL logs rewards/<name>/mean
        self.scorer, self.normalize, self.clip = scorer, normalize, clip
        self.raw = np.zeros(0)

    @classmethod
    def load(cls, name: str, model: str, device: str, batch_size: int = 16, normalize: bool = False,
             clip: Optional[float] = None) -> "RewardFunction":
        scorer = load_scorer(model, batch_size=batch_size)
        scorer.model.to(device)
        return cls(name, scorer, normalize, clip)

    def __call__(self, prompts, completions, mars_prompt, **_) -> list[float]:
        self.raw = self.scorer.responses([(p, completion_text(c)) for p, c in zip(mars_prompt, completions)])
        rewards = self.raw
        if self.normalize:
            rewards = (rewards - rewards.mean()) / (rewards.std() + 1e-8) if len(rewards) > 1 else rewards * 0
        if self.clip is not None:
            rewards = np.clip(rewards, -self.clip, self.clip)
        return [float(r) for r in rewards]


class RawReward:
    """The raw rewards a normalised RewardFunction computed for this batch (weight 0: logged, not
    trained on), so the log shows the proxy reward itself, not its z-score."""

    def __init__(self, of: RewardFunction):
        self.__name__, self.of = f"{of.__name__}_raw", of

    def __call__(self, prompts, completions, **_) -> list[float]:
        return [float(r) for r in self.of.raw]

