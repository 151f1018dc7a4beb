"""Evaluate reward models on any data config and write a report.

    python eval.py model=logs/train/runs/X/export data=hh_rlhf_offline
    python eval.py 'model=[runs/A,runs/B]' data=rewardbench split=all
    python eval.py model=runs/A data=alpacaeval_bon          # best-of-N win-rate judged by GPT-4
    python eval.py model=runs/A data=rewardbench2            # RewardBench 2, scored as the leaderboard

`model`: one or several `.ckpt` files, export folders, Hub names or run folders (a run folder's
export is evaluated and its rounds/ plotted). The report folder gets eval.json, report.md and PNG
plots: accuracy with bootstrap intervals, margin densities, budget per round and curvature bins;
for best-of-N sets the win-rates with intervals and the best-of-k curves.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, ListConfig

from mars.config import CANDIDATE_SOURCES, typed
from mars.data.candidates import load_sets
from mars.data.format import PairFormatter
from mars.data.splits import load_pool, load_splits
from mars.evaluation.best_of_n import best_of_n, format_best_of_n
from mars.evaluation.pairwise import bootstrap, by_group, format_table
from mars.evaluation.rewardbench import rewardbench2_scores, rewardbench_scores, subset_accuracy
from mars.export import load_for_eval
from mars.model.scoring import Scorer
from mars.report import best_of_n_plots, eval_plots

log = logging.getLogger("mars.eval")


def resolve_model(path: str) -> tuple[str, list[dict]]:
    """(what to load, the run's round reports) for a checkpoint, export, Hub name or run folder."""
    run = Path(path)
    if (run / "export").is_dir():
        rounds = [json.loads(p.read_text()) for p in sorted((run / "rounds").glob("round_*.json"))]
        return str(run / "export"), rounds
    return path, []


def scorer_for(cfg: DictConfig, model: str) -> Scorer:
    module = load_for_eval(model, cfg.get("max_length"))
    bb = module.backbone_cfg
    return Scorer(PairFormatter(module.tokenizer, bb.max_length, bb.min_prompt_tokens),
                  module.tokenizer.pad_token_id, cfg.batch_size, module=module)


def evaluate_one(cfg: DictConfig, model: str, pairs) -> tuple[dict, np.ndarray]:
    scorer = scorer_for(cfg, model)
    scores = scorer.pairs(pairs)
    r_chosen, r_rejected = scores.r_chosen, scores.r_rejected
    result = {"model": model, "pairs": len(pairs), "truncated": scorer.formatter.truncated,
              "metrics": bootstrap(r_chosen, r_rejected, cfg.bootstrap, cfg.ci, cfg.seed),
              "groups": {k: g for k in cfg.group_by if (g := by_group(pairs, r_chosen, r_rejected, k))}}
    if pairs and all("subset" in p.meta and p.source == "rewardbench" for p in pairs):
        # The leaderboard's score: sections are the example-count-weighted means of their subsets
        result["rewardbench"] = rewardbench_scores(subset_accuracy([p.meta["subset"] for p in pairs],
                                                                   r_chosen, r_rejected))
    return result, r_chosen - r_rejected


def evaluate_sets(cfg: DictConfig, data, model: str, sets) -> dict:
    """Best-of-N (AlpacaEval-BoN, your own sets) or RewardBench 2 over prompts with N candidates."""
    scorer = scorer_for(cfg, model)
    flat = scorer.responses([(s.prompt, c) for s in sets for c in s.candidates])
    bounds = np.cumsum([0] + [len(s.candidates) for s in sets])
    rewards = [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    result = {"model": model, "prompts": len(sets), "truncated": scorer.formatter.truncated}
    if data.source == "rewardbench2":
        return {**result, "rewardbench2": rewardbench2_scores(sets, rewards)}
    return {**result, "best_of_n": best_of_n(sets, rewards, cfg.bootstrap, cfg.ci, cfg.seed)}


def markdown(results: dict[str, dict], data: str, split: str, ci: float) -> str:
    lines = [f"# Evaluation on {data} [{split}]", "", f"Intervals: {int(ci * 100)}% bootstrap over pairs.", "",
             "| model | pairs | truncated | accuracy | ties | SNR | ROC-AUC | ECE | margin mean |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        m = r["metrics"]
        cell = lambda k: f"{m[k]['value']:.3f} [{m[k]['lo']:.3f}, {m[k]['hi']:.3f}]"  # noqa: E731
        lines.append(f"| {name} | {r['pairs']} | {r['truncated']} | {cell('acc')} | {m['ties']['value']:.3f} | "
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


def markdown_sets(results: dict[str, dict], data: str) -> str:
    lines = [f"# Evaluation on {data}", ""]
    for name, r in results.items():
        if "best_of_n" in r:
            lines += [f"## {name}", "", "```", format_best_of_n(r["best_of_n"]), "```", ""]
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
        sets = load_sets(data)
        for path in models:
            target, _ = resolve_model(path)
            results[model_name(path)] = r = evaluate_sets(cfg, data, target, sets)
            print(f"{model_name(path)} on {where}: {len(sets)} prompts, {r['truncated']} candidates truncated")
        report = markdown_sets(results, where)
        (out / "eval.json").write_text(json.dumps({"data": where, "ci": cfg.ci, "models": results}, indent=2))
        best_of_n_plots({n: r["best_of_n"] for n, r in results.items() if "best_of_n" in r}, out)
    else:
        pairs = load_pool(data) if cfg.split == "all" else load_splits(data)[cfg.split]
        for path in models:
            name = model_name(path)
            target, rounds[name] = resolve_model(path)
            results[name], margins[name] = evaluate_one(cfg, target, pairs)
            print(f"{name} on {where} [{cfg.split}]: {len(pairs)} pairs, {results[name]['truncated']} truncated")
            print(format_table(results[name]["metrics"], cfg.ci))
        report = markdown(results, where, cfg.split, cfg.ci)
        (out / "eval.json").write_text(json.dumps({"split": cfg.split, "ci": cfg.ci, "models": results}, indent=2))
        eval_plots(results, margins, rounds, out)
    (out / "report.md").write_text(report)
    print(report)
    log.info("report written to %s", os.path.abspath(out))
    return results


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
