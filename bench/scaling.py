"""Time per MARS round as |D0| doubles (1k, 2k, 4k pairs) and as the budget B doubles.

    .venv/bin/python bench/scaling.py           # |D0| 1k/2k/4k at B=1000; B 500/1000/2000 at |D0|=2k
    .venv/bin/python bench/scaling.py --quick   # |D0| 100/200/400, B 50/100/200

A round is what a MARS epoch does before it trains, here as plain public calls, each timed with a
wall clock: `MarsLoop.next_training_set(1)` (the round, `build_round`: prediction pass over D0
with the head's features, allocation with the mars allocator τ=0.5, EDA augmentation served from
the SQLite cache, D^t; then the held-out leak check and the D^t digest), the round report
(`mars.lightning.rounds.write_round`: JSON + PNG in a temporary folder, as the RoundReporter
callback writes it), tokenising D^t (`PairFormatter.encode`) and the training loader built from
mars's public pieces (`PairBatchSampler` or `TokenBudgetSampler`, `Collator`), as the DataModule
builds it. `build_round` and its prediction pass are the round's own timing in the loop's report
(`loop.last_report["seconds"]`), the scorer's `scorer.time` beside it; the full round is the sum of
the four calls.

The scorer (`mars.model.scoring.Scorer` over a plain reward model, `mars.model.build.build_reward_model`,
the model a run's RewardModule holds) runs the *tiny* backbone (conf/backbone/tiny.yaml: a random
2-layer BERT, hidden 32, max_length 64) so that the figures measure the loop's own scaling, not a
large model's forward. D0 and the held-out splits come from a temporary local JSONL of the pairs
(`data=local`) through `mars.data.splits.load_splits`, handed to `loop.start` as the DataModule
does; no Lightning trainer is involved.

Data: HH-RLHF has 2,308 usable pairs, so the pool is HH plus PKU-SafeRLHF (3,000), deduplicated
and shuffled with a fixed seed; every size is a prefix of the same shuffled pool (the same mix of
sources at every size; no duplicated texts, which would hit the caches unfairly).

Each configuration: one untimed round fills the EDA cache; then `--repeats` timed rounds, each on a
fresh loop (no history) and a fresh formatter whose memo holds D0 and the held-out splits only (as
after the DataModule's `setup()`); the median is reported. Growth ratio per doubling: linear scaling is ≈ 2.0.
"""
from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

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


def setup_round(pairs, budget: int, root: Path, tag: str) -> dict:
    """What every round of a configuration shares: config, splits of `pairs` (a local file),
    the tiny reward model, the mars allocator and the EDA augmenter (with its cache)."""
    import hydra
    import torch

    from mars.config import typed
    from mars.data.splits import load_splits
    from mars.model.backbone import load_tokenizer
    from mars.model.build import build_reward_model

    path = root / f"pairs_{tag}.jsonl"
    with open(path, "w") as f:
        for p in pairs:
            f.write(json.dumps({"id": p.id, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n")
    cfg = C.compose(["backbone=tiny", "allocator=mars", "augmenter=eda", "data=local", f"data.path={path}",
                     "data.fields.id=id", "data.val_size=1", "data.test_size=0", "data.train_size=-1",
                     f"loop.budget={budget}", "loop.warmup_epochs=1", "loop.accumulate=true"], root / "run")
    data, backbone, finetune = (typed(cfg, g) for g in ("data", "backbone", "finetune"))
    torch.manual_seed(0)
    tokenizer = load_tokenizer(backbone)
    return {"cfg": cfg, "data": data, "backbone": backbone, "loop": typed(cfg, "loop"), "tokenizer": tokenizer,
            "model": build_reward_model(backbone, finetune, tokenizer), "splits": load_splits(data),
            "allocator": hydra.utils.instantiate(cfg.allocator), "augmenter": hydra.utils.instantiate(cfg.augmenter),
            "out_dir": str(root / f"out_{tag}")}


def fresh_loop(s: dict):
    """A new loop over D0 with a plain Scorer over the reward model, and a new formatter whose memo
    holds D0 and the held-out splits (what the DataModule's `setup()` tokenises)."""
    from mars.data.format import PairFormatter
    from mars.method.loop import MarsLoop
    from mars.model.scoring import Scorer

    data, backbone, tokenizer = s["data"], s["backbone"], s["tokenizer"]
    formatter = PairFormatter.of(tokenizer, backbone)
    scorer = Scorer(formatter, tokenizer.pad_token_id, s["model"], data.eval_batch_size, packing=data.packing,
                    max_tokens=data.max_tokens_per_batch)
    loop = MarsLoop(s["loop"], s["allocator"], s["augmenter"], scorer, seed=s["cfg"].seed)
    heldout = {"val": s["splits"]["val"], "test": s["splits"]["test"]}
    for split in [loop.start(s["splits"]["train"], heldout), *heldout.values()]:
        formatter.encode(split)
    return loop, formatter


def train_loader(encoded, data, pad_id: int, seed: int, epoch: int):
    """The epoch's training loader from mars's public pieces, as the DataModule builds it (rank 0 of 1)."""
    from torch.utils.data import DataLoader

    from mars.data.batch import Collator, PackedCollator, PairBatchSampler, TokenBudgetSampler

    if data.packing:
        sampler = TokenBudgetSampler([len(e.chosen) + len(e.rejected) for e in encoded], data.max_tokens_per_batch,
                                     shuffle=True, seed=seed, epoch=epoch)
        collate = PackedCollator()
    else:
        sampler = PairBatchSampler([e.length for e in encoded], data.batch_size, shuffle=True, seed=seed, epoch=epoch,
                                   length_grouping=data.length_grouping)
        collate = Collator(pad_id)
    return DataLoader(encoded, batch_sampler=sampler, collate_fn=collate, num_workers=data.num_workers)


def time_rounds(pairs, budget: int, repeats: int, root: Path, tag: str) -> dict:
    from mars.lightning.rounds import write_round

    s = setup_round(pairs, budget, root, tag)
    runs = []
    for r in range(repeats + 1):
        loop, formatter = fresh_loop(s)
        before, scored = dict(loop.augmenter.stats), loop.scorer.time.seconds
        with C.Measure() as m_round:
            d_t = loop.next_training_set(1)
        report = loop.last_report
        with C.Measure() as m_log:
            write_round(report, loop.history[-1], s["out_dir"])
        with C.Measure() as m_encode:
            encoded = formatter.encode(d_t)
        with C.Measure() as m_loader:
            batches = len(train_loader(encoded, s["data"], s["tokenizer"].pad_token_id, s["cfg"].seed, 1))
        parts = (m_round, m_log, m_encode, m_loader)
        gen = loop.augmenter.stats["generated"] - before.get("generated", 0)
        runs.append({"build_round_s": report["seconds"]["round"], "score_s": report["seconds"]["prediction_pass"],
                     "scorer_s": loop.scorer.time.seconds - scored, "next_training_set_s": m_round.seconds,
                     "log_round_s": m_log.seconds, "encode_s": m_encode.seconds, "loader_s": m_loader.seconds,
                     "full_round_s": sum(m.seconds for m in parts), "round_cpu_s": m_round.cpu_seconds,
                     "full_round_cpu_s": sum(m.cpu_seconds for m in parts), "batches": batches,
                     "generated": gen, "synthetic": report.get("synthetic_added"), "d_t": len(d_t),
                     "d0": len(loop.base), "load_start": m_round.load_start, "load_end": m_loader.load_end,
                     "fill": r == 0})
    timed = runs[1:]
    fields = ("build_round_s", "score_s", "scorer_s", "next_training_set_s", "log_round_s", "encode_s", "loader_s",
              "full_round_s", "round_cpu_s", "full_round_cpu_s")
    return {"d0": runs[0]["d0"], "budget": budget, "runs": runs,
            **{f: C.median([x[f] for x in timed]) for f in fields},
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
                              f"(prediction pass {x['score_s']:.2f} s), full round {x['full_round_s']:.2f} s = "
                              f"next_training_set {x['next_training_set_s']:.2f} + write_round {x['log_round_s']:.2f} + "
                              f"encode D^t {x['encode_s']:.2f} + loader {x['loader_s']:.3f}; |D^t|={x['d_t']}, generated "
                              f"{x['generated']}; loadavg {C.fmt_load(x['load_start'])} → {C.fmt_load(x['load_end'])}",
                              flush=True)
                results[sweep].append(done[(n, b)])
    load1 = C.loadavg()
    print()
    summary = {}
    for sweep, key, label in (("d0", "d0", "|D0|"), ("budget", "budget", "B")):
        rs = results[sweep]
        print(f"{label:>6}{'build_round s':>15}{'ratio':>8}{'pred. pass s':>14}{'ratio':>8}{'full round s':>14}"
              f"{'ratio':>8}{'round CPU s':>14}{'ratio':>8}{'full CPU s':>14}{'ratio':>8}")
        fields = ("build_round_s", "score_s", "full_round_s", "round_cpu_s", "full_round_cpu_s")
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
        parts = {f: [r[f] for r in rs] for f in ("next_training_set_s", "log_round_s", "encode_s", "loader_s")}
        print("  full round parts (s, per point): " + "; ".join(f"{f[:-2]} {'/'.join(f'{v:.2f}' for v in vs)}"
                                                              for f, vs in parts.items()))
        summary[sweep] = {f: v for f, v in ratios.items()}
        print()
    gen = sum(r["generated_in_timed"] for rs in results.values() for r in rs)
    print(f"  variants generated during timed rounds: {gen} (0: all from the cache)")
    print(f"  loadavg: start {C.fmt_load(load0)}, end {C.fmt_load(load1)}")
    C.write_json(args.json, {"args": vars(args), "results": results, "ratios": summary, "load": [load0, load1],
                             "machine": C.machine()})
    f = lambda xs: "/".join(f"{x:.2f}" for x in xs)  # noqa: E731
    print(f"SUMMARY scaling: build_round growth per doubling of |D0| {f(summary['d0']['build_round_s'])}x, "
          f"of B {f(summary['budget']['build_round_s'])}x; full round (next_training_set + write_round + encode + "
          f"loader) {f(summary['d0']['full_round_s'])}x and {f(summary['budget']['full_round_s'])}x; on CPU time "
          f"next_training_set {f(summary['d0']['round_cpu_s'])}x and {f(summary['budget']['round_cpu_s'])}x "
          f"(linear = 2.00x); tiny scorer; medians of {args.repeats}; loadavg {C.fmt_load(load0)} → {C.fmt_load(load1)}")

if __name__ == "__main__":
    main()
