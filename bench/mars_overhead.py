"""Wall time of one MARS round/epoch (allocator=mars augmenter=eda) against allocator=none, same |D^t|.

    .venv/bin/python bench/mars_overhead.py           # |D0| 160, B 64 (|D^t| 224), MiniLM, max_length 128
    .venv/bin/python bench/mars_overhead.py --quick   # |D0| 24, B 8 (a smoke run)

mars: the real `mars.cli.train.train(cfg)` with data=hh_rlhf_offline, data.train_size=|D0|, allocator=mars
augmenter=eda, loop.budget=B, loop.warmup_epochs=1 and loop.accumulate=false (every round trains
on D0 ∪ D_syn^t, |D^t| = |D0| + B, so every round is a repeat of the same amount of work),
1 warm-up epoch + R rounds. none: allocator=none augmenter=none with data.train_size=|D0|+B (the
same split seed: its first |D0| pairs are mars's D0), 1 + R epochs, the first dropped (it matches
mars's warm-up epoch, which is not timed either).

`--accumulate` runs the paper's schedule instead (loop.accumulate=true: D^t = D0 plus every
round's synthetic pairs, so |D^t| = |D0| + t·B) with mars alone, and reports each round's share
and the whole run's.

Per round/epoch, all through public hooks (nothing in mars is wrapped or replaced): t = the epoch
boundary + the training epoch. The epoch boundary (`_common.RoundTimer`: wall clock from one
epoch's `on_train_epoch_end` to the next one's `on_train_epoch_start`) holds the whole MARS
round as a run pays for it: `train_dataloader()` (prediction pass over D0, allocation,
augmentation from the cache, D^t, its held-out leak check and digest, tokenising D^t, the loader),
the round's JSON, PNG and metrics (mars's RoundReporter), plus the module's epoch-end metrics and
Lightning's loader set-up, which `none` pays too. The training epoch is `_common.EpochTimer`.
Validation is switched off for both (`trainer.limit_val_batches=0`) and so are checkpoints
(`trainer.enable_checkpointing=false`: a checkpoint saved at epoch end would fall in the
boundary), so the overhead is relative to training alone. Inside the boundary: `build_round`
and its prediction pass come from the round's own timing in the loop's report
(`loop.last_report["seconds"]`), cross-checked against the scorer's `scorer.time`; round
logging is the public `mars.lightning.rounds.write_round` timed on its own, replayed after the
fit on each round's (report, detail) into a scratch folder; Python's GC by `gc.callbacks`. The
rest (leak check, digest, tokenising D^t, loader, Lightning's epoch bookkeeping) can no longer be
told apart from outside and is reported as one figure. Overhead = (t_mars − t_none)/t_mars on
medians. The EDA variants are generated into a temporary SQLite cache before the timed run (the
augmenter of the composed config asked for every base pair with more variants than a round
requests), so the timed rounds read them from the cache; the rounds' `augment_generated` counts
are printed to show it. Two figures: the round's share of mars's own round+epoch time,
boundary/(boundary + training) — the same training work by construction, the headline figure —
and (t_mars − t_none)/t_mars against `none`, whose extra pairs are other real pairs, of other
lengths than mars's synthetic variants, so its training epoch is not the same work. Target: ≤ 10%.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Optional

import _common as C


class GCTimer:
    """Python's garbage collections as (start, end) perf_counter intervals, through `gc.callbacks`."""

    def __init__(self):
        self.intervals: list[tuple[float, float]] = []
        self._t0: Optional[float] = None

    def __call__(self, phase, info):
        if phase == "start":
            self._t0 = time.perf_counter()
        elif self._t0 is not None:
            self.intervals.append((self._t0, time.perf_counter()))
            self._t0 = None

    def within(self, window) -> float:
        """Seconds of collection inside `window` = (start, end)."""
        if not window:
            return 0.0
        a, b = window
        return sum(max(0.0, min(e, b) - max(s, a)) for s, e in self.intervals)


def replay_round_logging(fresh: list[tuple[dict, dict]], root: Path) -> dict[int, float]:
    """Seconds of `write_round` (JSON, PNG; no loggers, as in the timed run) per round's epoch, each
    on the (report, detail) the run's RoundReporter wrote, into a scratch folder."""
    from mars.lightning.rounds import write_round

    out = {}
    for report, detail in fresh:
        with C.Measure(quiet=True) as m:
            write_round(report, detail, str(root / "replayed_rounds"))
        out[report["epoch"]] = m.seconds
    return out


def prefill(cfg, n_variants: int) -> dict:
    """Generate EDA variants for every base pair into the config's cache (what a first run would do)."""
    import hydra

    from mars.augmenters.base import VariantRequest
    from mars.config import validate
    from mars.data.splits import load_splits

    typed = validate(cfg)
    augmenter = hydra.utils.instantiate(cfg.augmenter)
    base = augmenter.prepare(load_splits(typed["data"])["train"])
    requests = []
    for p in base:
        requests += [VariantRequest(p.chosen, "chosen", p.prompt, p.rejected, n_variants),
                     VariantRequest(p.rejected, "rejected", p.prompt, p.chosen, n_variants)]
    augmenter.augment(requests)
    return augmenter.stats


def run(kind: str, d0: int, budget: int, rounds: int, max_length: int, batch: int, root: Path,
        prefill_n: int, accumulate: bool = False) -> dict:
    import gc

    import mars.cli.train as train_script

    common = ["data=hh_rlhf_offline", "data.val_size=32", "data.test_size=32", f"backbone.max_length={max_length}",
              f"data.batch_size={batch}", f"trainer.max_epochs={rounds + 1}", "~logger", "callbacks=none",
              "test=false", "export=false", "+callbacks.bench_timer._target_=_common.EpochTimer",
              *C.ROUND_TIMER, *C.NO_CHECKPOINTS, "+trainer.limit_val_batches=0", *C.QUIET]
    if kind == "mars":
        over = [f"data.train_size={d0}", "allocator=mars", "augmenter=eda", f"loop.budget={budget}",
                "loop.warmup_epochs=1", f"loop.accumulate={str(accumulate).lower()}"]
    else:
        over = [f"data.train_size={d0 + budget}", "allocator=none", "augmenter=none"]
    cfg = C.compose(common + over, root / kind)
    (root / kind).mkdir(parents=True, exist_ok=True)  # no checkpoint folder creates it: train() writes metrics.json there
    fill = None
    if kind == "mars":
        with C.Measure("prefill EDA cache") as m:
            fill = prefill(cfg, prefill_n)
        fill = {**fill, "s": m.seconds}
    gc_timer = GCTimer()
    gc.callbacks.append(gc_timer)
    try:
        with C.Measure(f"{kind}: fit ({rounds + 1} epochs, incl. start-up)"):
            _, objs = train_script.train(cfg)
    finally:
        gc.callbacks.remove(gc_timer)
    timer = C.find_callback(objs["trainer"], C.EpochTimer)
    round_timer = C.find_callback(objs["trainer"], C.RoundTimer)
    logging_s = replay_round_logging(round_timer.fresh, root / kind)
    rounds_by_epoch = {r["epoch"]: r for r in round_timer.rounds}
    out = []
    for e in timer.epochs:
        r = rounds_by_epoch[e["epoch"]]
        boundary = r["boundary_s"] or 0.0  # the first epoch's loader is built before training starts
        out.append({"epoch": e["epoch"], "round_s": boundary, "train_s": e["train_s"],
                    "total_s": boundary + e["train_s"], "pairs": e["pairs"],
                    "total_cpu_s": (r["boundary_cpu_s"] or 0.0) + e["train_cpu_s"],
                    "build_round_s": r["round_s"], "score_s": r["prediction_pass_s"], "scorer_s": r["scoring_s"],
                    "scored_rows": r["scored_rows"], "log_round_s": logging_s.get(e["epoch"], 0.0),
                    "rest_s": boundary - r["round_s"], "gc_s": gc_timer.within(r["boundary_window"]),
                    "report": r["report"], "load_start": e["load_start"], "load_end": e["load_end"],
                    "pad_fraction": e["pad_fraction"]})
    return {"kind": kind, "epochs": out[1:], "warmup": out[0], "prefill": fill}


def main() -> None:
    ap = C.arg_parser(__doc__)
    ap.add_argument("--d0", type=int, default=160)
    ap.add_argument("--budget", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds/epochs (repeats)")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prefill-variants", type=int, default=8,
                    help="variants per response put into the cache before the timed run")
    ap.add_argument("--accumulate", action="store_true",
                    help="the paper's growing D^t (mars alone): per-round and whole-run share of the round")
    args = C.parse(ap)
    if args.quick:
        args.d0, args.budget, args.rounds = 24, 8, 2
    if args.accumulate:
        return growing_schedule(args)
    load0 = C.begin()
    print(f"mars_overhead: |D0|={args.d0}, B={args.budget}, |D^t|={args.d0 + args.budget}, MiniLM max_length "
          f"{args.max_length}, {args.batch} pairs/batch, {args.rounds} timed rounds each; loadavg {C.fmt_load(load0)}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="mars_bench_overhead_") as d:
        res = {k: run(k, args.d0, args.budget, args.rounds, args.max_length, args.batch, Path(d),
                      args.prefill_variants) for k in ("none", "mars")}
    load1 = C.loadavg()
    for k in ("none", "mars"):
        for e in res[k]["epochs"]:
            rep = e["report"]
            extra = (f"; boundary parts: build_round {e['build_round_s']:.2f} s (report's seconds) of which "
                     f"prediction pass {e['score_s']:.2f} s (scorer.time {e['scorer_s']:.2f} s, {e['scored_rows']} "
                     f"rows), the rest {e['rest_s']:.2f} s (leak check, digest, tokenising D^t, loader, round "
                     f"JSON/PNG, Lightning; round logging alone, replayed: {e['log_round_s']:.2f} s), Python GC "
                     f"{e['gc_s']:.2f} s; augment generated {rep.get('augment_generated', 0)} / cache hits "
                     f"{rep.get('augment_cache_hits', 0)}" if k == "mars" else f"; boundary: {e['rest_s']:.2f} s "
                     "(digest, tokenising, loader, Lightning)")
            print(f"  {k} epoch {e['epoch']}: {e['total_s']:.1f} s = epoch boundary {e['round_s']:.2f} s + training "
                  f"{e['train_s']:.1f} s ({e['pairs']} pairs{extra}); loadavg {C.fmt_load(e['load_start'])} → "
                  f"{C.fmt_load(e['load_end'])}")
    med = {k: {f: C.median([e[f] for e in res[k]["epochs"]]) for f in
               ("total_s", "total_cpu_s", "round_s", "train_s", "score_s", "scorer_s", "log_round_s", "build_round_s",
                "rest_s", "gc_s", "pairs")} for k in res}
    t_m, t_n = med["mars"]["total_s"], med["none"]["total_s"]
    overhead = (t_m - t_n) / t_m
    c_m, c_n = med["mars"]["total_cpu_s"], med["none"]["total_cpu_s"]
    overhead_cpu = (c_m - c_n) / c_m
    share = med["mars"]["round_s"] / (med["mars"]["round_s"] + med["mars"]["train_s"])
    print()
    print(f"{'median per round/epoch':28}{'none':>10}{'mars':>10}")
    for label, f in (("total (s)", "total_s"), ("total CPU time (s)", "total_cpu_s"), ("epoch boundary (s)", "round_s"),
                     ("training (s)", "train_s"), ("pairs trained", "pairs")):
        print(f"{label:28}{med['none'][f]:>10.2f}{med['mars'][f]:>10.2f}")
    print(f"  mars epoch boundary = build_round {med['mars']['build_round_s']:.2f} s (prediction pass "
          f"{med['mars']['score_s']:.2f} s, allocation + augmentation from the cache + D^t "
          f"{med['mars']['build_round_s'] - med['mars']['score_s']:.2f} s) + the rest {med['mars']['rest_s']:.2f} s, "
          f"measured as a whole (leak check, digest, tokenising D^t, loader, round logging, Lightning's epoch "
          f"bookkeeping; none's is {med['none']['rest_s']:.2f} s); round logging (JSON, PNG) alone, replayed: "
          f"{med['mars']['log_round_s']:.2f} s; Python GC ran {med['mars']['gc_s']:.2f} s inside the boundary")
    print(f"  round share of mars's own time, boundary / (boundary + training) = {share:.1%} (target <= 10%: "
          f"{'met' if share <= 0.10 else 'NOT met'})")
    print(f"  against none, (t_mars - t_none) / t_mars = {overhead:.1%}; on CPU time {overhead_cpu:.1%} "
          f"(none's training epoch: other pairs, other lengths)")
    print(f"  loadavg: start {C.fmt_load(load0)}, end {C.fmt_load(load1)}")
    C.write_json(args.json, {"args": vars(args), "results": res, "medians": med, "round_share": share,
                             "overhead": overhead, "overhead_cpu": overhead_cpu,
                             "load": [load0, load1], "machine": C.machine()})
    print(f"SUMMARY mars_overhead: |D^t|={args.d0 + args.budget}: the round is {share:.1%} of a MARS round+epoch "
          f"(epoch boundary {med['mars']['round_s']:.1f} of {t_m:.1f} s; target 10% {'met' if share <= 0.10 else 'NOT met'}), "
          f"build_round {med['mars']['build_round_s']:.1f} s and prediction pass {med['mars']['score_s']:.1f} s of it; "
          f"against none {overhead:.1%} ({t_n:.1f} s per plain "
          f"epoch); medians of {args.rounds} rounds; loadavg {C.fmt_load(load0)} → {C.fmt_load(load1)}")


def growing_schedule(args) -> None:
    """mars alone with loop.accumulate=true: each round's share, and the whole run's."""
    load0 = C.begin()
    print(f"mars_overhead --accumulate: |D0|={args.d0}, B={args.budget} per round, {args.rounds} rounds, "
          f"|D^t| = {args.d0} + t*{args.budget}; loadavg {C.fmt_load(load0)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="mars_bench_overhead_") as d:
        res = run("mars", args.d0, args.budget, args.rounds, args.max_length, args.batch, Path(d),
                  args.prefill_variants * args.rounds, accumulate=True)
    for e in res["epochs"]:
        print(f"  round {e['epoch']}: |D^t|={e['pairs']}, epoch boundary {e['round_s']:.2f} s (build_round "
              f"{e['build_round_s']:.2f} s, prediction pass {e['score_s']:.2f} s) + training {e['train_s']:.1f} s: the round is "
              f"{e['round_s'] / e['total_s']:.1%}; augment generated {e['report'].get('augment_generated', 0)}")
    whole = sum(e["round_s"] for e in res["epochs"]) / sum(e["total_s"] for e in res["epochs"])
    C.write_json(args.json, {"args": vars(args), "results": res, "whole_run_share": whole,
                             "load": [load0, C.loadavg()], "machine": C.machine()})
    print(f"SUMMARY mars_overhead --accumulate: rounds are {whole:.1%} of the {args.rounds} rounds' wall time "
          f"(target 10% {'met' if whole <= 0.10 else 'NOT met'}); per round "
          + ", ".join(f"{e['round_s'] / e['total_s']:.1%}" for e in res["epochs"]))


if __name__ == "__main__":
    main()
