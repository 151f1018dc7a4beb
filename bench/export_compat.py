"""Does a mars export load, and score as mars scores it, under the transformers versions the
field's evaluators pin? RewardBench 0.1.4 pins transformers 4.51.0; its newest code 4.57.6.

    .venv/bin/python bench/export_compat.py                       # 4.51.0 and 4.57.6, four exports
    .venv/bin/python bench/export_compat.py --rewardbench         # also RewardBench's own CLI (4.51.0)
    .venv/bin/python bench/export_compat.py --smollm2 runs/X/export --versions 4.51.0

Exports: a tiny random encoder (BERT), tiny_llama, tiny_qwen2 (GQA), built from the real
configs, and SmolLM2-135M-Instruct fine-tuned with LoRA by the CPU command of docs/llm.md, shrunk
(64 UltraFeedback pairs, one epoch), unless `--smollm2` names an export. Pairs: held-out pairs
of the demo task, short enough that no export truncates them.

mars's side is eval.py's scorer over the export (mars.evaluation.models.load_scorer). Each other
version gets its own virtual environment (`--envs`, made once: torch as installed here, then
`transformers==V` and accelerate, which 4.51.0 needs to load any model) and scores every side by
hand: `apply_chat_template(messages)`, `tokenizer(text, add_special_tokens=...)` as
mars_export.json says, the model's single logit. Compared: the rendered text, the ids, and the
rewards of sequences mars did not truncate (a truncated one differs by construction: RewardBench
does not apply mars's rule). Writes a JSON and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import _common as C

SIDE = r'''
import json, sys, torch, transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer
job, out = json.load(open(sys.argv[1])), {"transformers": transformers.__version__, "exports": {}}
for name, spec in job.items():
    try:
        tok = AutoTokenizer.from_pretrained(spec["path"])
        model = AutoModelForSequenceClassification.from_pretrained(spec["path"]).eval()
        texts, ids, rewards = [], [], []
        for row in spec["rows"]:
            text = tok.apply_chat_template(row["messages"], tokenize=False)
            enc = tok(text, add_special_tokens=spec["add_special_tokens"], return_tensors="pt")
            with torch.no_grad():  # a sequence mars truncated is compared by its text and ids alone
                rewards.append(model(**enc).logits[0, 0].item() if row["fits"] else None)
            texts.append(text), ids.append(enc["input_ids"][0].tolist())
        out["exports"][name] = {"tokenizer": type(tok).__name__, "inputs": sorted(enc), "texts": texts, "ids": ids,
                                "rewards": rewards, "rope_theta": getattr(model.config, "rope_theta", None)}
    except Exception as e:  # the table reports it: a failed load is a result
        out["exports"][name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
json.dump(out, open(sys.argv[2], "w"))
'''


def ensure_env(root: Path, version: str) -> Path:
    """A virtual environment with `transformers==version` (made once)."""
    import torch

    python = root / f"transformers-{version}" / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(python.parents[1])], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run(pip + [f"torch=={torch.__version__.split('+')[0]}"], check=True)  # first: no CUDA build
        subprocess.run(pip + [f"transformers=={version}", "accelerate", "numpy<3"], check=True)
    return python


def build_exports(folder: Path, smollm2: str | None, train_pairs: int) -> dict[str, str]:
    import torch

    from mars.cli.train import train
    from mars.config import validate
    from mars.lightning.module import RewardModule
    from mars.model.export import export_reward_model

    exports = {}
    for name in ("tiny", "tiny_llama", "tiny_qwen2"):
        typed = validate(C.compose([f"backbone={name}"], folder / name))
        torch.manual_seed(0)
        module = RewardModule(typed["backbone"], typed["finetune"], typed["optim"], typed["loss"], 0)
        module.configure_model()
        exports[name] = export_reward_model(module, str(folder / name / "export"))
    if smollm2 is None:  # docs/llm.md's CPU command, shrunk
        run = folder / "smollm2"
        train(C.compose(["backbone=smollm2", "finetune=lora", "data=ultrafeedback_offline", "backbone.max_length=128",
                         "data.batch_size=4", f"data.train_size={train_pairs}", "data.val_size=16",
                         "data.test_size=16", "trainer.max_epochs=1", "allocator=none", "augmenter=none",
                         "test=false", *C.QUIET], run))
        smollm2 = str(run / "export")
    exports["smollm2 (LoRA)"] = smollm2
    return exports


def mars_side(exports: dict[str, str], pairs) -> dict:
    """eval.py's rewards, and every side as messages, text and ids, for the other versions."""
    from mars.data.format import hh_messages
    from mars.evaluation.models import load_scorer

    job, ours = {}, {}
    for name, path in exports.items():
        scorer = load_scorer(path, batch_size=8)
        fmt, rows, texts, ids, cut = scorer.formatter, [], [], [], []
        for p in pairs:
            for response in (p.chosen, p.rejected):
                seq, truncated = fmt.sequence(p.prompt, response)
                rows.append({"messages": hh_messages(p.prompt) + [{"role": "assistant", "content": response}],
                             "fits": not truncated})
                texts.append("".join(fmt.texts(p.prompt, response)))
                ids.append(seq), cut.append(truncated)
        scores = scorer.pairs(pairs)
        rewards = [r for pair in zip(scores.r_chosen, scores.r_rejected) for r in pair]
        export = json.loads((Path(path) / "mars_export.json").read_text())
        job[name] = {"path": path, "add_special_tokens": export["add_special_tokens"], "rows": rows}
        ours[name] = {"texts": texts, "ids": ids, "truncated": cut, "rewards": rewards}
    return {"job": job, "ours": ours}


def compare(ours: dict, theirs: dict) -> dict:
    import numpy as np

    if "error" in theirs:
        return {"loads": False, "error": theirs["error"]}
    kept = [i for i, t in enumerate(ours["truncated"]) if not t]
    cut = ours["truncated"]
    pairs = [i for i in range(0, len(cut), 2) if not (cut[i] or cut[i + 1])]  # both sides whole
    diff = np.abs(np.array(ours["rewards"])[kept] - np.array([theirs["rewards"][i] for i in kept]))
    acc = lambda r: float(np.mean([r[i] > r[i + 1] for i in pairs]))  # noqa: E731
    return {"loads": True, "tokenizer": theirs["tokenizer"], "inputs": theirs["inputs"],
            "rope_theta": theirs["rope_theta"],
            "same_text": sum(a == b for a, b in zip(ours["texts"], theirs["texts"])) / len(ours["texts"]),
            "same_ids": sum(ours["ids"][i] == theirs["ids"][i] for i in kept) / max(1, len(kept)),
            "compared": len(kept), "max_abs_reward_diff": float(diff.max()) if kept else None,
            "acc_mars": acc(ours["rewards"]), "acc_theirs": acc(theirs["rewards"])}


# RewardBench 0.1.4's pipeline moves its inputs to "cuda" unconditionally (rewardbench/models/
# pipeline.py): on a machine without CUDA, this sitecustomize sends them to the CPU instead.
CPU_SHIM = """
import torch, transformers
if not torch.cuda.is_available():
    _to = transformers.BatchEncoding.to
    transformers.BatchEncoding.to = lambda self, device, **kw: _to(self, "cpu" if str(device).startswith("cuda") else device, **kw)
"""


def rewardbench_cli(python: Path, export: str, pairs, ours: dict, folder: Path) -> dict:
    """RewardBench 0.1.4's own CLI on a local pairs file (`--load_json`), in its pinned environment
    (setuptools < 80: its CLI imports pkg_resources; `--not_quantized`: on a CPU, its default 8-bit
    loading through bitsandbytes finds no device); its per-pair scores against eval.py's."""
    import numpy as np

    from mars.data.format import hh_messages

    subprocess.run([str(python), "-m", "pip", "install", "-q", "rewardbench==0.1.4", "setuptools<80"], check=True)
    data = folder / "pairs.json"
    turns = lambda p, response: hh_messages(p.prompt) + [{"role": "assistant", "content": response}]  # noqa: E731
    data.write_text(json.dumps([{"chosen": turns(p, p.chosen), "rejected": turns(p, p.rejected)} for p in pairs]))
    shim = folder / "cpu_shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(CPU_SHIM)
    done = subprocess.run([str(python.parent / "rewardbench"), f"--model={export}", f"--dataset={data}", "--load_json",
                           "--batch_size=8", "--max_length=4096", "--torch_dtype=float32", "--not_quantized",
                           f"--output_dir={folder / 'rewardbench'}"], capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "PYTHONPATH": str(shim)})
    if done.returncode:
        return {"returncode": done.returncode, "tail": (done.stdout + done.stderr)[-2000:]}
    rows = [json.loads(line) for line in open(f"{export}_outputs.jsonl")]
    theirs = np.array([[r["scores_chosen"], r["scores_rejected"]] for r in rows]).reshape(-1)
    kept = [i for i in range(len(theirs)) if not (ours["truncated"][i - i % 2] or ours["truncated"][i - i % 2 + 1])]
    diff = np.abs(theirs - np.array(ours["rewards"]))[kept]
    return {"returncode": 0, "pairs_compared": len(kept) // 2, "max_abs_reward_diff": float(diff.max()),
            "acc_rewardbench": float(np.mean([r["results"] for r in rows])),
            "acc_mars": float(np.mean(np.array(ours["rewards"][0::2]) > np.array(ours["rewards"][1::2])))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", nargs="+", default=["4.51.0", "4.57.6"])
    parser.add_argument("--envs", default=str(Path.home() / ".cache" / "mars" / "compat-envs"))
    parser.add_argument("--smollm2", help="a SmolLM2 export to check instead of training one")
    parser.add_argument("--train-pairs", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=40, help="held-out UltraFeedback pairs scored")
    parser.add_argument("--rewardbench", action="store_true", help="also RewardBench 0.1.4's CLI (4.51.0 env)")
    parser.add_argument("--workdir", help="keep the exports here (default: a temporary folder)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    C.quiet_logging()
    from mars.data.demo import demo_splits

    with tempfile.TemporaryDirectory(prefix="mars_compat_") as d:
        folder = Path(args.workdir or d)
        exports = build_exports(folder, args.smollm2, args.train_pairs)
        pairs = demo_splits(1200, 200, 200, seed=0)["test"][:args.pairs]  # short: every export scores them whole
        side = mars_side(exports, pairs)
        (folder / "job.json").write_text(json.dumps(side["job"]))
        results = {}
        for version in args.versions:
            python = ensure_env(Path(args.envs), version)
            subprocess.run([str(python), "-c", SIDE, str(folder / "job.json"), str(folder / f"{version}.json")],
                           check=True, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
            theirs = json.loads((folder / f"{version}.json").read_text())
            results[version] = {name: compare(side["ours"][name], theirs["exports"][name]) for name in exports}
        if args.rewardbench:
            name = "smollm2 (LoRA)"
            results["rewardbench_cli"] = rewardbench_cli(ensure_env(Path(args.envs), "4.51.0"), exports[name], pairs,
                                                         side["ours"][name], folder)
    print("| transformers | export | loads | tokenizer | same text | same ids | max abs Δr (n) | acc mars / theirs |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for version in args.versions:
        for name, r in results[version].items():
            if not r["loads"]:
                print(f"| {version} | {name} | no: {r['error'][:80]} | | | | | |")
                continue
            print(f"| {version} | {name} | yes | {r['tokenizer']} | {r['same_text']:.0%} | {r['same_ids']:.0%} | "
                  f"{r['max_abs_reward_diff']:.1e} ({r['compared']}) | {r['acc_mars']:.3f} / {r['acc_theirs']:.3f} |")
    if "rewardbench_cli" in results:
        print(f"RewardBench 0.1.4 CLI on the SmolLM2 export: {results['rewardbench_cli']}")
    worst = max((r["max_abs_reward_diff"] or 0.0) for v in args.versions for r in results[v].values() if r["loads"])
    loads = all(r["loads"] for v in args.versions for r in results[v].values())
    print(f"SUMMARY export_compat: every export loads under {', '.join(args.versions)}: {loads}; max |Δr| against "
          f"eval.py on untruncated sequences {worst:.1e} (target 1e-5: {'met' if loads and worst <= 1e-5 else 'NOT met'})")
    C.write_json(args.json, results)


if __name__ == "__main__":
    main()
