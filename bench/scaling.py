"""Time per MARS round as |D0| doubles (1k, 2k, 4k pairs) and as the budget B doubles.

    .venv/bin/python bench/scaling.py           # |D0| 1k/2k/4k at B=1000; B 500/1000/2000 at |D0|=2k
    .venv/bin/python bench/scaling.py --quick   # |D0| 100/200/400, B 50/100/200

A round is what the DataModule's `train_dataloader()` does at the start of a MARS epoch:
`MarsLoop.build_round` (prediction pass over D0 with the head's features, allocation with the
mars allocator τ=0.5, EDA augmentation served from the SQLite cache, D^t) and then the D^t
digest, the round report (`log_round`: JSON + PNG in a temporary folder) and tokenising D^t for
the loader. Both are timed: `build_round` alone and the whole `train_dataloader()`.

The scorer (`mars.model.scoring.Scorer` on the module, as train.py builds it) runs the *tiny* backbone (conf/backbone/tiny.yaml: a random 2-layer BERT, hidden 32,
max_length 64) so that the figures measure the loop's own scaling, not a large model's forward.
The DataModule is the real one, set up from a temporary local JSONL of the pairs (`data=local`),
with a stub trainer object (rank 0 of 1, epoch 1, no loggers) standing in for Lightning's.

Data: HH-RLHF has 2,308 usable pairs, so the pool is HH plus PKU-SafeRLHF (3,000), deduplicated
and shuffled with a fixed seed; every size is a prefix of the same shuffled pool (the same mix of
sources at every size; no duplicated texts, which would hit the caches unfairly).

Each configuration: one untimed round fills the EDA cache; then `--repeats` timed rounds, each on a
fresh loop (no history) and a tokeniser memo holding D0 only (as after `setup()`); the median is
reported. Growth ratio per doubling: linear scaling is ≈ 2.0.
"""
from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import _common as C


def pool_pairs(n: int) -> list:
    from mars.data.sources import load_pairs
    from mars.data.splits import dedupe

    hh = C.hh_pairs()
    pku = load_pairs("pku_saferlhf", path=str(C.PKU_PATH), on_error="skip").pairs
    pool = dedupe(hh + pku, "hh+pku")
    random.Random(0).shuffle(pool)
    if n > len(pool):
        raise SystemExit(f"only {len(pool)} pairs in the pool, {n} asked")
    return pool[:n]


def setup_round(pairs, budget: int, root: Path, tag: str):
    """The real DataModule (set up from a local file of `pairs`) with a mars loop and the tiny scorer."""
    import hydra
    import torch

    from mars.config import typed
    from mars.data.datamodule import PreferenceDataModule
    from mars.data.format import PairFormatter
    from mars.loop import MarsLoop
    from mars.model.backbone import load_tokenizer
    from mars.model.module import RewardModule
    from mars.model.scoring import Scorer

    path = root / f"pairs_{tag}.jsonl"
    with open(path, "w") as f:
        for p in pairs:
            f.write(json.dumps({"id": p.id, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n")
    cfg = C.compose(["backbone=tiny", "allocator=mars", "augmenter=eda", "data=local", f"data.path={path}",
                     "data.fields.id=id", "data.val_size=1", "data.test_size=0", "data.train_size=-1",
                     f"loop.budget={budget}", "loop.warmup_epochs=1", "loop.accumulate=true"], root / "run")
    data, backbone, finetune, optim, loss, loop_cfg = (typed(cfg, g) for g in
                                                       ("data", "backbone", "finetune", "optim", "loss", "loop"))
    torch.manual_seed(0)
    tokenizer = load_tokenizer(backbone)
    module = RewardModule(backbone, finetune, optim, loss, cfg.seed, tokenizer)
    module.configure_model()
    formatter = PairFormatter(tokenizer, backbone.max_length, backbone.min_prompt_tokens)
    # The scorer as train.py builds it, on the module directly (no Lightning trainer here).
    scorer = Scorer(formatter, tokenizer.pad_token_id, data.eval_batch_size, module=module,
                    packing=data.packing, max_tokens=data.max_tokens_per_batch)
    loop = MarsLoop(loop_cfg, hydra.utils.instantiate(cfg.allocator), hydra.utils.instantiate(cfg.augmenter),
                    scorer, seed=cfg.seed)
    out_dir = root / f"out_{tag}"
    dm = PreferenceDataModule(data, formatter, loop, cfg.seed, str(out_dir))
    dm.setup("fit")
    dm.trainer = SimpleNamespace(lightning_module=module, global_rank=0, world_size=1, current_epoch=1,
                                 loggers=[], global_step=0)
    return dm, loop


def time_rounds(pairs, budget: int, repeats: int, root: Path, tag: str) -> dict:
    dm, loop = setup_round(pairs, budget, root, tag)
    memo0 = dict(dm.formatter._memo)  # after setup(): D0's texts only
    score_s: list[float] = []
    original_score = loop.scorer.pairs

    def timed_score(ps, features=False):
        t0 = time.perf_counter()
        out = original_score(ps, features)
        score_s.append(time.perf_counter() - t0)
        return out

    loop.scorer.pairs = timed_score  # this scorer instance only
    runs = []
    for r in range(repeats + 1):
        loop.synthetic, loop.history = [], []
        dm.formatter._memo = dict(memo0)
        score_s.clear()
        before = dict(loop.augmenter.stats)
        with C.Measure() as m_build:
            report = loop.build_round(1)
        loop.synthetic, loop.history = [], []  # train_dataloader builds the same round again
        dm.formatter._memo = dict(memo0)
        score_s.clear()
        with C.Measure() as m_full:
            dm.train_dataloader()
        gen = loop.augmenter.stats["generated"] - before.get("generated", 0)
        runs.append({"build_round_s": m_build.seconds, "train_dataloader_s": m_full.seconds,
                     "build_round_cpu_s": m_build.cpu_seconds, "train_dataloader_cpu_s": m_full.cpu_seconds,
                     "score_s": score_s[0] if score_s else None, "generated": gen,
                     "synthetic": report.get("synthetic_added"), "d_t": len(loop.training_set()),
                     "load_start": m_build.load_start, "load_end": m_full.load_end, "fill": r == 0})
    timed = runs[1:]
    return {"d0": len(loop.base), "budget": budget, "runs": runs,
            "build_round_s": C.median([x["build_round_s"] for x in timed]),
            "train_dataloader_s": C.median([x["train_dataloader_s"] for x in timed]),
            "score_s": C.median([x["score_s"] for x in timed]),
            "build_round_cpu_s": C.median([x["build_round_cpu_s"] for x in timed]),
            "train_dataloader_cpu_s": C.median([x["train_dataloader_cpu_s"] for x in timed]),
            "generated_in_timed": sum(x["generated"] for x in timed)}


def main() -> None:
    ap = C.arg_parser(__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000])
    ap.add_argument("--budget", type=int, default=1000, help="B for the |D0| sweep")
    ap.add_argument("--budgets", type=int, nargs="+", default=[500, 1000, 2000])
    ap.add_argument("--budget-d0", type=int, default=2000, help="|D0| for the budget sweep")
    ap.add_argument("--repeats", type=int, default=3)
    args = C.parse(ap)
    if args.quick:
        args.sizes, args.budget, args.budgets, args.budget_d0, args.repeats = [100, 200, 400], 100, [50, 100, 200], 200, 2
    load0 = C.begin()
    print(f"scaling: |D0| {args.sizes} at B={args.budget}; B {args.budgets} at |D0|={args.budget_d0}; tiny scorer "
          f"(max_length 64); {args.repeats} timed rounds each after a cache-filling one; loadavg {C.fmt_load(load0)}",
          flush=True)
    pool = pool_pairs(max(args.sizes + [args.budget_d0]))
    results = {"d0": [], "budget": []}
    done: dict = {}
    with tempfile.TemporaryDirectory(prefix="mars_bench_scaling_") as d:
        root = Path(d)
        for sweep, points in (("d0", [(n, args.budget) for n in args.sizes]),
                              ("budget", [(args.budget_d0, b) for b in args.budgets])):
            for n, b in points:
                if (n, b) not in done:
                    res = time_rounds(pool[:n], b, args.repeats, root, f"{n}_{b}")
                    done[(n, b)] = res
                    for x in res["runs"]:
                        print(f"  |D0|={n} B={b} {'fill ' if x['fill'] else 'timed'}: build_round {x['build_round_s']:.2f} s "
                              f"(prediction pass {x['score_s']:.2f} s), train_dataloader {x['train_dataloader_s']:.2f} s, "
                              f"|D^t|={x['d_t']}, generated {x['generated']}; loadavg {C.fmt_load(x['load_start'])} → "
                              f"{C.fmt_load(x['load_end'])}", flush=True)
                results[sweep].append(done[(n, b)])
    load1 = C.loadavg()
    print()
    summary = {}
    for sweep, key, label in (("d0", "d0", "|D0|"), ("budget", "budget", "B")):
        rs = results[sweep]
        print(f"{label:>6}{'build_round s':>15}{'ratio':>8}{'pred. pass s':>14}{'ratio':>8}{'full round s':>14}"
              f"{'ratio':>8}{'build CPU s':>14}{'ratio':>8}{'full CPU s':>14}{'ratio':>8}")
        fields = ("build_round_s", "score_s", "train_dataloader_s", "build_round_cpu_s", "train_dataloader_cpu_s")
        ratios = {f: [] for f in fields}
        for i, r in enumerate(rs):
            cells = []
            for f in fields:
                ratio = r[f] / rs[i - 1][f] if i else None
                if ratio:
                    ratios[f].append(ratio)
                cells.append(f"{r[f]:>15.2f}{(f'{ratio:.2f}x' if ratio else '-'):>8}" if f == "build_round_s" else
                             f"{r[f]:>14.2f}{(f'{ratio:.2f}x' if ratio else '-'):>8}")
            print(f"{r[key]:>6}" + "".join(cells))
        summary[sweep] = {f: v for f, v in ratios.items()}
        print()
    gen = sum(r["generated_in_timed"] for rs in results.values() for r in rs)
    print(f"  variants generated during timed rounds: {gen} (0: all from the cache)")
    print(f"  loadavg: start {C.fmt_load(load0)}, end {C.fmt_load(load1)}")
    C.write_json(args.json, {"args": vars(args), "results": results, "ratios": summary, "load": [load0, load1],
                             "machine": C.machine()})
    f = lambda xs: "/".join(f"{x:.2f}" for x in xs)  # noqa: E731
    print(f"SUMMARY scaling: build_round growth per doubling of |D0| {f(summary['d0']['build_round_s'])}x, "
          f"of B {f(summary['budget']['build_round_s'])}x; full round (train_dataloader) "
          f"{f(summary['d0']['train_dataloader_s'])}x and {f(summary['budget']['train_dataloader_s'])}x; "
          f"on CPU time build_round {f(summary['d0']['build_round_cpu_s'])}x and {f(summary['budget']['build_round_cpu_s'])}x "
          f"(linear = 2.00x); tiny scorer; medians of {args.repeats}; loadavg {C.fmt_load(load0)} → {C.fmt_load(load1)}")


if __name__ == "__main__":
    main()
