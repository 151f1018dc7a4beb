"""The comparison study: one command runs method × dataset × seed and aggregates the results.

    python -m mars.study run [--datasets hh_rlhf ...] [--methods none uniform ...] [--seeds 1 2 3 4 5] [--parallel 2] [key=value ...]
    python -m mars.study aggregate logs/study

`run` launches one train.py per job with the `cpu_study_<dataset>` preset (`--preset cpu_study_full`
for full fine-tuning, `--preset paper` for the GPU setting), in out/<dataset>/<method>/seed<S>, seed by seed, `--parallel` at a time,
with a line of progress per job; a job already finished (its metrics.json) is skipped, so a
stopped study resumes where it stopped. Then `aggregate` writes results.md, results.json and
plots: per method and dataset the mean over seeds of held-out accuracy, SNR, ROC-AUC, ECE and,
where the runs scored a best-of-N set (`best_of_n`), the win-rate, each with a 95% bootstrap
interval over pairs (or prompts) and seeds, the paired differences of COMPARED, and per round
the allocation's diagnostics (ROUND_COLUMNS), means over seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import yaml

from mars.method.report import Key
from mars.model.metrics import pairwise_metrics

# name: the train.py overrides of the method
METHODS = {"none": ["allocator=none"], "uniform": ["allocator=uniform"], "west_of_n": ["allocator=west_of_n"],
           "mars_abs": ["allocator=mars"], "mars_signed": ["allocator=mars_signed"],
           # the authors' code: D^t = D₀ ∪ D_syn^t instead of the paper's accumulation
           "mars_abs_resample": ["allocator=mars", "loop.accumulate=false"]}
# the method's question, then whether augmentation helps at all, then accumulation against resampling
COMPARED = (("mars_abs", "uniform"), ("mars_signed", "uniform"), ("uniform", "none"), ("mars_abs_resample", "mars_abs"))
REPORTED = ("acc", "snr", "auc", "ece")
# per round (rounds/round_XX.json): the spread of the base margins, the budget on the tenth of D₀
# with the smallest and the largest |Δ|, on pairs the model mis-ranked, the most on one pair (where
# B = |D₀|, 1 means the allocation is the uniform one), the curvature ratio, D₀ accuracy
ROUND_COLUMNS = {"std_margin": lambda r: r[Key.MARGIN_STD],
                 "smallest_tenth": lambda r: r[Key.BY_ABS_DECILE][0],
                 "largest_tenth": lambda r: r[Key.BY_ABS_DECILE][-1],
                 "misranked": lambda r: r[Key.MISRANKED], "most_on_one": lambda r: r[Key.BUDGET_MAX],
                 "curvature_ratio": lambda r: r[Key.CURVATURE_RATIO], "base_acc": lambda r: r[Key.BASE_ACC]}
# where the data marks flipped labels: the budget on them, and how often the model mis-ranked them
NOISE_COLUMNS = {"on_flipped": Key.BUDGET_ON_FLIPPED, "misranked_flipped": Key.MISRANKED_FLIPPED,
                 "misranked_clean": Key.MISRANKED_CLEAN}
ROOT = Path(__file__).resolve().parents[1]


def jobs(datasets: list[str], methods: list[str], seeds: list[int]) -> list[tuple[int, str, str]]:
    """(seed, dataset, method), seed by seed: a study stopped early has whole seeds."""
    return [(seed, dataset, method) for seed in seeds for dataset in datasets for method in methods]


def command(seed: int, dataset: str, method: str, out: Path, preset: str, temperature: float,
            extra: list[str]) -> list[str]:
    """The train.py call of one job; its folder is out/dataset/method/seed<S>."""
    tau = [f"allocator.temperature={temperature}"] if method.startswith("mars") else []
    return [sys.executable, str(ROOT / "train.py"), f"experiment={preset}_{dataset}", *METHODS[method], *tau,
            f"seed={seed}", f"+study.method={method}", f"+study.dataset={dataset}",
            f"hydra.run.dir={out}/{dataset}/{method}/seed{seed}",
            f"paths.cache_dir={out}/cache/{dataset}",  # each dataset's features in their own file
            *extra]


def shares_features(job: tuple[int, str, str], out: Path, preset: str, temperature: float, extra: list[str]) -> bool:
    """Whether the job trains on cached frozen features (finetune=head or top_layers), which the
    jobs of its dataset share."""
    from hydra.errors import HydraException

    from mars.cli.runtime import compose_run_config
    from mars.model.finetune import CACHED_FEATURES

    overrides = [o for o in command(*job, out, preset, temperature, extra)[2:] if not o.startswith("hydra.")]
    try:
        cfg = compose_run_config("train", overrides, out, data_dir=None)
    except HydraException as e:  # a bad override: named before any job, not once per failed job
        raise ValueError(f"{' '.join(extra)}: {e}") from None
    return cfg.finetune.name in CACHED_FEATURES


def preset_datasets(presets: Path, preset: str) -> list[str]:
    """The datasets of a preset family: each <preset>_<dataset>.yaml that builds on <preset>.yaml
    (lists it in its defaults) where that file exists, and is no family of its own: so
    cpu_study_full_hh_rlhf belongs to cpu_study_full, and cpu_study_full to neither."""
    parents = {f.stem: (yaml.safe_load(f.read_text()) or {}).get("defaults", []) for f in presets.glob("*.yaml")}
    families = {p for ds in parents.values() for p in ds if isinstance(p, str)}
    return sorted(name[len(preset) + 1:] for name, ds in parents.items()
                  if name.startswith(f"{preset}_") and name not in families
                  and (preset in ds or preset not in parents))


def run(datasets: list[str] | None, methods: list[str], seeds: list[int], out: Path, preset: str, temperature: float,
        extra: list[str], parallel: int = 1) -> None:
    """Every job not finished yet, `parallel` at a time (never two of one dataset whose jobs share
    cached features), each on its share of the cores; progress per job; then `aggregate`."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"--methods {' '.join(unknown)}: unknown; the methods are {', '.join(METHODS)}")
    presets = ROOT / "conf" / "experiment"
    known = preset_datasets(presets, preset)
    datasets = datasets or known
    missing = [d for d in datasets if d not in known]
    if missing:  # before any job starts, not once per failed job
        raise ValueError(f"--datasets {' '.join(missing)}: no preset {preset}_<dataset> in {presets}; "
                         f"the datasets of --preset {preset} are {', '.join(known)}")
    todo = [j for j in jobs(datasets, methods, seeds)
            if not (out / j[1] / j[2] / f"seed{j[0]}" / "metrics.json").exists()]  # written last
    # one at a time where a dataset's jobs share frozen features: each job after the first finds them cached
    exclusive = {d for d in {j[1] for j in todo} if shares_features(next(j for j in todo if j[1] == d),
                                                                       out, preset, temperature, extra)}
    total, done, failed, busy = len(todo), [], [], set()
    env = os.environ | {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // parallel))}
    lock, start = threading.Condition(), time.time()
    print(f"{total} jobs to run ({len(jobs(datasets, methods, seeds)) - total} already finished), "
          f"{parallel} at a time, in {out}", flush=True)

    def take() -> tuple[int, str, str] | None:
        with lock:
            while True:
                if not todo:
                    return None
                free = [j for j in todo if j[1] not in busy]
                if free:
                    todo.remove(free[0])
                    if free[0][1] in exclusive:
                        busy.add(free[0][1])
                    return free[0]
                lock.wait()

    def worker() -> None:
        while (job := take()) is not None:
            seed, dataset, method = job
            log_file = out / dataset / method / f"seed{seed}.log"
            log_file.parent.mkdir(parents=True, exist_ok=True)
            t = time.time()
            with open(log_file, "w") as f:
                rc = subprocess.run(command(*job, out, preset, temperature, extra), cwd=ROOT, env=env,
                                    stdout=f, stderr=subprocess.STDOUT).returncode
            with lock:
                busy.discard(dataset)
                (done if rc == 0 else failed).append(job)
                finished = len(done) + len(failed)
                left = (time.time() - start) / finished * (total - finished)
                print(f"[{finished}/{total}] {dataset} {method} seed {seed}: "
                      f"{'done' if rc == 0 else f'FAILED (exit {rc}, see {log_file})'} in {time.time() - t:.0f} s; "
                      f"{(time.time() - start) / 60:.1f} min so far, about {left / 60:.0f} min left", flush=True)
                lock.notify_all()

    threads = [threading.Thread(target=worker) for _ in range(parallel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failed:
        raise SystemExit(f"{len(failed)} of {total} jobs failed: " + ", ".join(f"{d} {m} seed {s}" for s, d, m in failed))
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
        if (job / "best_of_n.json").exists():  # the judged score of the model's pick per prompt
            bon = json.loads((job / "best_of_n.json").read_text())
            runs[-1]["bon_picked"] = np.array(bon["picked_scores"])
            runs[-1]["bon_anchors"] = {k: bon[k] for k in ("random", "longest", "oracle")}
    return runs


def _per_seed(runs: list[dict], idx: np.ndarray | None = None) -> np.ndarray:
    """[seeds, REPORTED] metrics of each run on the pairs `idx` (all pairs when None)."""
    return np.array([[m[k] for k in REPORTED] for m in (
        pairwise_metrics(torch.from_numpy(r["r_chosen"] if idx is None else r["r_chosen"][idx]),
                         torch.from_numpy(r["r_rejected"] if idx is None else r["r_rejected"][idx])) for r in runs)])


def _interval(values) -> dict[str, float]:
    lo, hi = np.nanpercentile(values, [2.5, 97.5])
    return {"lo": float(lo), "hi": float(hi)}


def summarise(runs: list[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """{dataset: {method: {metric: {mean, lo, hi}, "rounds": [...]}, "mars_abs - uniform": {...}, ...}}.

    Means are over seeds. Each bootstrap draw resamples the held-out pairs (and the best-of-N
    prompts) and the seeds, both with replacement and the same for every method, so intervals and
    paired differences carry the spread over pairs and over seeds. They are plain percentile
    intervals: where the bootstrap is skewed (ECE is biased upwards on a resample) the estimate can
    fall outside its interval, and that is reported as it is.
    """
    grouped = defaultdict(lambda: defaultdict(list))
    for r in sorted(runs, key=lambda r: r["seed"]):  # seed k of every method at the same position
        grouped[r["dataset"]][r["method"]].append(r)
    out = {}
    rng = np.random.default_rng(seed)
    for dataset, methods in grouped.items():
        n = len(next(iter(methods.values()))[0]["ids"])
        most = max(len(rs) for rs in methods.values())
        draws = [(rng.integers(0, n, n), rng.random(most)) for _ in range(n_boot)]
        pick = lambda u, k: (u[:k] * k).astype(int)  # noqa: E731  the draw's seeds among k runs
        boot = {m: np.array([_per_seed(rs, idx)[pick(u, len(rs))].mean(0) for idx, u in draws])
                for m, rs in methods.items()}
        table = {}
        for method, rs in methods.items():
            point = _per_seed(rs).mean(0)
            table[method] = {k: {"mean": float(point[i]), **_interval(boot[method][:, i])}
                             for i, k in enumerate(REPORTED)} | {"seeds": len(rs)}
            # Known label noise: the share of the budget spent on flipped pairs, and how often the
            # round's model mis-ranked flipped and clean pairs (means over rounds and seeds).
            for key, name in ((Key.BUDGET_ON_FLIPPED, "budget_on_flipped"),
                              (Key.MISRANKED_FLIPPED, "misranked_flipped"), (Key.MISRANKED_CLEAN, "misranked_clean")):
                values = [r[key] for run in rs for r in run["rounds"] if key in r]
                if values:
                    table[method][name] = float(np.mean(values))
            by_round = defaultdict(list)
            for run in rs:
                for r in run["rounds"]:
                    by_round[r[Key.ROUND]].append(r)
            if by_round:  # means over seeds, round by round
                table[method]["rounds"] = [{"round": t, **{k: float(np.mean([f(r) for r in by_round[t]]))
                                                           for k, f in ROUND_COLUMNS.items()},
                                            **{k: float(np.mean([r[key] for r in by_round[t]]))
                                               for k, key in NOISE_COLUMNS.items() if key in by_round[t][0]}}
                                           for t in sorted(by_round)]
        bon = {m: np.array([r["bon_picked"] for r in rs]) for m, rs in methods.items()
               if all("bon_picked" in r for r in rs)}
        if bon:  # best-of-N: the judged score of each model's pick, resampled over prompts and seeds
            prompts = next(iter(bon.values())).shape[1]
            bon_draws = [(rng.integers(0, prompts, prompts), rng.random(most)) for _ in range(n_boot)]
            bon_boot = {m: np.array([v[pick(u, len(v))][:, idx].mean() for idx, u in bon_draws])
                        for m, v in bon.items()}
            for m, v in bon.items():
                table[m]["win_rate"] = {"mean": float(v.mean()), **_interval(bon_boot[m])}
        for a, b in COMPARED:
            if a in methods and b in methods:
                i = REPORTED.index("acc")
                table[f"{a} - {b}"] = {"acc": {"mean": table[a]["acc"]["mean"] - table[b]["acc"]["mean"],
                                               **_interval(boot[a][:, i] - boot[b][:, i])}}
                if a in bon and b in bon:
                    table[f"{a} - {b}"]["win_rate"] = {
                        "mean": table[a]["win_rate"]["mean"] - table[b]["win_rate"]["mean"],
                        **_interval(bon_boot[a] - bon_boot[b])}
        out[dataset] = table
    return out


def markdown(summary: dict) -> str:
    lines = []
    for dataset, table in summary.items():
        bon = any("win_rate" in row for row in table.values())
        lines += [f"### {dataset}", "", "| method | seeds | accuracy | SNR | ROC-AUC | ECE |"
                  + (" best-of-N win-rate |" if bon else ""), "|---|---|---|---|---|---|" + ("---|" if bon else "")]
        for method, row in table.items():
            if " - " in method:
                continue
            cell = lambda k: f"{row[k]['mean']:.3f} [{row[k]['lo']:.3f}, {row[k]['hi']:.3f}]" if k in row else "–"  # noqa: E731
            lines.append(f"| {method} | {row['seeds']} | {cell('acc')} | {cell('snr')} | {cell('auc')} | {cell('ece')} |"
                         + (f" {cell('win_rate')} |" if bon else ""))
        for method, row in table.items():
            if "budget_on_flipped" in row:
                lines.append(f"\n{method}: {row['budget_on_flipped']:.3f} of the budget on flipped pairs")
                if "misranked_flipped" in row:
                    lines[-1] += (f"; its models mis-ranked {row['misranked_flipped']:.3f} of flipped and "
                                  f"{row['misranked_clean']:.3f} of clean pairs")
        for method, row in table.items():
            for key, what in (("acc", "accuracy"), ("win_rate", "best-of-N win-rate")):
                if " - " in method and key in row:
                    a = row[key]
                    lines.append(f"\n{method} {what}: {a['mean']:+.3f} [{a['lo']:+.3f}, {a['hi']:+.3f}] "
                                 "(paired bootstrap over pairs and seeds)")
        rows = [(m, r) for m, row in table.items() for r in row.get("rounds", [])]
        if rows:
            noise = all("on_flipped" in r for _, r in rows)
            lines += ["", "Per round, means over seeds: std of the base margins Δ on D₀, the budget on the tenth "
                      "of D₀ with the smallest and the largest |Δ|, on mis-ranked pairs, the most on one pair, "
                      "the curvature ratio, D₀ accuracy" + ("; the budget on flipped pairs, and the share of flipped and of clean "
                                       "pairs the model mis-ranked" if noise else ""), "",
                      "| method | round | std Δ | smallest / largest \\|Δ\\| tenth | mis-ranked | most on one pair "
                      "| curvature ratio | D₀ accuracy |" + (" on flipped | mis-ranked flipped / clean |" if noise else ""),
                      "|---|---|---|---|---|---|---|---|" + ("---|---|" if noise else "")]
            lines += [f"| {m} | {r['round']} | {r['std_margin']:.3f} | {r['smallest_tenth']:.3f} / "
                      f"{r['largest_tenth']:.3f} | {r['misranked']:.3f} | {r['most_on_one']:.1f} | "
                      f"{r['curvature_ratio']:.3f} | {r['base_acc']:.3f} |" + (f" {r['on_flipped']:.3f} | {r['misranked_flipped']:.3f} / "
                                                  f"{r['misranked_clean']:.3f} |" if noise else "")
                      for m, r in rows]
        lines.append("")
    return "\n".join(lines)


def aggregate(study_dir: Path) -> dict:
    from mars.evaluation.plots import study_plots

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
    r = sub.add_parser("run", help="run the multiruns, then aggregate",
                       epilog="Hydra overrides (key=value) anywhere on the line go to every job's train.py.")
    r.add_argument("--datasets", nargs="+", help="default: every dataset with a <preset>_<dataset> preset")
    r.add_argument("--methods", nargs="+", default=[m for m in METHODS if m != "mars_abs_resample"])
    r.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    r.add_argument("--parallel", type=int, default=1, help="jobs at a time, each on its share of the cores")
    r.add_argument("--preset", default="cpu_study",
                   help="cpu_study (CPU-scale, top layer), cpu_study_full (CPU-scale, full fine-tuning) or paper (GPU, network)")
    r.add_argument("--temperature", type=float, default=0.5, help="τ of the mars allocators (the paper's 0.5)")
    r.add_argument("--out", type=Path, default=Path(os.environ.get("MARS_LOG_DIR", "logs")) / "study")
    a = sub.add_parser("aggregate", help="tables and plots of finished runs")
    a.add_argument("study_dir", type=Path)
    argv = sys.argv[1:] if argv is None else argv
    # Overrides are taken out before parsing: after a list option (`--methods none finetune.layers=2`)
    # argparse would read them as its values.
    overrides = [a for a in argv[1:] if "=" in a and not a.startswith("-")] if argv[:1] == ["run"] else []
    args = parser.parse_args([a for a in argv if a not in overrides])
    if args.command == "run":
        try:
            run(args.datasets, args.methods, args.seeds, args.out.resolve(), args.preset, args.temperature,
                overrides, args.parallel)
        except ValueError as e:  # a bad --methods or --datasets: the message, not a traceback
            parser.error(str(e))
    else:
        aggregate(args.study_dir)


if __name__ == "__main__":
    main()
