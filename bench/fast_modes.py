"""The fast modes against full fine-tuning: held-out accuracy and wall time on the same data.

    .venv/bin/python bench/fast_modes.py           # 500 HH pairs, 2 epochs, 500 held out
    .venv/bin/python bench/fast_modes.py --quick   # 48 pairs, 1 epoch (a smoke run)

Each mode runs the real `mars.cli.train.train(cfg)` on the same split of the shared HH-RLHF file
(data=hh_rlhf_offline: N training pairs, 200 validation, 500 test pairs never trained on),
MiniLM, max length 256, 16 pairs per batch, allocator=none augmenter=none, fp32:

* full fine-tuning (`finetune=full`, lr 5e-5, the default recipe);
* top-2 layers (`finetune=top_layers finetune.layers=2`, lr 5e-5) on the cached output of the 4
  layers below;
* head only (`finetune=head`, lr 0.1 as in the CPU-scale study) on cached features.

A fast mode runs twice on one feature cache: cold (the frozen part computes every sequence once)
and warm (a later run of a sweep: every feature comes from the disk cache). Reported: held-out
accuracy with its 95% bootstrap interval over pairs (`mars.evaluation.bootstrap` on the run's
test_scores.json) and wall time of `mars.cli.train.train` (model loading, tokenising, training,
validation, testing). Then one CPU-scale study sweep point as a user starts it, a new process:
`python train.py experiment=cpu_study_hh_rlhf allocator=mars allocator.temperature=2 seed=1`,
cold and warm, wall time including Python start-up.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C

# name: (label, finetune overrides, lr, cached: runs cold and warm)
MODES = {"full": ("full fine-tuning", ["finetune=full"], 5e-5, False),
         "top2": ("top-2 layers", ["finetune=top_layers", "finetune.layers=2"], 5e-5, True),
         "head": ("head only", ["finetune=head"], 0.1, True)}


def run_mode(finetune: list[str], lr: float, args, out: Path, cache: Path) -> dict:
    import numpy as np
    from omegaconf import open_dict

    import mars.cli.train as train_script
    from mars.evaluation.pairwise import bootstrap

    cfg = C.compose(["data=hh_rlhf_offline", f"data.train_size={args.train}", "data.val_size=200",
                     f"data.test_size={args.test}", "backbone.max_length=256", "data.batch_size=16",
                     *finetune, f"optim.lr={lr}", "allocator=none",
                     "augmenter=none", f"trainer.max_epochs={args.epochs}", "~logger", "callbacks=none",
                     "export=false", "seed=1", *C.QUIET], out)
    with open_dict(cfg):
        cfg.paths.cache_dir = str(cache)  # shared by the cold and the warm run
    with C.Measure() as m:
        metrics, _ = train_script.train(cfg)
    scores = json.loads((out / "test_scores.json").read_text())
    acc = bootstrap(np.array(scores["r_chosen"]), np.array(scores["r_rejected"]))["acc"]
    return {"seconds": m.seconds, "acc": acc, "load": [m.load_start, m.load_end]}


def sweep_point(cache: Path, out: Path) -> dict:
    cmd = [sys.executable, str(C.ROOT / "train.py"), "experiment=cpu_study_hh_rlhf", "allocator=mars",
           "allocator.temperature=2", "seed=1", "logger=csv", f"paths.cache_dir={cache}",
           f"hydra.run.dir={out}", "+trainer.enable_progress_bar=false"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=C.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "MARS_DATA_DIR": str(C.DATA_DIR)})
    return {"seconds": time.perf_counter() - t0,
            "test_acc": json.loads((out / "metrics.json").read_text())["test/acc"]}


def main() -> None:
    ap = C.arg_parser(__doc__)
    ap.add_argument("--train", type=int, default=500)
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES))
    ap.add_argument("--no-sweep-point", action="store_true")
    args = C.parse(ap)
    if args.quick:
        args.train, args.test, args.epochs, args.no_sweep_point = 48, 40, 1, True
    load0 = C.begin()
    print(f"fast_modes: {args.train} HH pairs, {args.epochs} epochs, {args.test} held out; "
          f"loadavg {C.fmt_load(load0)}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="mars_bench_fast_") as d:
        root = Path(d)
        for key in args.modes:
            name, finetune, lr, cached = MODES[key]
            cache = root / f"cache_{key}"
            runs = {"cold": run_mode(finetune, lr, args, root / f"{key}_cold", cache)}
            if cached:
                runs["warm"] = run_mode(finetune, lr, args, root / f"{key}_warm", cache)
            results[name] = {"finetune": finetune, "lr": lr, **runs}
            for when, r in runs.items():
                a = r["acc"]
                print(f"  {name} ({when}): held-out acc {a['value']:.3f} [{a['lo']:.3f}, {a['hi']:.3f}], "
                      f"{r['seconds']:.1f} s; loadavg {C.fmt_load(r['load'][0])} → {C.fmt_load(r['load'][1])}",
                      flush=True)
        if not args.no_sweep_point:
            cache = root / "cache_study"
            results["sweep point"] = {when: sweep_point(cache, root / f"study_{when}") for when in ("cold", "warm")}
            for when, r in results["sweep point"].items():
                print(f"  CPU-study sweep point ({when}): {r['seconds']:.1f} s, test acc {r['test_acc']:.3f}")
    C.write_json(args.json, results)
    parts = [f"{name} acc {r['cold']['acc']['value']:.3f} in {r['cold']['seconds']:.0f} s"
             + (f" ({r['warm']['seconds']:.0f} s warm)" if "warm" in r else "")
             for name, r in results.items() if name != "sweep point"]
    if "sweep point" in results:
        parts.append("study sweep point {cold:.0f} s cold, {warm:.0f} s warm".format(
            **{w: r["seconds"] for w, r in results["sweep point"].items()}))
    print("SUMMARY fast_modes: " + "; ".join(parts))


if __name__ == "__main__":
    main()
