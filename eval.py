"""Evaluate a reward model (`.ckpt`, export folder or Hub name) on any data config.

`python eval.py model=logs/train/runs/X/export data=hh_rlhf_offline` prints the metrics with
bootstrap intervals and writes them as JSON.
"""
from __future__ import annotations

import json
import logging
import os

import hydra
import numpy as np
from omegaconf import DictConfig

from mars.config import typed
from mars.data.splits import load_pool, load_splits
from mars.evaluation import bootstrap, by_group, format_table, load_for_eval, score_pairs

log = logging.getLogger("mars.eval")


def evaluate(cfg: DictConfig) -> dict:
    data = typed(cfg, "data")
    pairs = load_pool(data) if cfg.split == "all" else load_splits(data)[cfg.split]
    module = load_for_eval(cfg.model, cfg.get("max_length"))
    r_chosen, r_rejected, truncated = score_pairs(module, pairs, cfg.batch_size)
    metrics = bootstrap(r_chosen, r_rejected, cfg.bootstrap, cfg.ci, cfg.seed)
    result = {"model": cfg.model, "data": data.path or data.hub_name or data.source, "split": cfg.split,
              "pairs": len(pairs), "truncated": truncated, "ci": cfg.ci, "metrics": metrics,
              "groups": {k: g for k in cfg.group_by if (g := by_group(pairs, r_chosen, r_rejected, k))}}
    if "section" in result["groups"]:  # RewardBench: sections weighted by their pair counts
        sections = result["groups"]["section"]
        result["rewardbench_score"] = float(np.average([s["acc"] for s in sections.values()],
                                                      weights=[s["pairs"] for s in sections.values()]))
    print(f"{cfg.model} on {result['data']} [{cfg.split}]: {len(pairs)} pairs, {truncated} truncated")
    print(format_table(metrics, cfg.ci))
    for key, groups in result["groups"].items():
        print(f"by {key}: " + ", ".join(f"{g} {v['acc']:.3f} (n={v['pairs']})" for g, v in groups.items()))
    os.makedirs(os.path.dirname(os.path.abspath(cfg.output)), exist_ok=True)
    with open(cfg.output, "w") as f:
        json.dump(result, f, indent=2)
    log.info("wrote %s", cfg.output)
    return result


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
