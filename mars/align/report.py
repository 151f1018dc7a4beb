"""report.md and plots of an alignment run: the judged win-rates, and what over-optimisation looks
like (the proxy reward a policy was trained on against the gold reward, and the completion length,
over training steps; on held-out prompts, the proxy's and the gold model's gain over the start)."""
from __future__ import annotations

import json
from pathlib import Path

PROXY_KEYS = ("rewards/proxy_raw/mean", "rewards/proxy/mean")  # the raw proxy when it was normalised


def curves(steps_jsonl: Path) -> list[dict]:
    """Per logged step: proxy reward, gold reward (if logged), completion length, KL."""
    rows = []
    for line in steps_jsonl.read_text().splitlines() if steps_jsonl.exists() else []:
        log = json.loads(line)
        rows.append({"step": log["step"], "proxy": next((log[k] for k in PROXY_KEYS if k in log), None),
                     "gold": log.get("rewards/gold/mean"), "length": log.get("completions/mean_length"),
                     "kl": log.get("kl")})
    return rows


def _interval(x: dict) -> str:
    return f"{x['value']:.3f} [{x['lo']:.3f}, {x['hi']:.3f}]"


def _window(rows: list[dict], key: str, first: bool, k: int = 5) -> str:
    """The mean of `key` over the first (or last) k logged steps: single steps are noisy."""
    values = [r[key] for r in (rows[:k] if first else rows[-k:]) if r[key] is not None]
    return f"{sum(values) / len(values):.3f}" if values else "–"


def markdown(result: dict) -> str:
    ci = int(result["ci"] * 100)
    lines = ["# Alignment", "", f"Policy {result['policy']}, {result['algorithm']}, {result['steps']} steps; "
             f"{result['prompts']['train']} training prompts, {result['prompts']['heldout']} held-out prompts; judge: "
             + ", ".join(f"{k}={v}" for k, v in result["judge"].items() if k != "stats"), "",
             f"## Judged on the held-out prompts (win-rate of A against B, ties half, {ci}% bootstrap over prompts)",
             "", "| A | B | win | tie | lose | win-rate of A |", "|---|---|---|---|---|---|"]
    for m in result["matchups"]:
        lines.append(f"| {m['a']} | {m['b']} | {m['win']} | {m['tie']} | {m['lose']} | {_interval(m['win_rate'])} |")
    lines += ["", "## Rewards of the held-out answers (mean over prompts)", "",
              "| policy | answer length (chars) | own proxy reward | proxy reward of the start's answers | gold reward |",
              "|---|---|---|---|---|"]
    for name, p in result["policies"].items():
        gold = _interval(p["gold"]) if p.get("gold") else "–"
        proxy = f"{p['proxy']:.3f}" if "proxy" in p else "–"
        start = f"{p['proxy_of_start']:.3f}" if "proxy_of_start" in p else "–"
        lines.append(f"| {name} | {p['length']:.0f} | {proxy} | {start} | {gold} |")
    lines += ["", "## Over training (mean of the first and of the last 5 logged steps)", "",
              "| policy | proxy reward: first → last | gold reward: first → last | completion tokens: first → last "
              "| KL last |", "|---|---|---|---|---|"]
    for name, rows in result["curves"].items():
        cells = [f"{_window(rows, k, True)} → {_window(rows, k, False)}" for k in ("proxy", "gold", "length")]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_window(rows, 'kl', False)} |")
    lines += ["", "Per-step logs: policies/<name>/steps.jsonl; plots: training_curves.png.", ""]
    return "\n".join(lines)


def plot_curves(all_curves: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("proxy", "gold", "length", "kl")
            if any(r[k] is not None for rows in all_curves.values() for r in rows)]
    titles = {"proxy": "proxy reward (trained on)", "gold": "gold reward (never trained on)",
              "length": "completion length (tokens)", "kl": "KL to the reference"}
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, rows in all_curves.items():
            xs = [r["step"] for r in rows if r[key] is not None]
            ax.plot(xs, [r[key] for r in rows if r[key] is not None], label=name, lw=1.2)
        ax.set_title(titles[key], fontsize=10)
        ax.set_xlabel("step")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
