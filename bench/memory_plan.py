"""Per-GPU memory of a reward model under DDP, FSDP and ZeRO-3: arithmetic, not a measurement.

    .venv/bin/python bench/memory_plan.py                 # the table of docs/benchmarks.md, section 8
    .venv/bin/python bench/memory_plan.py --gpus 64 --tokens 2048 --json plan.json

Nothing is run on a GPU: the figures follow from the architectures' published sizes and the
formulas below (also in docs/benchmarks.md). Ψ is the reward model's parameter count: the
network without its language-model head (mars replaces it with a 1-output head, `hidden` weights).

* Weights bf16 (2 B/param), gradients bf16 (2 B), fp32 master weights (4 B) and fp32 Adam m, v
  (8 B): 16 B/param, the usual mixed-precision recipe (ZeRO paper's 2 + 2 + 12).
* DDP replicates all of it; FSDP (full shard) and ZeRO-3 divide all of it by the N data-parallel
  GPUs. Both also hold, transiently, the gathered bf16 weights of the block being computed and of
  the prefetched next one (2 × 2 B × block params) and the unsharded gradients of one block before
  they are reduce-scattered (fp32 in mars's FSDP2 policy: 4 B × block params). ZeRO-3 adds its
  buckets (Lightning's defaults: 2e8-element all-gather and reduce buckets, bf16: 0.8 GB).
* Activations at T tokens per GPU (one micro-batch) with per-block checkpointing: the checkpointed
  block inputs, L × T × h × 2 B, plus one block's activations during its recomputation and
  backward, T × (12h + 4·d_kv + 8·I) bytes in bf16 (`block_activation_bytes`). No
  vocabulary-sized logits: a reward model reads one hidden state per sequence.
* Framework overhead (CUDA context, NCCL buffers, allocator fragmentation) is not counted: keep
  ~10% and a few GB free.
"""
from __future__ import annotations

import argparse
import json

GB = 1e9

# Published configurations (config.json of each model).
MODELS = {
    "Qwen2.5-0.5B": dict(h=896, layers=24, inter=4864, heads=14, kv_heads=2, head_dim=64, vocab=151936,
                         tied=True, qkv_bias=True),
    "Qwen2.5-7B": dict(h=3584, layers=28, inter=18944, heads=28, kv_heads=4, head_dim=128, vocab=152064,
                       tied=False, qkv_bias=True),
    "Llama-3-8B": dict(h=4096, layers=32, inter=14336, heads=32, kv_heads=8, head_dim=128, vocab=128256,
                       tied=False, qkv_bias=False),
    "Llama-3-70B": dict(h=8192, layers=80, inter=28672, heads=64, kv_heads=8, head_dim=128, vocab=128256,
                        tied=False, qkv_bias=False),
}


def block_params(m: dict) -> int:
    h, kv = m["h"], m["kv_heads"] * m["head_dim"]
    q = m["heads"] * m["head_dim"]
    attn = h * q + 2 * h * kv + q * h + ((q + 2 * kv) if m["qkv_bias"] else 0)
    mlp = 3 * h * m["inter"]  # gate, up, down (SwiGLU)
    return attn + mlp + 2 * h  # two RMSNorm weights


def reward_model_params(m: dict) -> int:
    """Embedding + blocks + final norm + the 1-output reward head (no LM head)."""
    return m["vocab"] * m["h"] + m["layers"] * block_params(m) + m["h"] + m["h"]


def lm_params(m: dict) -> int:
    return reward_model_params(m) - m["h"] + (0 if m["tied"] else m["vocab"] * m["h"])


def block_activation_bytes(m: dict, tokens: int) -> int:
    """bf16 tensors autograd keeps for one Llama/Qwen2 block per token (fused SDPA/flash attention,
    no dropout): block input and norm output (2h), q and attention output (2h), k and v (2·d_kv),
    residual and second norm output (2h), gate, up, SiLU(gate) and the product (4I); 2 B each:
    12h + 4·d_kv + 8I bytes per token."""
    h, kv, i = m["h"], m["kv_heads"] * m["head_dim"], m["inter"]
    return tokens * (12 * h + 4 * kv + 8 * i)


def plan(name: str, gpus: int, tokens: int) -> dict:
    m = MODELS[name]
    psi = reward_model_params(m)
    blk = block_params(m)
    states = {"weights": 2 * psi, "grads": 2 * psi, "optimizer": 12 * psi}  # bf16, bf16, fp32 master + m + v
    checkpoints = m["layers"] * tokens * m["h"] * 2
    one_block = block_activation_bytes(m, tokens)
    act = checkpoints + one_block
    fsdp_transient = 2 * 2 * blk + 4 * blk
    zero3_transient = fsdp_transient + 2 * 2e8 * 2
    rows = {}
    for strategy, div, transient in (("DDP", 1, 0), ("FSDP", gpus, fsdp_transient), ("ZeRO-3", gpus, zero3_transient)):
        parts = {k: v / div for k, v in states.items()}
        total = sum(parts.values()) + transient + act
        rows[strategy] = {**{k: v / GB for k, v in parts.items()}, "transient": transient / GB,
                          "activations": act / GB, "total": total / GB}
    return {"model": name, "params": psi, "lm_params": lm_params(m), "block_params": blk,
            "checkpoints_gb": checkpoints / GB, "one_block_gb": one_block / GB, "per_gpu": rows,
            "bf16_true_fsdp_gb": (8 * psi / gpus + 2 * 2 * blk + 2 * blk + act) / GB,
            "host_ram_per_rank_gb": 2 * lm_params(m) / GB}


def comm_per_step_gb(psi: int) -> float:
    """Bytes each GPU receives per optimiser step under FSDP/ZeRO-3 (ring collectives, large N):
    bf16 all-gather in the forward and again in the backward (2 + 2 B/param), fp32 reduce-scatter
    of the gradients (4 B/param, mars's FSDP2 policy): 8 B/param."""
    return 8 * psi / GB


def step_flop(psi: int, tokens: int) -> float:
    """Training FLOP per GPU per micro-batch with per-block checkpointing: 6Ψ per token, plus the
    recomputed forward (2Ψ): 8Ψ·T (attention scores not counted)."""
    return 8 * psi * tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpus", type=int, nargs="+", default=[8, 64],
                    help="data-parallel GPUs: 8 = one node; 64 = trainer.num_nodes=8 with 8 GPUs each")
    ap.add_argument("--tokens", type=int, default=2048, help="tokens per GPU per micro-batch")
    ap.add_argument("--models", nargs="+", default=["Qwen2.5-0.5B", "Qwen2.5-7B", "Llama-3-8B", "Llama-3-70B"],
                    choices=list(MODELS))
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true", help="the same arithmetic (it is instant)")
    args = ap.parse_args()
    plans = {n: [plan(m, n, args.tokens) for m in args.models] for n in args.gpus}
    print(f"memory_plan: arithmetic, not a measurement; {args.tokens} tokens per GPU, 16 B/param (bf16 weights "
          "and grads, fp32 master and Adam), per-block checkpointing; GB = 1e9 bytes")
    head = "".join(f"{'states N=' + str(n):>13}{'total N=' + str(n):>13}" for n in args.gpus)
    print(f"{'model':14}{'params':>8}{'strategy':>9}{'transient':>10}{'activ.':>8}{head}")
    for i, name in enumerate(args.models):
        for s in ("DDP", "FSDP", "ZeRO-3"):
            r0 = plans[args.gpus[0]][i]["per_gpu"][s]
            cells = "".join(f"{pl[i]['per_gpu'][s]['weights'] + pl[i]['per_gpu'][s]['grads'] + pl[i]['per_gpu'][s]['optimizer']:>13.2f}"
                            f"{pl[i]['per_gpu'][s]['total']:>13.2f}" for pl in plans.values())
            print(f"{name:14}{plans[args.gpus[0]][i]['params'] / 1e9:>7.2f}B{s:>9}{r0['transient']:>10.2f}"
                  f"{r0['activations']:>8.2f}{cells}")
        p = plans[args.gpus[0]][i]
        shipped = ", ".join(f"N={n} {pl[i]['bf16_true_fsdp_gb']:.1f} GB" for n, pl in plans.items())
        print(f"{'':14}  activations = checkpoints {p['checkpoints_gb']:.2f} + one block {p['one_block_gb']:.2f} GB; "
              f"trainer=fsdp as shipped (bf16-true, 8 B/param): {shipped}; host RAM per rank to load the bf16 "
              f"checkpoint {p['host_ram_per_rank_gb']:.0f} GB; FSDP traffic {comm_per_step_gb(p['params']):.0f} GB "
              f"per GPU per step against {step_flop(p['params'], args.tokens) / 1e12:.0f} TFLOP of compute")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "plans": {str(n): pl for n, pl in plans.items()}}, f, indent=2)
    n = max(args.gpus)
    big = plans[n][-1]
    print(f"SUMMARY memory_plan: {big['model']} on {n} GPUs: FSDP {big['per_gpu']['FSDP']['total']:.1f} GB, "
          f"ZeRO-3 {big['per_gpu']['ZeRO-3']['total']:.1f} GB, DDP {big['per_gpu']['DDP']['total']:.0f} GB per GPU "
          "(arithmetic, not a measurement)")


if __name__ == "__main__":
    main()
