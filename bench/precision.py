"""fp32 against bf16 on this CPU, side by side in one run: the matmul rate and a training step.

    .venv/bin/python bench/precision.py --threads 2    # 512-2048^3 matmuls; steps over 4 batches of 8 pairs
    .venv/bin/python bench/precision.py --quick        # 512^3; 2 batches of 2 pairs (a smoke run)

Whether bf16 pays on a CPU depends on its instructions, read from `lscpu`'s flags (printed):
`amx_bf16` (Intel AMX: bf16 matrix tiles), `avx512_bf16` (bf16 dot-product instructions, on
Intel Cooper Lake and later and AMD Zen 4 and later) or neither (bf16 is converted to fp32 around
every product). The flags say what the CPU can do, not what torch's kernels make of it: an
AVX512-BF16 Xeon without AMX ran bf16 matmuls at half its fp32 rate (docs/benchmarks.md), so
this script measures.

Measured here, the configurations alternating within each repeat so that all see the same load:

* **matmul:** `a @ b` of two n×n matrices (2n³ FLOP) in fp32 and in bf16, for each `--sizes` n,
  the best and the median of `--repeats`.
* **training step** of the MiniLM reward model: zero_grad, one forward over chosen and rejected
  sequences, Bradley-Terry loss, backward, gradient clipping at 1.0, AdamW (fused in fp32, not under bf16: what Lightning
  runs per batch), averaged over `--batches` batches of `--pairs` pairs drawn as mars's training
  sampler draws them from the first `--pool` HH-RLHF pairs (max length `--max-length`). In fp32
  (`trainer.precision=32-true`) and in bf16 autocast on the forward with fp32 weights, gradients
  and optimiser (what `trainer.precision=bf16-mixed` does on CPU: `torch.autocast("cpu",
  dtype=torch.bfloat16)`); and for the same pairs padded (`Collator`) and packed
  (`PackedCollator`, `data.packing=true`: one row, attention per sequence). The model
  and batches are built with mars's own code (`RewardModule.configure_model`, `PairFormatter`,
  the collators); each configuration trains its own copy of the same initial weights. Median of
  `--steps` timed passes after one warm-up pass.
"""
from __future__ import annotations

import copy
import subprocess
import tempfile
import time
from pathlib import Path

import _common as C


def cpu_flags() -> dict:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        text = ""
    flags = set()
    for line in text.splitlines():
        if line.startswith("Flags:"):
            flags = set(line.split(":", 1)[1].split())
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
    return {f: f in flags for f in wanted}


def isa() -> str:
    import torch

    try:
        return torch.backends.cpu.get_cpu_capability()
    except Exception:
        return "?"


def matmul_pair(n: int, repeats: int) -> dict:
    import torch

    mats = {dt: (torch.randn(n, n).to(dt), torch.randn(n, n).to(dt)) for dt in (torch.float32, torch.bfloat16)}
    for a, b in mats.values():
        for _ in range(2):
            a @ b
    times = {dt: [] for dt in mats}
    for _ in range(repeats):
        for dt, (a, b) in mats.items():
            t0 = time.perf_counter()
            a @ b
            times[dt].append(time.perf_counter() - t0)
    flop = 2 * n ** 3
    out = {}
    for dt, ts in times.items():
        name = str(dt).replace("torch.", "")
        out[name] = {"best_gflops": flop / min(ts) / 1e9, "median_gflops": flop / C.median(ts) / 1e9,
                     "times_s": ts}
    out["bf16_over_fp32_best"] = out["bfloat16"]["best_gflops"] / out["float32"]["best_gflops"]
    out["bf16_over_fp32_median"] = out["bfloat16"]["median_gflops"] / out["float32"]["median_gflops"]
    return out


def build(pool: int, pairs: int, batches: int, max_length: int, root: Path):
    """A MiniLM RewardModule and `batches` training batches of `pairs` pairs each, drawn from the
    first `pool` HH pairs as mars's training sampler draws them (seeded, length-grouped), each
    both padded (`Collator`) and packed (`PackedCollator`): the same pairs in both layouts."""
    import torch

    from mars.config import typed
    from mars.data.batch import Collator, PackedCollator, PairBatchSampler
    from mars.data.format import PairFormatter
    from mars.model.backbone import load_tokenizer
    from mars.lightning.module import RewardModule

    cfg = C.compose(["data=hh_rlhf_offline", f"backbone.max_length={max_length}"], root)
    backbone, finetune, optim, loss = (typed(cfg, g) for g in ("backbone", "finetune", "optim", "loss"))
    tokenizer = load_tokenizer(backbone)
    torch.manual_seed(0)
    module = RewardModule(backbone, finetune, optim, loss, cfg.seed, tokenizer)
    module.configure_model()
    formatter = PairFormatter.of(tokenizer, backbone)
    encoded = formatter.encode(C.hh_pairs()[:pool])
    groups = PairBatchSampler([e.length for e in encoded], pairs, shuffle=True, seed=cfg.seed).all_batches()[:batches]
    layouts = {"padded": [Collator(tokenizer.pad_token_id)([encoded[i] for i in g]) for g in groups],
               "packed": [PackedCollator()([encoded[i] for i in g]) for g in groups]}
    return module, layouts, optim


def step_fn(module, optim_cfg, bf16: bool):
    import torch

    from mars.model.loss import bradley_terry_loss

    params = [p for p in module.parameters() if p.requires_grad]
    # as RewardModule.configure_optimizers: fused in fp32, not under mixed precision
    opt = torch.optim.AdamW(params, lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay, fused=not bf16)
    module.train()

    def step(batch):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            r_chosen, r_rejected = module.pair_rewards(batch)
            loss = bradley_terry_loss(r_chosen, r_rejected)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(loss.detach())

    return step


def main() -> None:
    ap = C.arg_parser(__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--repeats", type=int, default=7, help="matmuls per size and dtype")
    ap.add_argument("--pool", type=int, default=512, help="the first HH pairs the batches are drawn from")
    ap.add_argument("--pairs", type=int, default=8, help="pairs per training batch")
    ap.add_argument("--batches", type=int, default=4, help="batches a timed step cycles over")
    ap.add_argument("--layouts", nargs="+", default=["padded", "packed"], choices=["padded", "packed"])
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5, help="timed passes over the batches per configuration")
    args = C.parse(ap)
    if args.quick:
        args.sizes, args.repeats, args.pool, args.pairs, args.batches, args.steps = [512], 3, 64, 2, 2, 2
    import torch

    load0 = C.begin()
    flags = cpu_flags()
    have = [f for f, on in flags.items() if on]
    print(f"precision: lscpu flags {' '.join(have) or '(none of interest)'}; torch CPU capability {isa()}; "
          f"loadavg {C.fmt_load(load0)}", flush=True)
    mm = {}
    for n in args.sizes:
        r = matmul_pair(n, args.repeats)
        mm[n] = r
        print(f"  matmul {n}^3: fp32 best {r['float32']['best_gflops']:.1f} GFLOP/s (median "
              f"{r['float32']['median_gflops']:.1f}), bf16 best {r['bfloat16']['best_gflops']:.1f} (median "
              f"{r['bfloat16']['median_gflops']:.1f}): bf16/fp32 {r['bf16_over_fp32_best']:.2f}x best, "
              f"{r['bf16_over_fp32_median']:.2f}x median", flush=True)
    with tempfile.TemporaryDirectory(prefix="mars_bench_precision_") as d:
        module, layouts, optim_cfg = build(args.pool, args.pairs, args.batches, args.max_length, Path(d))
    layouts = {k: v for k, v in layouts.items() if k in args.layouts}
    configs = [(layout, prec) for layout in layouts for prec in ("fp32", "bf16")]
    copies = {c: copy.deepcopy(module) for c in configs}
    steps = {c: step_fn(copies[c], optim_cfg, c[1] == "bf16") for c in configs}
    for c, step in steps.items():  # warm-up: one pass over the batches
        for b in layouts[c[0]]:
            step(b)
    times = {c: [] for c in configs}
    load_s = C.loadavg()
    for _ in range(args.steps):  # alternate the configurations: each sees the same load
        for c, step in steps.items():
            t0 = time.perf_counter()
            for b in layouts[c[0]]:
                step(b)
            times[c].append((time.perf_counter() - t0) / len(layouts[c[0]]))
    load_e = C.loadavg()
    shapes = {k: [tuple(b["input_ids"].shape) for b in v] for k, v in layouts.items()}
    tokens = {k: sum(C.batch_tokens(b)[0] for b in v) / len(v) for k, v in layouts.items()}
    slots = {k: sum(C.batch_tokens(b)[1] for b in v) / len(v) for k, v in layouts.items()}
    train = {f"{c[0]} {c[1]}": {"median_s": C.median(ts), "best_s": min(ts), "times_s": ts,
                                "tokens_per_s": tokens[c[0]] / C.median(ts)} for c, ts in times.items()}
    print(f"  training step (zero_grad, forward, loss, backward, clip, AdamW), {args.pairs} pairs a batch, "
          f"mean of {args.batches} batches, median of {args.steps}; loadavg {C.fmt_load(load_s)} → {C.fmt_load(load_e)}")
    for k in layouts:
        print(f"    {k}: shapes {shapes[k]}, {tokens[k]:.0f} non-padding tokens a batch "
              f"(padding {1 - tokens[k] / slots[k]:.1%})")
    for name, r in train.items():
        print(f"    {name:14} {r['median_s'] * 1e3:7.0f} ms/step  {r['tokens_per_s']:7.0f} tokens/s")
    speed = {k: train[f"{k} fp32"]["median_s"] / train[f"{k} bf16"]["median_s"] for k in layouts}
    print("    bf16-mixed against fp32: " + ", ".join(f"{k} {v:.2f}x" for k, v in speed.items()))
    if "packed" in layouts and "padded" in layouts:
        print("    packed against padded (same pairs): " + ", ".join(
            f"{p} {train[f'padded {p}']['median_s'] / train[f'packed {p}']['median_s']:.2f}x" for p in ("fp32", "bf16")))
    big = mm[max(args.sizes)]
    verdict = ("native bf16 matrix tiles (AMX)" if flags.get("amx_bf16") else
               "native bf16 dot products (AVX512-BF16), no AMX" if flags.get("avx512_bf16") else
               "no native bf16: emulated through fp32")
    load1 = C.loadavg()
    C.write_json(args.json, {"args": vars(args), "flags": flags, "isa": isa(), "matmul": mm, "train_step": train,
                             "bf16_step_speedup": speed, "shapes": shapes, "tokens": tokens, "slots": slots,
                             "load": [load0, load1], "machine": C.machine(), "threads": torch.get_num_threads()})
    first = next(iter(layouts))
    print(f"SUMMARY precision: {verdict}; matmul {max(args.sizes)}^3 fp32 {big['float32']['best_gflops']:.1f} vs "
          f"bf16 {big['bfloat16']['best_gflops']:.1f} GFLOP/s ({big['bf16_over_fp32_best']:.2f}x); training step "
          f"({first}) fp32 {train[f'{first} fp32']['median_s'] * 1e3:.0f} ms vs bf16-mixed "
          f"{train[f'{first} bf16']['median_s'] * 1e3:.0f} ms ({speed[first]:.2f}x); {torch.get_num_threads()} threads; "
          f"loadavg {C.fmt_load(load0)} → {C.fmt_load(load1)}")


if __name__ == "__main__":
    main()
