"""Evaluate reward models on any data config and write a report.

    python eval.py model=logs/train/runs/X/export data=hh_rlhf_offline
    python eval.py 'model=[runs/A,runs/B]' data=rewardbench split=all

`model`: one or several `.ckpt` files, export folders, Hub names or run folders (a run folder's
export is evaluated and its rounds/ plotted). The report folder gets eval.json, report.md and PNG
plots: accuracy with bootstrap intervals, margin densities, budget per round and curvature bins.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, ListConfig

from mars.config import typed
from mars.data.splits import load_pool, load_splits
from mars.evaluation.pairwise import bootstrap, by_group, format_table, load_for_eval, score_pairs
from mars.report import eval_plots

log = logging.getLogger("mars.eval")


def resolve_model(path: str) -> tuple[str, list[dict]]:
    """(what to load, the run's round reports) for a checkpoint, export, Hub name or run folder."""
    run = Path(path)
    if (run / "export").is_dir():
        rounds = [json.loads(p.read_text()) for p in sorted((run / "rounds").glob("round_*.json"))]
        return str(run / "export"), rounds
    return path, []


def evaluate_one(cfg: DictConfig, model: str, pairs) -> tuple[dict, np.ndarray]:
    module = load_for_eval(model, cfg.get("max_length"))
    r_chosen, r_rejected, truncated = score_pairs(module, pairs, cfg.batch_size)
    result = {"model": model, "pairs": len(pairs), "truncated": truncated,
              "metrics": bootstrap(r_chosen, r_rejected, cfg.bootstrap, cfg.ci, cfg.seed),
              "groups": {k: g for k in cfg.group_by if (g := by_group(pairs, r_chosen, r_rejected, k))}}
    if "section" in result["groups"]:  # RewardBench: sections weighted by their pair counts
        sections = result["groups"]["section"]
        result["rewardbench_score"] = float(np.average([s["acc"] for s in sections.values()],
                                                      weights=[s["pairs"] for s in sections.values()]))
    return result, r_chosen - r_rejected


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
        if "rewardbench_score" in r:
            lines.append(f"\nRewardBench score of {name} (sections weighted by pairs): {r['rewardbench_score']:.3f}")
    return "\n".join(lines) + "\n"


def evaluate(cfg: DictConfig) -> dict:
    data = typed(cfg, "data")
    pairs = load_pool(data) if cfg.split == "all" else load_splits(data)[cfg.split]
    models = list(cfg.model) if isinstance(cfg.model, ListConfig) else [cfg.model]
    results, margins, rounds = {}, {}, {}
    for path in models:
        name = Path(path.rstrip("/")).name if path.rstrip("/").split("/")[-1] != "export" else Path(path).parent.name
        target, rounds[name] = resolve_model(path)
        results[name], margins[name] = evaluate_one(cfg, target, pairs)
        print(f"{name} on {data.path or data.hub_name or data.source} [{cfg.split}]: {len(pairs)} pairs, "
              f"{results[name]['truncated']} truncated")
        print(format_table(results[name]["metrics"], cfg.ci))
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = markdown(results, data.path or data.hub_name or data.source, cfg.split, cfg.ci)
    (out / "eval.json").write_text(json.dumps({"split": cfg.split, "ci": cfg.ci, "models": results}, indent=2))
    (out / "report.md").write_text(report)
    eval_plots(results, margins, rounds, out)
    print(report)
    log.info("report written to %s", os.path.abspath(out))
    return results


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
