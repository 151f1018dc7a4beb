"""Evaluate reward models on any data config and write a report.

    python eval.py model=logs/train/runs/X/export data=hh_rlhf_offline
    python eval.py 'model=[runs/A,runs/B]' data=rewardbench split=all
    python eval.py model=runs/A data=alpacaeval_bon          # best-of-N win-rate judged by GPT-4
    python eval.py model=runs/A data=rewardbench2            # RewardBench 2, scored as the leaderboard
    python eval.py model=runs/A data=prompts data.path=prompts.jsonl policy=smollm2 policy.n=4 \
        judge=gold judge.model=runs/GOLD/export               # best-of-N over your own prompts

`model`: one or several `.ckpt` files, export folders, Hub names or run folders (a run folder's
export is evaluated and its rounds/ plotted). The report folder gets eval.json, report.md and PNG
plots: accuracy with bootstrap intervals, margin densities, budget per round and curvature bins;
for best-of-N sets the win-rates with intervals and the best-of-k curves.

`policy` (conf/policy/) samples the candidates of each prompt (mars/evaluation/policy.py) and
`judge` (conf/judge/) scores them against a baseline answer (mars/evaluation/judge.py); the judged
sets are written to candidates.jsonl, which `data=candidates data.path=...` evaluates again.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig

from mars.config import CANDIDATE_SOURCES, ConfigError, typed
from mars.data.candidates import load_sets
from mars.data.splits import load_pool, load_splits
from mars.evaluation.best_of_n import best_of_n, format_best_of_n
from mars.evaluation.models import CandidateRewards, load_scorer, resolve_model
from mars.evaluation.pairwise import bootstrap, by_group, format_table
from mars.evaluation.rewardbench import rewardbench2_scores, rewardbench_scores, subset_accuracy
from mars.evaluation.plots import best_of_n_plots, eval_plots
from mars.model.scoring import Scorer, Scores

log = logging.getLogger("mars.eval")


def scorer_for(cfg: DictConfig, model: str) -> Scorer:
    data = typed(cfg, "data")
    return load_scorer(model, cfg.get("max_length"), data.eval_batch_size, data.packing, data.max_tokens_per_batch,
                       data.prefix_sharing, data.allow_unverified_packing)


def evaluate_one(cfg: DictConfig, model: str, pairs) -> tuple[dict, np.ndarray, Scores]:
    """A model's report on pairs; its margins over the pairs it could score; every pair's scores.
    Pairs that truncation made uninformative (both sides the same ids) are counted apart and are
    not in accuracy or any other metric."""
    scorer = scorer_for(cfg, model)
    scores = scorer.pairs(pairs)
    keep = np.flatnonzero(~scores.uninformative)
    kept = [pairs[i] for i in keep]
    r_chosen, r_rejected = scores.r_chosen[keep], scores.r_rejected[keep]
    result = {"model": model, "pairs": len(pairs), "truncated": scorer.formatter.truncated,
              "uninformative": len(pairs) - len(keep),
              "uninformative_ids": [p.id for p, u in zip(pairs, scores.uninformative) if u][:10],
              "metrics": bootstrap(r_chosen, r_rejected, cfg.bootstrap, cfg.ci, cfg.seed),
              "groups": {k: g for k in cfg.group_by if (g := by_group(kept, r_chosen, r_rejected, k))}}
    if pairs and all("subset" in p.meta and p.source == "rewardbench" for p in pairs):
        # The leaderboard's score, on every pair as the leaderboard counts them (a tie is wrong):
        # sections are the example-count-weighted means of their subsets
        result["rewardbench"] = rewardbench_scores(subset_accuracy([p.meta["subset"] for p in pairs],
                                                                   scores.r_chosen, scores.r_rejected))
    return result, r_chosen - r_rejected, scores


def score_rows(name: str, pairs, scores: Scores) -> list[dict]:
    """scores.jsonl's lines of one model: each pair's rewards, which sides were cut, whether it counted."""
    return [{"model": name, "id": p.id, "r_chosen": float(c), "r_rejected": float(r), "truncated_chosen": bool(tc),
             "truncated_rejected": bool(tr), "uninformative": bool(u)}
            for p, c, r, (tc, tr), u in zip(pairs, scores.r_chosen, scores.r_rejected, scores.truncated,
                                             scores.uninformative)]


def judged_sets(cfg: DictConfig, data, out: Path) -> tuple[list, dict]:
    """The candidate sets, sampled by `cfg.policy` and scored by `cfg.judge` where given; what did it."""
    if cfg.get("policy") and not cfg.get("judge"):
        raise ConfigError("policy= samples candidates that nobody would score: add judge=gold or judge=chat")
    if (cfg.get("policy") or cfg.get("judge")) and data.source == "rewardbench2":
        raise ConfigError("policy= and judge= make best-of-N sets; RewardBench 2 is scored by its own labels")
    policy = instantiate(cfg.policy) if cfg.get("policy") else None
    judge = instantiate(cfg.judge) if cfg.get("judge") else None
    sets = load_sets(data, prompts_only=policy is not None)
    info = {}
    if policy:
        sets = policy.candidate_sets(sets)
        info["policy"] = {**policy.identity(), "n": policy.n, "stats": policy.stats}
    if judge:
        sets = judge.judged(sets)
        info["judge"] = {**judge.describe(), "stats": judge.stats}
    if info:  # what the reward models pick from, reusable as data=candidates data.path=...
        with open(out / "candidates.jsonl", "w") as f:
            for s in sets:
                f.write(json.dumps({**s.meta, "id": s.id, "prompt": s.prompt, "candidates": s.candidates,
                                    "scores": s.scores, "reference": s.reference}) + "\n")
    return sets, info


def evaluate_sets(cfg: DictConfig, data, model: str, sets, rewards_of: CandidateRewards) -> dict:
    """Best-of-N (AlpacaEval-BoN, your own sets) or RewardBench 2 over prompts with N candidates."""
    scorer = scorer_for(cfg, model)
    rows = [(s.prompt, c) for s in sets for c in s.candidates]
    flat = rewards_of(scorer, rows)
    bounds = np.cumsum([0] + [len(s.candidates) for s in sets])
    rewards = [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    result = {"model": model, "prompts": len(sets), "truncated": rewards_of.truncated(scorer, rows)}
    if data.source == "rewardbench2":
        return {**result, "rewardbench2": rewardbench2_scores(sets, rewards)}
    result["best_of_n"] = best_of_n(sets, rewards, cfg.bootstrap, cfg.ci, cfg.seed)
    if all("gold_rewards" in s.meta for s in sets):  # the gold-RM protocol: gold reward of the picks
        gold = [replace(s, scores=s.meta["gold_rewards"]) for s in sets]
        result["gold_reward"] = best_of_n(gold, rewards, cfg.bootstrap, cfg.ci, cfg.seed)
    return result


def markdown(results: dict[str, dict], data: str, split: str, ci: float) -> str:
    lines = [f"# Evaluation on {data} [{split}]", "",
             f"Intervals: {int(ci * 100)}% bootstrap over pairs. Uninformative: pairs whose two "
             "sides are the same tokens after truncation, left out of every metric; per-pair rewards in scores.jsonl.",
             "",
             "| model | pairs | truncated | uninformative | accuracy | ties | SNR | ROC-AUC | ECE | margin mean |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        m = r["metrics"]
        cell = lambda k: f"{m[k]['value']:.3f} [{m[k]['lo']:.3f}, {m[k]['hi']:.3f}]"  # noqa: E731
        lines.append(f"| {name} | {r['pairs']} | {r['truncated']} | {r['uninformative']} | {cell('acc')} | "
                     f"{m['ties']['value']:.3f} | "
                     f"{cell('snr')} | {cell('auc')} | {cell('ece')} | {m['margin_mean']['value']:.3f} |")
    for key in sorted({k for r in results.values() for k in r["groups"]}):
        groups = sorted({g for r in results.values() for g in r["groups"].get(key, {})})
        lines += ["", f"Accuracy by {key}:", "", "| model | " + " | ".join(groups) + " |",
                  "|---|" + "---|" * len(groups)]
        for name, r in results.items():
            row = r["groups"].get(key, {})
            lines.append(f"| {name} | " + " | ".join(f"{row[g]['acc']:.3f} (n={row[g]['pairs']})" if g in row else "–"
                                                     for g in groups) + " |")
    for name, r in results.items():
        if r.get("rewardbench"):
            rb = r["rewardbench"]
            sections = ", ".join(f"{k} {v:.3f}" for k, v in rb["sections"].items())
            score = "n/a (a section has no subset here)" if rb["score"] is None else f"{rb['score']:.3f}"
            lines.append(f"\nRewardBench score of {name} (mean of the four sections, each the example-count-"
                         f"weighted mean of its subsets, as the leaderboard): {score}; {sections}")
    return "\n".join(lines) + "\n"


def markdown_sets(results: dict[str, dict], data: str, info: dict | None = None) -> str:
    lines = [f"# Evaluation on {data}", ""]
    for role, what in (info or {}).items():
        lines += [f"{role}: " + ", ".join(f"{k}={v}" for k, v in what.items()), ""]
    for name, r in results.items():
        if "best_of_n" in r:
            lines += [f"## {name}", "", "```", format_best_of_n(r["best_of_n"]), "```", ""]
            if "gold_reward" in r:
                g = r["gold_reward"]
                lines += [f"Mean gold reward of the picks {g['win_rate']['value']:.3f} [{g['win_rate']['lo']:.3f}, "
                          f"{g['win_rate']['hi']:.3f}]; random {g['random']:.3f}, longest {g['longest']:.3f}, "
                          f"oracle {g['oracle']:.3f}", ""]
        else:
            rb = r["rewardbench2"]
            lines += [f"## {name}: RewardBench 2 score {rb['score'] if rb['score'] is None else round(rb['score'], 4)}",
                      "", "| subset | score |", "|---|---|"] + [f"| {k} | {v:.4f} |" for k, v in rb["subsets"].items()]
            lines.append("")
    return "\n".join(lines)


def model_name(path: str) -> str:
    path = path.rstrip("/")
    return Path(path).parent.name if Path(path).name == "export" else Path(path).name


def evaluate(cfg: DictConfig) -> dict:
    data = typed(cfg, "data")
    where = data.path or data.hub_name or data.source
    models = list(cfg.model) if isinstance(cfg.model, ListConfig) else [cfg.model]
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results, margins, rounds = {}, {}, {}
    if data.source in CANDIDATE_SOURCES:
        sets, info = judged_sets(cfg, data, out)
        rewards_of = CandidateRewards()  # models with one frozen trunk (finetune=head) share its forward
        for path in models:
            target, _ = resolve_model(path)
            results[model_name(path)] = r = evaluate_sets(cfg, data, target, sets, rewards_of)
            print(f"{model_name(path)} on {where}: {len(sets)} prompts, {r['truncated']} candidates truncated")
        report = markdown_sets(results, where, info)
        (out / "eval.json").write_text(json.dumps({"data": where, "ci": cfg.ci, **info, "models": results},
                                                  indent=2, default=str))
        best_of_n_plots({n: r["best_of_n"] for n, r in results.items() if "best_of_n" in r}, out)
    else:
        pairs = load_pool(data) if cfg.split == "all" else load_splits(data)[cfg.split]
        with open(out / "scores.jsonl", "w") as f:
            for path in models:
                name = model_name(path)
                target, rounds[name] = resolve_model(path)
                results[name], margins[name], scores = evaluate_one(cfg, target, pairs)
                f.writelines(json.dumps(row) + "\n" for row in score_rows(name, pairs, scores))
                r = results[name]
                print(f"{name} on {where} [{cfg.split}]: {len(pairs)} pairs, {r['truncated']} truncated, "
                      f"{r['uninformative']} uninformative after truncation (not in the metrics"
                      + (f", e.g. {', '.join(r['uninformative_ids'][:3])})" if r["uninformative"] else ")"))
                print(format_table(r["metrics"], cfg.ci))
        report = markdown(results, where, cfg.split, cfg.ci)
        (out / "eval.json").write_text(json.dumps({"split": cfg.split, "ci": cfg.ci, "models": results}, indent=2))
        eval_plots(results, margins, rounds, out)
    (out / "report.md").write_text(report)
    print(report)
    log.info("report written to %s", os.path.abspath(out))
    return results
