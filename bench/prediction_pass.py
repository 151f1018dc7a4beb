"""Pairs/s of the MARS prediction pass against training pairs/s, on the same pairs.

    .venv/bin/python bench/prediction_pass.py           # 256 HH pairs, MiniLM, max_length 256
    .venv/bin/python bench/prediction_pass.py --quick   # 32 pairs (a smoke run)

One process runs the real `mars.cli.train.train(cfg)` (data=hh_rlhf_offline, allocator=none, 8 pairs per
batch) for `--epochs` epochs on the N base pairs; training pairs/s is the median over epochs
(each epoch timed by a callback; validation switched off, `trainer.limit_val_batches=0`). Then,
with the trained model still attached, the run's own scorer, `loop.scorer.pairs(pairs,
features=True)` (`mars.model.scoring.Scorer`, the call `MarsLoop.build_round` makes: every
distinct sequence scored once, in length-sorted batches of 2 × `data.eval_batch_size` rows, 16
by default, the head's input features captured) scores the same N pairs `--repeats` times; its
pairs/s is the median.
Target: prediction pass ≥ 3× training pairs/s.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import _common as C


class Counted:
    """Rows, real tokens and token slots the scorer ran inside a `with` block, from its own
    cumulative counters (`scorer.time`)."""

    def __init__(self, scorer):
        self.scorer = scorer

    def __enter__(self):
        t = self.scorer.time
        self.start = (t.rows, t.tokens, t.slots)
        return self

    def __exit__(self, *exc):
        t = self.scorer.time
        self.rows, self.tokens, self.padded = (t.rows - self.start[0], t.tokens - self.start[1],
                                               t.slots - self.start[2])


def train_and_score(n_pairs: int, epochs: int, repeats: int, max_length: int = 256, batch: int = 8,
                    eval_batch: int = 16, backbone: str = "minilm", verbose: bool = True,
                    alt_eval_batches: tuple[int, ...] = ()) -> dict:
    """Train `epochs` epochs on `n_pairs` HH pairs with the real config, then time the prediction pass."""
    C.quiet_logging()
    import mars.cli.train as train_script

    with tempfile.TemporaryDirectory(prefix="mars_bench_pred_") as d:
        cfg = C.compose([
            "data=hh_rlhf_offline", f"data.train_size={n_pairs}", "data.val_size=32", "data.test_size=32",
            f"backbone={backbone}", f"backbone.max_length={max_length}", f"data.batch_size={batch}",
            f"data.eval_batch_size={eval_batch}", "allocator=none", "augmenter=none",
            f"trainer.max_epochs={epochs}", "~logger", "callbacks=none", "test=false", "export=false",
            "+callbacks.bench_timer._target_=_common.EpochTimer", "+trainer.limit_val_batches=0", *C.QUIET,
        ], Path(d))
        metrics, objs = train_script.train(cfg)
        timer = C.find_callback(objs["trainer"], C.EpochTimer)
        dm, module = objs["datamodule"], objs["model"]
        base = dm.loop.base
        scorer = dm.loop.scorer
        scoring = []
        for r in range(repeats):
            with C.Measure() as m, Counted(scorer) as counter:
                scores = scorer.pairs(base, features=True)
            assert len(scores.margins) == len(base) and 0 < counter.rows <= 2 * len(base)
            scoring.append({"s": m.seconds, "cpu_s": m.cpu_seconds, "pairs": len(base), "rows": counter.rows,
                            "tokens": counter.tokens,
                            "padded": counter.padded, "load_start": m.load_start, "load_end": m.load_end})
            if verbose:
                print(f"  prediction pass {r}: {len(base) / m.seconds:.2f} pairs/s ({m.seconds:.2f} s); "
                      f"loadavg {C.fmt_load(m.load_start)} → {C.fmt_load(m.load_end)}", flush=True)
        alt = {}
        for bs in alt_eval_batches:  # the same pass with another data.eval_batch_size (a what-if)
            scorer.batch_size = bs
            runs = []
            for r in range(repeats):
                with C.Measure() as m, Counted(scorer) as counter:
                    scorer.pairs(base, features=True)
                runs.append({"s": m.seconds, "cpu_s": m.cpu_seconds, "tokens": counter.tokens, "padded": counter.padded})
            scorer.batch_size = eval_batch
            alt[bs] = {"pps": C.median([len(base) / x["s"] for x in runs]),
                       "ppcs": C.median([len(base) / x["cpu_s"] for x in runs]),
                       "pad": C.median([1 - x["tokens"] / x["padded"] for x in runs]), "runs": runs}
            if verbose:
                print(f"  prediction pass with eval batch {bs}: {alt[bs]['pps']:.2f} pairs/s (median of {repeats}), "
                      f"padding {alt[bs]['pad']:.3f}", flush=True)
        epochs_out = timer.epochs
        if verbose:
            for e in epochs_out:
                print(f"  training epoch {e['epoch']}: {e['pairs'] / e['train_s']:.2f} pairs/s "
                      f"({e['train_s']:.1f} s, {e['batches']} batches); loadavg "
                      f"{C.fmt_load(e['load_start'])} → {C.fmt_load(e['load_end'])}", flush=True)
        params = C.non_embedding_params(module.model)
        total_params = sum(p.numel() for p in module.model.parameters())
    return {
        "n_pairs": len(base), "epochs": epochs_out, "scoring": scoring, "alt_eval_batches": alt, "non_embedding_params": params,
        "params": total_params, "truncated": dm.truncated.get("train"),
        "train_pps": C.median([e["pairs"] / e["train_s"] for e in epochs_out]),
        "train_tps": C.median([e["tokens"] / e["train_s"] for e in epochs_out]),
        "train_pad": C.median([e["pad_fraction"] for e in epochs_out]),
        "score_pps": C.median([s["pairs"] / s["s"] for s in scoring]),
        "train_ppcs": C.median([e["pairs"] / e["train_cpu_s"] for e in epochs_out]),
        "score_ppcs": C.median([s["pairs"] / s["cpu_s"] for s in scoring]),
        "train_tpcs": C.median([e["tokens"] / e["train_cpu_s"] for e in epochs_out]),
        "score_tpcs": C.median([s["tokens"] / s["cpu_s"] for s in scoring]),
        "score_tps": C.median([s["tokens"] / s["s"] for s in scoring]),
        "score_pad": C.median([1 - s["tokens"] / s["padded"] for s in scoring]),
    }


def main() -> None:
    ap = C.arg_parser(__doc__)
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=3, help="training epochs (repeats of the training figure)")
    ap.add_argument("--repeats", type=int, default=3, help="prediction passes")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--alt-eval-batch", type=int, nargs="*", default=[64],
                    help="also time the pass with these eval batch sizes (what-if; the default config uses 16)")
    args = C.parse(ap)
    if args.quick:
        args.pairs, args.epochs, args.repeats = 32, 2, 2
    load0 = C.begin()
    print(f"prediction_pass: {args.pairs} HH pairs, MiniLM, max_length {args.max_length}; training 8 pairs/batch "
          f"x {args.epochs} epochs, prediction pass eval batch 16 (length-sorted) x {args.repeats}; "
          f"loadavg {C.fmt_load(load0)}", flush=True)
    t0 = time.perf_counter()
    res = train_and_score(args.pairs, args.epochs, args.repeats, args.max_length,
                          alt_eval_batches=tuple(args.alt_eval_batch))
    load1 = C.loadavg()
    ratio = res["score_pps"] / res["train_pps"]
    ratio_cpu = res["score_ppcs"] / res["train_ppcs"]
    print()
    print(f"{'':28}{'training':>12}{'prediction':>12}")
    print(f"{'pairs/s (median)':28}{res['train_pps']:>12.2f}{res['score_pps']:>12.2f}")
    print(f"{'pairs per CPU-second':28}{res['train_ppcs']:>12.2f}{res['score_ppcs']:>12.2f}")
    print(f"{'non-padding tokens/s':28}{res['train_tps']:>12.0f}{res['score_tps']:>12.0f}")
    print(f"{'padding fraction':28}{res['train_pad']:>12.3f}{res['score_pad']:>12.3f}")
    for bs, a in res["alt_eval_batches"].items():
        print(f"  what-if data.eval_batch_size={bs}: {a['pps']:.2f} pairs/s ({a['pps'] / res['train_pps']:.2f}x training), "
              f"padding {a['pad']:.3f}")
    print(f"  {res['truncated']} of {res['n_pairs']} pairs truncated to {args.max_length} tokens (both passes)")
    print(f"  ratio prediction/training pairs/s: {ratio:.2f}x (target >= 3x: {'met' if ratio >= 3 else 'NOT met'}); "
          f"per CPU-second {ratio_cpu:.2f}x")
    print(f"  loadavg: start {C.fmt_load(load0)}, end {C.fmt_load(load1)}; wall {time.perf_counter() - t0:.0f} s")
    C.write_json(args.json, {"args": vars(args), **res, "ratio": ratio, "ratio_cpu": ratio_cpu, "load": [load0, load1],
                             "machine": C.machine()})
    print(f"SUMMARY prediction_pass: {res['score_pps']:.2f} pairs/s scoring vs {res['train_pps']:.2f} pairs/s "
          f"training = {ratio:.2f}x (per CPU-second {ratio_cpu:.2f}x; target 3x {'met' if ratio >= 3 else 'NOT met'}); medians of "
          f"{args.repeats} passes / {args.epochs} epochs; loadavg {C.fmt_load(load0)} → {C.fmt_load(load1)}")


if __name__ == "__main__":
    main()
