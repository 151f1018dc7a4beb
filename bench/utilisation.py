"""Measured matrix-product peak of this machine, and the share of it mars training and scoring use.

    .venv/bin/python bench/utilisation.py           # 2048^3 fp32/bf16 matmul; mars on 64 HH pairs
    .venv/bin/python bench/utilisation.py --quick   # 1024^3; 24 pairs

Peak: best of `--matmul-repeats` timed `a @ b` of two n×n matrices (2n³ FLOP each) in fp32 and in
bf16, after a warm-up, with the threads of the run (`--threads`, default: torch's, one per core). Useful FLOP/s of mars: training ≈ 6 × N ×
non-padding tokens/s, scoring (the prediction pass) ≈ 2 × N × non-padding tokens/s, N the
non-embedding parameters of the MiniLM reward model (attention-score FLOPs, which grow with the
sequence length, are not counted: the usual 6N/2N approximation). The token rates are measured
here with the same code as bench/prediction_pass.py (real `mars.cli.train.train` run, max_length 256,
8 pairs per batch; the DataModule's `score()` with batch 64), medians over epochs and passes.
mars trains in fp32, so the fp32 peak is the reference; the bf16 fraction is shown for comparison.
"""
from __future__ import annotations

import time

import _common as C


def matmul_peak(n: int, dtype, repeats: int) -> dict:
    import torch

    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b
    times, cpu = [], []
    load_start = C.loadavg()
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    flop = 2 * n ** 3
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "best_s": min(times), "threads": torch.get_num_threads(),
            "median_s": C.median(times), "peak_flops": flop / min(times), "median_flops": flop / C.median(times),
            "peak_flops_per_cpu_s": flop / min(cpu),
            "load_start": load_start, "load_end": C.loadavg()}


def main() -> None:
    ap = C.arg_parser(__doc__)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--matmul-repeats", type=int, default=7)
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--passes", type=int, default=3)
    args = C.parse(ap)
    if args.quick:
        args.n, args.matmul_repeats, args.pairs, args.epochs, args.passes = 1024, 3, 24, 2, 2
    import torch

    from prediction_pass import train_and_score

    load0 = C.begin()
    print(f"utilisation: {args.n}x{args.n} @ {args.n}x{args.n} best of {args.matmul_repeats}; mars on {args.pairs} "
          f"HH pairs x {args.epochs} epochs, {args.passes} prediction passes; loadavg {C.fmt_load(load0)}", flush=True)
    peaks = {}
    for dt in (torch.float32, torch.bfloat16):
        p = matmul_peak(args.n, dt, args.matmul_repeats)
        peaks[p["dtype"]] = p
        print(f"  matmul {p['dtype']} ({p['threads']} threads): best {p['peak_flops'] / 1e9:.1f} GFLOP/s (median "
              f"{p['median_flops'] / 1e9:.1f}; best per CPU-second {p['peak_flops_per_cpu_s'] / 1e9:.1f}); "
              f"loadavg {C.fmt_load(p['load_start'])} → {C.fmt_load(p['load_end'])}", flush=True)
    res = train_and_score(args.pairs, args.epochs, args.passes, 256)
    n = res["non_embedding_params"]
    train_flops = 6 * n * res["train_tps"]
    score_flops = 2 * n * res["score_tps"]
    fp32, bf16 = peaks["float32"]["peak_flops"], peaks["bfloat16"]["peak_flops"]
    fp32_cpu = peaks["float32"]["peak_flops_per_cpu_s"]
    train_flops_cpu = 6 * n * res["train_tpcs"]
    score_flops_cpu = 2 * n * res["score_tpcs"]
    load1 = C.loadavg()
    print()
    print(f"  MiniLM reward model: {res['params'] / 1e6:.2f}M parameters, {n / 1e6:.2f}M outside the embeddings")
    print(f"{'':26}{'tokens/s':>10}{'GFLOP/s':>10}{'of fp32 peak':>14}{'of bf16 peak':>14}")
    for label, tps, fl in (("training (6N/token)", res["train_tps"], train_flops),
                           ("scoring (2N/token)", res["score_tps"], score_flops)):
        print(f"{label:26}{tps:>10.0f}{fl / 1e9:>10.2f}{fl / fp32:>14.1%}{fl / bf16:>14.1%}")
    print(f"  per CPU-second (robust to other work on the machine): training {train_flops_cpu / 1e9:.2f} GFLOP = "
          f"{train_flops_cpu / fp32_cpu:.1%}, scoring {score_flops_cpu / 1e9:.2f} GFLOP = {score_flops_cpu / fp32_cpu:.1%} "
          f"of the fp32 matmul's {fp32_cpu / 1e9:.1f} GFLOP per CPU-second")
    print(f"  peaks: fp32 {fp32 / 1e9:.1f} GFLOP/s, bf16 {bf16 / 1e9:.1f} GFLOP/s ({args.n}^3, best of "
          f"{args.matmul_repeats})")
    print(f"  loadavg: start {C.fmt_load(load0)}, end {C.fmt_load(load1)}")
    C.write_json(args.json, {"args": vars(args), "peaks": peaks, "mars": res, "train_flops": train_flops,
                             "score_flops": score_flops, "train_flops_cpu": train_flops_cpu,
                             "score_flops_cpu": score_flops_cpu, "load": [load0, load1], "machine": C.machine()})
    print(f"SUMMARY utilisation: peak fp32 {fp32 / 1e9:.1f} / bf16 {bf16 / 1e9:.1f} GFLOP/s; mars training "
          f"{train_flops / 1e9:.2f} GFLOP/s = {train_flops / fp32:.1%} of fp32 peak, scoring {score_flops / 1e9:.2f} "
          f"GFLOP/s = {score_flops / fp32:.1%} (per CPU-second {train_flops_cpu / fp32_cpu:.1%} and "
          f"{score_flops_cpu / fp32_cpu:.1%}); loadavg {C.fmt_load(load0)} → {C.fmt_load(load1)}")


if __name__ == "__main__":
    main()
