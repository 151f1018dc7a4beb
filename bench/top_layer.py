"""The top layer of `finetune=top_layers` on MiniLM: at the first token only against the whole layer.

    .venv/bin/python bench/top_layer.py [--threads 1] [--rows 32] [--repeats 5]

An encoder's reward reads its pooled first token, so the top layer's queries, output projection
and feed-forward are needed there only (mars.model.finetune.first_token_layer); keys and values
still cover every token. Both paths run side by side in one process on the same cached rows of HH
lengths (100–193 tokens): a training step (forward, backward, AdamW) each, and the largest reward
difference between them in eval mode. The whole-layer path is the trunk's public switch,
`module.model.trunk.first_token_only = False` (default True: the first-token path).
"""
from __future__ import annotations

import time

import _common as C
import torch

from mars.config import FinetuneConfig, LossConfig, OptimConfig, validate
from mars.lightning.module import RewardModule


def main() -> None:
    ap = C.arg_parser(__doc__)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = C.parse(ap)
    load = C.begin()
    rows, repeats = (4, 1) if args.quick else (args.rows, args.repeats)
    cfg = validate(C.compose(["backbone=minilm"], C.ROOT / "logs" / "bench"))["backbone"]
    torch.manual_seed(0)
    module = RewardModule(cfg, FinetuneConfig(name="top_layers", layers=1), OptimConfig(), LossConfig())
    module.configure_model()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (rows, 200), generator=g)
    ids[:, 0] = 101  # [CLS]
    mask = torch.ones_like(ids)
    for i in range(rows):
        mask[i, 100 + 3 * i:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    module(batch)  # the frozen layers' output, cached
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5)

    def step_time() -> float:
        module.train()
        times = []
        for _ in range(repeats + 1):  # the first is a warm-up
            t = time.perf_counter()
            module(batch)[0].sum().backward()
            opt.step(), opt.zero_grad()
            times.append(time.perf_counter() - t)
        return C.median(times[1:])

    trunk = module.model.trunk
    assert trunk.first_token_only  # the default: the top layer at the first token
    first = step_time()
    module.eval()
    with torch.no_grad():  # both paths on the same weights
        r_first = module(batch)[0]
        trunk.first_token_only = False  # the whole top layer
        r_whole = module(batch)[0]
    whole = step_time()
    trunk.first_token_only = True
    diff = float((r_first - r_whole).abs().max())
    print(f"{rows} rows, a training step: whole top layer {whole * 1e3:.0f} ms, first token only "
          f"{first * 1e3:.0f} ms ({whole / first:.2f}x); max |Δr| {diff:.1e}; loadavg {C.fmt_load(load)} → "
          f"{C.fmt_load(C.loadavg())}")
    C.write_json(args.json, {"rows": rows, "whole_ms": whole * 1e3, "first_token_ms": first * 1e3,
                             "speedup": whole / first, "max_abs_reward_diff": diff})
    print(f"SUMMARY top_layer: {whole / first:.2f}x faster step at the first token, max |Δr| {diff:.1e}")


if __name__ == "__main__":
    main()
