"""The reward server under load (`python -m mars.serve`), against scoring in-process.

    .venv/bin/python bench/serve.py                 # MiniLM export, HH-RLHF texts, 1/8/32 clients
    .venv/bin/python bench/serve.py --model runs/X/export --requests 200 --items 8

Starts the server on a free port of 127.0.0.1 (traffic never leaves this machine), sends
`--requests` requests of `--items` (prompt, response) items each, drawn from held-out HH-RLHF
pairs (mixed lengths), from 1, 8 and 32 concurrent clients, and measures requests/s, texts/s and
p50/p99 latency. The same texts are scored in-process by eval.py's scorer, one request's items at
a time and all at once; every served reward is compared with eval.py's. Bounded: each client
stops after its share of requests, each request after `--timeout` seconds.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _common as C


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def minilm_export(folder: Path) -> str:
    """The embedded MiniLM under a fresh head (what the default `make train` exports, untrained)."""
    import torch

    from mars.config import validate
    from mars.lightning.module import RewardModule
    from mars.model.export import export_reward_model

    typed = validate(C.compose([], folder))
    torch.manual_seed(0)
    module = RewardModule(typed["backbone"], typed["finetune"], typed["optim"], typed["loss"], 0)
    module.configure_model()
    return export_reward_model(module, str(folder / "export"))


def start(model: str, port: int, folder: Path, max_batch_size: int, accelerator: str) -> subprocess.Popen:
    import httpx

    process = subprocess.Popen([sys.executable, "-m", "mars.serve", f"model={model}", f"port={port}",
                                f"accelerator={accelerator}", f"max_batch_size={max_batch_size}",
                                f"hydra.run.dir={folder / 'run'}"],
                               cwd=C.ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    for _ in range(240):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).text == "ok":
                return process
        except httpx.TransportError:
            time.sleep(0.5)
    process.terminate()
    raise RuntimeError("the server did not come up in 120 s")


def load(url: str, bodies: list[dict], clients: int, timeout: float) -> dict:
    import httpx
    import numpy as np

    def one(body):
        t = time.perf_counter()
        try:
            response = httpx.post(url, json=body, timeout=timeout)
            ok = response.status_code == 200
            return time.perf_counter() - t, response.json()["rewards"] if ok else None
        except httpx.HTTPError:
            return time.perf_counter() - t, None

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, bodies))
    wall = time.perf_counter() - start
    latency = np.array([r[0] for r in results])
    return {"clients": clients, "requests": len(bodies), "failed": sum(r[1] is None for r in results),
            "wall_s": wall, "requests_per_s": len(bodies) / wall,
            "texts_per_s": sum(len(b["items"]) for b in bodies) / wall,
            "p50_ms": float(np.percentile(latency, 50) * 1e3), "p99_ms": float(np.percentile(latency, 99) * 1e3),
            "rewards": [r[1] for r in results]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an export to serve (default: the embedded MiniLM, fresh head)")
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--items", type=int, default=4, help="(prompt, response) items per request")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--accelerator", default="cpu", help="the server's: cpu | cuda | auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of this process")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    C.quiet_logging()
    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from mars.config import validate
    from mars.data.splits import load_splits
    from mars.evaluation.models import load_scorer

    with tempfile.TemporaryDirectory(prefix="mars_bench_serve_") as d:
        folder = Path(d)
        model = args.model or minilm_export(folder)
        pairs = load_splits(validate(C.compose(["data=hh_rlhf_offline"], folder))["data"])["test"]
        items = [{"prompt": p.prompt, "response": r} for p in pairs for r in (p.chosen, p.rejected)]
        bodies = [{"items": [items[(i * args.items + k) % len(items)] for k in range(args.items)]}
                  for i in range(args.requests)]
        scorer = load_scorer(model)
        rows = [(it["prompt"], it["response"]) for b in bodies for it in b["items"]]
        with C.Measure() as alone:
            per_request = [scorer.responses([(it["prompt"], it["response"]) for it in b["items"]]) for b in bodies]
        with C.Measure() as together:
            scorer.responses(rows)
        ours = np.concatenate(per_request)
        port = free_port()
        server = start(model, port, folder, args.max_batch_size, args.accelerator)
        try:
            runs = [load(f"http://127.0.0.1:{port}/score", bodies, c, args.timeout) for c in args.clients]
        finally:
            server.terminate()
            server.wait(timeout=60)
    n = len(rows)
    print(f"in-process (eval.py's scorer): {n / alone.seconds:.1f} texts/s a request at a time, "
          f"{n / together.seconds:.1f} texts/s all at once ({n} texts, {args.items} per request)")
    print("| clients | requests/s | texts/s | p50 ms | p99 ms | failed | max abs Δr vs eval.py |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    worst = 0.0
    for r in runs:
        served = [x for rs in r.pop("rewards") if rs is not None for x in rs]
        diff = float(np.abs(np.array(served) - ours).max()) if len(served) == n else float("nan")
        worst = max(worst, diff) if diff == diff else float("inf")
        r["max_abs_reward_diff"] = diff
        print(f"| {r['clients']} | {r['requests_per_s']:.1f} | {r['texts_per_s']:.1f} | {r['p50_ms']:.0f} | "
              f"{r['p99_ms']:.0f} | {r['failed']} | {diff:.1e} |")
    best = max(runs, key=lambda r: r["texts_per_s"])
    print(f"SUMMARY serve: {best['texts_per_s']:.1f} texts/s served at {best['clients']} clients against "
          f"{n / together.seconds:.1f} in-process all at once and {n / alone.seconds:.1f} a request at a time; "
          f"failed {sum(r['failed'] for r in runs)}; max |Δr| vs eval.py {worst:.1e} (target 1e-5: "
          f"{'met' if worst <= 1e-5 else 'NOT met'})")
    C.write_json(args.json, {"in_process_texts_per_s": {"per_request": n / alone.seconds, "all": n / together.seconds},
                             "runs": runs})


if __name__ == "__main__":
    main()
