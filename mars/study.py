"""The comparison study: one command runs method × dataset × seed and aggregates the results.

    python -m mars.study run [--datasets hh_rlhf ultrafeedback pku_saferlhf] [--seeds 1 2 3]
    python -m mars.study aggregate logs/study

`run` launches, per dataset, Hydra multiruns of train.py with the `cpu_study_<dataset>` preset
(or `--preset paper` for the GPU setting) over the methods, then `aggregate` writes results.md,
results.json and plots: per method and dataset the mean over seeds of held-out accuracy, SNR,
ROC-AUC and ECE with a 95% bootstrap interval (pairs resampled, the same resample for every method
and seed), and the paired difference MARS − uniform with its interval.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import yaml

from mars.model.metrics import pairwise_metrics

METHODS = {"none": [], "uniform": [], "west_of_n": [], "mars_abs": ["allocator=mars"],
           "mars_signed": ["allocator=mars_signed"]}
REPORTED = ("acc", "snr", "auc", "ece")
ROOT = Path(__file__).resolve().parents[1]


def run(datasets: list[str], seeds: list[int], out: Path, preset: str, temperature: float, extra: list[str]) -> None:
    for dataset in datasets:
        for method, overrides in METHODS.items():
            choice = overrides or [f"allocator={method}"]
            tau = [f"allocator.temperature={temperature}"] if method.startswith("mars") else []
            cmd = [sys.executable, str(ROOT / "train.py"), "-m", f"experiment={preset}_{dataset}", *choice, *tau,
                   f"seed={','.join(map(str, seeds))}", f"+study.method={method}", f"+study.dataset={dataset}",
                   f"hydra.sweep.dir={out}/{dataset}/{method}", *extra]
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, cwd=ROOT)
    aggregate(out)


def load_runs(study_dir: Path) -> list[dict]:
    """Every finished job below `study_dir`: its method, dataset, seed, test scores and rounds."""
    runs = []
    for scores in sorted(study_dir.rglob("test_scores.json")):
        job = scores.parent
        cfg = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        if "study" not in cfg:  # a run that is not part of a study
            continue
        s = json.loads(scores.read_text())
        rounds = [json.loads(p.read_text()) for p in sorted((job / "rounds").glob("round_*.json"))]
        runs.append({"method": cfg["study"]["method"], "dataset": cfg["study"]["dataset"], "seed": cfg["seed"],
                     "ids": s["ids"], "r_chosen": np.array(s["r_chosen"]), "r_rejected": np.array(s["r_rejected"]),
                     "rounds": rounds, "dir": str(job)})
    return runs


def _metrics(runs: list[dict], idx: np.ndarray | None = None) -> dict[str, float]:
    """Metrics averaged over seeds, on the pairs `idx` (all pairs when None)."""
    per_seed = [pairwise_metrics(torch.from_numpy(r["r_chosen"] if idx is None else r["r_chosen"][idx]),
                                 torch.from_numpy(r["r_rejected"] if idx is None else r["r_rejected"][idx]))
                for r in runs]
    return {k: float(np.mean([m[k] for m in per_seed])) for k in REPORTED}


def summarise(runs: list[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """{dataset: {method: {metric: {mean, lo, hi}}, "mars_abs - uniform": {...}, ...}}."""
    grouped = defaultdict(lambda: defaultdict(list))
    for r in runs:
        grouped[r["dataset"]][r["method"]].append(r)
    out = {}
    rng = np.random.default_rng(seed)
    for dataset, methods in grouped.items():
        n = len(next(iter(methods.values()))[0]["ids"])
        draws = [rng.integers(0, n, n) for _ in range(n_boot)]
        table = {}
        boot = {m: [_metrics(rs, idx) for idx in draws] for m, rs in methods.items()}
        for method, rs in methods.items():
            point = _metrics(rs)
            # Plain percentile intervals: where the bootstrap is skewed (ECE is biased upwards on a
            # resample) the estimate can fall outside its interval, and that is reported as it is.
            lo_hi = {k: np.nanpercentile([b[k] for b in boot[method]], [2.5, 97.5]) for k in REPORTED}
            table[method] = {k: {"mean": point[k], "lo": float(lo_hi[k][0]), "hi": float(lo_hi[k][1])}
                             for k in REPORTED} | {"seeds": len(rs)}
            # Known label noise: the share of the budget spent on flipped pairs, and how often the
            # round's model mis-ranked flipped and clean pairs (means over rounds and seeds).
            for key, name in (("budget_on_flipped_fraction", "budget_on_flipped"),
                              ("misranked_among_flipped", "misranked_flipped"),
                              ("misranked_among_clean", "misranked_clean")):
                values = [r[key] for run in rs for r in run["rounds"] if key in r]
                if values:
                    table[method][name] = float(np.mean(values))
        for mars in ("mars_abs", "mars_signed"):
            if mars in methods and "uniform" in methods:
                delta = np.array([b["acc"] for b in boot[mars]]) - np.array([b["acc"] for b in boot["uniform"]])
                table[f"{mars} - uniform"] = {"acc": {
                    "mean": table[mars]["acc"]["mean"] - table["uniform"]["acc"]["mean"],
                    "lo": float(np.percentile(delta, 2.5)), "hi": float(np.percentile(delta, 97.5))}}
        out[dataset] = table
    return out


def markdown(summary: dict) -> str:
    lines = []
    for dataset, table in summary.items():
        lines += [f"### {dataset}", "", "| method | seeds | accuracy | SNR | ROC-AUC | ECE |", "|---|---|---|---|---|---|"]
        for method, row in table.items():
            if " - " in method:
                continue
            cell = lambda k: f"{row[k]['mean']:.3f} [{row[k]['lo']:.3f}, {row[k]['hi']:.3f}]"  # noqa: E731
            lines.append(f"| {method} | {row['seeds']} | {cell('acc')} | {cell('snr')} | {cell('auc')} | {cell('ece')} |")
        for method, row in table.items():
            if "budget_on_flipped" in row:
                lines.append(f"\n{method}: {row['budget_on_flipped']:.3f} of the budget on flipped pairs")
                if "misranked_flipped" in row:
                    lines[-1] += (f"; its models mis-ranked {row['misranked_flipped']:.3f} of flipped and "
                                  f"{row['misranked_clean']:.3f} of clean pairs")
        for method, row in table.items():
            if " - " in method:
                a = row["acc"]
                lines.append(f"\n{method} accuracy: {a['mean']:+.3f} [{a['lo']:+.3f}, {a['hi']:+.3f}] (paired bootstrap)")
        lines.append("")
    return "\n".join(lines)


def aggregate(study_dir: Path) -> dict:
    from mars.report import study_plots

    runs = load_runs(study_dir)
    if not runs:
        raise FileNotFoundError(f"no finished runs (test_scores.json) under {study_dir}")
    summary = summarise(runs)
    (study_dir / "results.json").write_text(json.dumps(summary, indent=2))
    (study_dir / "results.md").write_text(markdown(summary))
    study_plots(runs, summary, study_dir)
    print(markdown(summary))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mars.study", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the multiruns, then aggregate")
    r.add_argument("--datasets", nargs="+", default=["hh_rlhf", "ultrafeedback", "pku_saferlhf"])
    r.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    r.add_argument("--preset", default="cpu_study", help="cpu_study (CPU-scale) or paper (GPU, network)")
    r.add_argument("--temperature", type=float, default=2.0, help="τ of the mars allocators")
    r.add_argument("--out", type=Path, default=Path(os.environ.get("MARS_LOG_DIR", "logs")) / "study")
    r.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job")
    a = sub.add_parser("aggregate", help="tables and plots of finished runs")
    a.add_argument("study_dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.datasets, args.seeds, args.out.resolve(), args.preset, args.temperature, args.overrides)
    else:
        aggregate(args.study_dir)


if __name__ == "__main__":
    main()
