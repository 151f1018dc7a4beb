"""The alignment stage, start to end: check everything, align one policy per reward model, answer the
held-out prompts with every policy, judge, report.

Everything a user can get wrong (a reward model folder that is no reward model, a policy without a
chat template, an algorithm TRL lacks, held-out prompts that are also training prompts, a judge
that is not judging against the other policy's answer) is a ConfigError before any training. Every
stage is resumable: a finished policy is not trained again, an unfinished one resumes from its last
checkpoint, and answers and verdicts come from their caches.
"""
from __future__ import annotations

import gc
import json
import logging
import os
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from mars.align.judging import START, answer, judge_matchups, matchups, outcome
from mars.align.prompts import load_prompts_for
from mars.align.report import curves, markdown, plot_curves
from mars.align.reward import RewardFunction, check_reward_model
from mars.align.trainer import device, load_policy_tokenizer, train_policy, trl_classes
from mars.config import ConfigError, typed
from mars.evaluation.best_of_n import mean_interval
from mars.generation.embedded import resolve

log = logging.getLogger("mars.align")


def reward_models(cfg: DictConfig) -> dict[str, str]:
    """name → what to load, each checked to be a reward model."""
    if not isinstance(cfg.reward_models, DictConfig) or not cfg.reward_models:
        raise ConfigError("reward_models: give one or more by name, e.g. +reward_models.mars=logs/train/runs/A "
                          "+reward_models.uniform=logs/train/runs/B (or reward_models='{mars: A, uniform: B}')")
    if START in cfg.reward_models:
        raise ConfigError(f"reward_models.{START}: the name '{START}' is the starting policy's; pick another")
    return {name: check_reward_model(f"reward_models.{name}", str(path)) for name, path in cfg.reward_models.items()}


def judge_for(cfg: DictConfig):
    """The configured judge, comparing against the other policy's answer; a gold judge without a
    model of its own uses `gold`."""
    judge_cfg = cfg.judge
    if judge_cfg._target_.endswith("GoldRewardJudge") and OmegaConf.is_missing(judge_cfg, "model"):
        if not cfg.gold:
            raise ConfigError("judge=gold needs a gold reward model: set gold=FOLDER (or judge.model=FOLDER), or use "
                              "judge=chat judge.model=NAME")
        with open_dict(judge_cfg):
            judge_cfg.model = check_reward_model("gold", str(cfg.gold))
    if judge_cfg.baseline not in ("auto", "reference"):
        raise ConfigError(f"judge.baseline={judge_cfg.baseline}: policies are judged against each other's answers; "
                          "use judge.baseline=reference")
    return instantiate(judge_cfg)


def align(cfg: DictConfig) -> dict:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    targets = reward_models(cfg)
    gold = check_reward_model("gold", str(cfg.gold)) if cfg.gold else None
    load_policy_tokenizer(cfg.start_policy)
    trl_classes(cfg.rl.algorithm)
    if cfg.rl.completions_per_prompt < 2:
        raise ConfigError(f"rl.completions_per_prompt={cfg.rl.completions_per_prompt}: GRPO and RLOO compare "
                          "completions of one prompt; give at least 2")
    judge = judge_for(cfg)
    prompts = load_prompts_for(typed(cfg, "data"), cfg.prompts.train, cfg.prompts.heldout, cfg.prompts.heldout_path)
    (out / "prompts.json").write_text(json.dumps({"train": prompts.train, "heldout_ids": prompts.ids,
                                                  "heldout": prompts.heldout}, indent=1))
    log.info("%d training prompts, %d held-out prompts; %d policies to align", len(prompts.train),
             len(prompts.heldout), len(targets))

    dev = device()
    gold_reward = RewardFunction.load("gold", gold, dev) if gold else None
    policies = {START: resolve(cfg.start_policy)}
    proxies = {}
    for name, target in targets.items():
        proxies[name] = RewardFunction.load("proxy", target, dev, normalize=cfg.rl.normalize, clip=cfg.rl.clip)
        policies[name] = str(train_policy(out / "policies" / name, cfg.start_policy, proxies[name], gold_reward,
                                          prompts.train, cfg.rl, cfg.lora, cfg.seed, list(cfg.report_to)))
        gc.collect()

    answers = answer(policies, prompts.heldout, cfg.answers, cfg.seed)
    with open(out / "answers.jsonl", "w") as f:
        for k, (i, p) in enumerate(zip(prompts.ids, prompts.heldout)):
            f.write(json.dumps({"id": i, "prompt": p, **{n: a[k] for n, a in answers.items()}}) + "\n")
    pairs = matchups(list(targets))
    scores, gold_of = judge_matchups(judge, prompts.heldout, prompts.ids, answers, pairs)
    result = {"policy": cfg.start_policy, "algorithm": cfg.rl.algorithm, "steps": cfg.rl.max_steps, "ci": cfg.ci,
              "prompts": {"train": len(prompts.train), "heldout": len(prompts.heldout)},
              "judge": {**judge.describe(), "stats": judge.stats},
              "matchups": [{"a": a, "b": b, **outcome(scores[(a, b)], cfg.bootstrap, cfg.ci, cfg.seed)}
                           for a, b in pairs],
              "policies": {}, "curves": {n: curves(out / "policies" / n / "steps.jsonl") for n in targets}}
    for name in policies:  # paths as given, aligned policies relative to the report: the folder moves whole
        given = cfg.start_policy if name == START else os.path.relpath(policies[name], out)
        p = result["policies"][name] = {"path": given, "length": float(np.mean([len(a) for a in answers[name]]))}
        if name in targets:
            p["reward_model"] = str(cfg.reward_models[name])
        if name in proxies:  # the proxy a policy was trained on, on its answers and on the start's
            rows = list(zip(prompts.heldout, answers[name]))
            p["proxy"] = float(proxies[name].scorer.responses(rows).mean())
            p["proxy_of_start"] = float(proxies[name].scorer.responses(list(zip(prompts.heldout,
                                                                                answers[START]))).mean())
        if name in gold_of:
            p["gold"] = mean_interval(gold_of[name], cfg.bootstrap, cfg.ci, cfg.seed)
    (out / "align.json").write_text(json.dumps(result, indent=2, default=str))
    report = markdown(result)
    (out / "report.md").write_text(report)
    if any(result["curves"].values()):
        plot_curves(result["curves"], out / "training_curves.png")
    print(report)
    log.info("report written to %s", out.resolve())
    return result
