"""Augmenters on real pairs: what the variants look like, how many pass the gate, what they cost.

For each dataset (the first `--pairs` training pairs of the `*_offline` data config, with
`data.train_size=500`, the split the label-agreement reward model trains on) and each method:

- `eda`: EDAAugmenter (model-free), one variant of each response;
- `rewrite`: llm_rewrite `backend=local model=smollm2`, one rewrite of each response (its own
  template per role, with the prompt and the other response as context), batched generation;
- `paraphrase`: paraphrase `model=smollm2` (the chat-model path), the paper's beam search
  (5 beams, 5 returned, no_repeat_ngram_size 3), five candidates per response.

Every candidate goes through the quality gate (mars/augmenters/quality.py) with its trace on: its
MiniLM similarity to the source, its length ratio and the rule that rejected it; EDA's variants
are measured by the same gate (EDA itself has none). Generation runs without a cache, so the
timing is generation plus gating (models loaded beforehand). One JSON per (dataset, method) in
`--out`; an existing one is kept unless `--force`.

    .venv/bin/python bench/augmenters.py --datasets hh --methods eda rewrite --threads 1
    .venv/bin/python bench/augmenters.py --datasets hh --score /tmp/aug_rm/.../export
    .venv/bin/python bench/augmenters.py --report          # markdown tables from the JSON files

`--score FOLDER`: label preservation judged by a mars reward model (an export): every variant
pair a method's accepted variants make with its source pair ((c', r), (c, r'), (c', r')) is
scored; the share whose margin sign agrees with the source pair's margin sign is reported.
"""
from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, arg_parser, begin, compose, loadavg, machine, parse  # noqa: E402

DATASETS = {"hh": "hh_rlhf_offline", "uf": "ultrafeedback_offline", "pku": "pku_saferlhf_offline"}
METHODS = ("eda", "rewrite", "paraphrase")
VARIANTS = {"eda": 1, "rewrite": 1, "paraphrase": 5}  # asked per response


def load_pairs(dataset: str, k: int):
    from mars.config import typed
    from mars.data.splits import load_splits

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose([f"data={DATASETS[dataset]}", "data.train_size=500"], Path(tmp))
        return load_splits(typed(cfg, "data"))["train"][:k]


def part_of(pairs: list, part: str) -> list:
    """Part "k/n" of the pairs (contiguous), so that one measurement run stays short."""
    k, n = map(int, part.split("/"))
    size = -(-len(pairs) // n)
    return pairs[(k - 1) * size:k * size]


def result_path(out: str, dataset: str, method: str, part: str = "1/1") -> Path:
    k, n = part.split("/")
    return Path(out) / (f"{dataset}_{method}.json" if n == "1" else
                        f"{dataset}_{method}.part{k}of{n}.json")


def rejudge(r: dict, min_length_ratio: float) -> None:
    """Apply the rules added after a result was generated (``meta``, ``too_short``: they come
    after the older rules and before similarity, so only accepted and low-similarity candidates
    can change; ``closer_to_other`` for rewrites, last) and rebuild the accepted variants from
    the trace. EDA is measured, not gated."""
    from mars.augmenters.base import VariantRequest, distinct_variants
    from mars.augmenters.quality import rule_violation

    if r["method"] == "eda":
        return
    changed = 0
    for t in r["trace"]:
        if t["reason"] in (None, "low_similarity") and t["variant"]:
            req = VariantRequest(t["source"], t["role"], "", "", 1)
            new = rule_violation(t["variant"], req, min_length_ratio=min_length_ratio,
                                 max_length_ratio=float("inf"))
            if new:
                changed += t["reason"] != new
                t["reason"] = new
    if r["method"] == "rewrite":  # closer_to_other, on the candidates the similarity gate let by
        from mars.augmenters.quality import Embedder

        other = {}
        for row in r["variants"]:
            other[("chosen", row["chosen"])] = row["rejected"]
            other[("rejected", row["rejected"])] = row["chosen"]
        todo = [t for t in r["trace"] if t["reason"] is None and "similarity_to_other" not in t]
        if todo:
            sims = Embedder().similarity([other[(t["role"], t["source"])] for t in todo],
                                         [t["variant"] for t in todo])
            for t, s in zip(todo, sims):
                t["similarity_to_other"] = s
                if s >= t["similarity"]:
                    t["reason"] = "closer_to_other"
                    changed += 1
    r["rejudged"] = changed
    accepted: dict = {}
    for t in r["trace"]:
        if t["reason"] is None:
            accepted.setdefault((t["role"], t["source"]), []).append(t["variant"])
    for row in r["variants"]:
        for role in ("chosen", "rejected"):
            row[f"{role}_variants"] = distinct_variants(row[role],
                                                        accepted.get((role, row[role]), []))


def merged(out: str, dataset: str, method: str, min_length_ratio: float = 0.3):
    """The result of (dataset, method), its parts joined and re-judged; None if there is none."""
    paths = sorted(Path(out).glob(f"{dataset}_{method}.json")) + sorted(
        Path(out).glob(f"{dataset}_{method}.part*.json"))
    if not paths:
        return None
    parts = [json.loads(p.read_text()) for p in paths]
    r = dict(parts[0])
    for q in parts[1:]:
        for key in ("seconds", "cpu_seconds", "pairs", "requests"):
            r[key] = (r.get(key) or 0) + (q.get(key) or 0)
        r["stats"] = dict(Counter(r["stats"]) + Counter(q["stats"]))
        r["trace"] = r["trace"] + q["trace"]
        r["variants"] = r["variants"] + q["variants"]
        r["load_end"] = q["load_end"]
    r["parts"] = len(parts)
    rejudge(r, min_length_ratio)
    agreement = Path(out) / f"{dataset}_{method}.agreement.json"
    if agreement.exists():
        r["label_agreement"] = json.loads(agreement.read_text())
    return r


def build(method: str, args):
    from mars.augmenters.eda import EDAAugmenter
    from mars.augmenters.llm_rewrite import LLMRewriteAugmenter
    from mars.augmenters.paraphrase import ParaphraseAugmenter

    if method == "eda":
        return EDAAugmenter(seed=0), {"alpha": 0.1}
    if method == "rewrite":
        aug = LLMRewriteAugmenter("smollm2", backend="local", max_tokens=args.max_new_tokens,
                                  temperature=0.7, batch_size=args.batch_size,
                                  min_length_ratio=args.min_length_ratio,
                                  min_similarity=args.min_similarity, device="cpu", seed=0)
        from mars.generation import local as local_lm

        aug._local_model = local_lm.load(aug.model, "cpu")
        settings = {"model": "smollm2 (SmolLM2-135M-Instruct, fp32)", "temperature": 0.7,
                    "sampling": "a generator per variant (local_lm.RowSampler), top_k 50, top_p 1",
                    "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
                    "max_length_ratio": aug.max_length_ratio,
                    "min_length_ratio": args.min_length_ratio, "min_similarity": args.min_similarity}
        return aug, settings
    aug = ParaphraseAugmenter("smollm2", max_new_tokens=args.max_new_tokens,
                              batch_size=args.paraphrase_batch_size,
                              min_length_ratio=args.min_length_ratio,
                              min_similarity=args.min_similarity, device="cpu", seed=0)
    aug._load()
    settings = {"model": "smollm2 (chat path)", "num_beams": aug.num_beams,
                "num_return_sequences": aug.num_return_sequences,
                "no_repeat_ngram_size": aug.no_repeat_ngram_size,
                "max_new_tokens": args.max_new_tokens, "max_input_tokens": aug.max_input_tokens,
                "batch_size": args.paraphrase_batch_size, "max_length_ratio": aug.max_length_ratio,
                "min_length_ratio": args.min_length_ratio, "min_similarity": args.min_similarity}
    return aug, settings


def generate(dataset: str, method: str, args) -> dict:
    import torch

    from mars.augmenters.base import VariantRequest
    from mars.augmenters.quality import Candidate, QualityGate

    pairs = part_of(load_pairs(dataset, args.pairs), args.part)
    aug, settings = build(method, args)
    k = VARIANTS[method]
    requests = [r for p in pairs for r in (VariantRequest(p.chosen, "chosen", p.prompt, p.rejected, k),
                                           VariantRequest(p.rejected, "rejected", p.prompt, p.chosen, k))]
    gate = QualityGate(0.0, 3.0, device="cpu") if method == "eda" else aug.gate
    gate.trace = []
    if method == "eda":
        gate.embedder([p.chosen for p in pairs[:2]])  # load MiniLM outside the timing
    load_start = loadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    out = aug.augment(requests)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    if method == "eda":  # EDA has no gate of its own: measure its variants with the same one
        t1 = time.perf_counter()
        gate.judge([Candidate(r, v) for r, vs in zip(requests, out) for v in vs], Counter())
        gate_seconds = time.perf_counter() - t1
    else:
        gate_seconds = None
    stats = dict(aug.stats)
    result = {"dataset": dataset, "data": DATASETS[dataset], "method": method,
              "settings": settings, "pairs": len(pairs), "requests": len(requests),
              "seconds": seconds, "cpu_seconds": cpu_seconds, "threads": torch.get_num_threads(),
              "gate_seconds_eda": gate_seconds, "stats": stats,
              "load_start": load_start, "load_end": loadavg(), "machine": machine(),
              "variants": [{"id": p.id, "prompt": p.prompt, "chosen": p.chosen,
                            "rejected": p.rejected, "chosen_variants": out[2 * i],
                            "rejected_variants": out[2 * i + 1]} for i, p in enumerate(pairs)],
              "trace": gate.trace}
    accepted = sum(map(len, out))
    candidates = len(gate.trace)
    print(f"{dataset}/{method}: {candidates} candidates, {accepted} accepted in {seconds:.1f} s "
          f"({accepted / seconds:.3f} accepted/s, {stats.get('tokens', 0) / seconds:.1f} tokens/s); "
          f"loadavg {result['load_start']} -> {result['load_end']}", flush=True)
    return result


def semantic(dataset: str, args) -> dict:
    """augmenter=semantic with SmolLM2 as the rewriter (and EDA inside), composed from conf/:
    its `prepare` on the pairs (close pairs rewritten apart), timed, with its counters."""
    from hydra.utils import instantiate

    pairs = part_of(load_pairs(dataset, args.pairs), args.part)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(["augmenter=semantic", "augmenter@augmenter.inner=eda",
                       "augmenter.rewriter.backend=local", "augmenter.rewriter.model=smollm2",
                       f"augmenter.rewriter.max_tokens={args.max_new_tokens}",
                       f"augmenter.rewriter.min_similarity={args.min_similarity}",
                       f"augmenter.tries={args.tries}", "augmenter.device=cpu",
                       "augmenter.rewriter.device=cpu", "augmenter.rewriter.cache_path=null",
                       "augmenter.inner.cache_path=null"], Path(tmp))
        aug = instantiate(cfg.augmenter)
    aug.rewriter.gate.trace = []
    load_start, t0, c0 = loadavg(), time.perf_counter(), time.process_time()
    refined = aug.prepare(pairs)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    changed = [{"id": p.id, "rewrote": q.meta["semantic"]["rewrote"],
                "distance": q.meta["semantic"]["distance"],
                "before": getattr(p, q.meta["semantic"]["rewrote"]),
                "after": getattr(q, q.meta["semantic"]["rewrote"])}
               for p, q in zip(pairs, refined) if "semantic" in q.meta]
    result = {"dataset": dataset, "method": "semantic", "pairs": len(pairs), "tries": args.tries,
              "max_new_tokens": args.max_new_tokens, "min_similarity": args.min_similarity,
              "seconds": seconds, "cpu_seconds": cpu_seconds, "stats": aug.stats,
              "load_start": load_start,
              "load_end": loadavg(), "refined": changed, "trace": aug.rewriter.gate.trace}
    print(f"{dataset}/semantic: {aug.stats} in {seconds:.1f} s", flush=True)
    return result


def score(dataset: str, folder: str, args) -> None:
    from mars.data.format import PairFormatter
    from mars.data.records import PreferencePair
    from mars.model.export import load_for_eval
    from mars.model.scoring import Scorer

    loaded = load_for_eval(folder)  # LoadedRewardModel: .model is the RewardModel
    cfg = loaded.backbone_cfg
    scorer = Scorer(PairFormatter.of(loaded.tokenizer, cfg),
                    loaded.tokenizer.pad_token_id, loaded.model, 16)
    for method in METHODS:
        result = merged(args.out, dataset, method, args.min_length_ratio)
        if result is None:
            continue
        rows = result["variants"]
        sources = [PreferencePair(r["id"], r["prompt"], r["chosen"], r["rejected"], dataset)
                   for r in rows]
        variant_pairs, controls, owner = [], [], []
        for i, r in enumerate(rows):
            # control: each variant replaced by the same role's response of the next pair, so
            # that the share says how much agreement the untouched side alone would give
            other = rows[(i + 1) % len(rows)]
            for c in [r["chosen"]] + r["chosen_variants"]:
                for x in [r["rejected"]] + r["rejected_variants"]:
                    if (c, x) != (r["chosen"], r["rejected"]):
                        variant_pairs.append(PreferencePair(f"{r['id']}-v{len(owner)}",
                                                            r["prompt"], c, x, dataset))
                        controls.append(PreferencePair(
                            f"{r['id']}-c{len(owner)}", r["prompt"],
                            c if c == r["chosen"] else other["chosen"],
                            x if x == r["rejected"] else other["rejected"], dataset))
                        owner.append(i)
        base = scorer.pairs(sources).margins.tolist()
        margins = scorer.pairs(variant_pairs).margins.tolist() if variant_pairs else []
        control = scorer.pairs(controls).margins.tolist() if controls else []
        agree = [(m > 0) == (base[i] > 0) for m, i in zip(margins, owner)]
        control_agree = [(m > 0) == (base[i] > 0) for m, i in zip(control, owner)]
        result["label_agreement"] = {
            "reward_model": folder, "variant_pairs": len(agree),
            "agree": sum(agree), "share": sum(agree) / len(agree) if agree else None,
            "source_pairs_ranked_right": sum(m > 0 for m in base) / len(base),
            "control_share": (sum(control_agree) / len(control_agree)) if control_agree else None,
            "base_margins": base, "variant_margins": margins, "owner": owner}
        (Path(args.out) / f"{dataset}_{method}.agreement.json").write_text(
            json.dumps(result["label_agreement"], indent=1))
        share = result["label_agreement"]["share"]
        print(f"{dataset}/{method}: {len(agree)} variant pairs, sign agreement "
              f"{'n/a' if share is None else f'{share:.3f}'} (control, another pair's response "
              f"instead of the variant: {result['label_agreement']['control_share']}); the model ranks "
              f"{result['label_agreement']['source_pairs_ranked_right']:.2f} of the source pairs right")


# ---------------------------------------------------------------------------------------------
# Report

def _q(xs, qs=(0.1, 0.5, 0.9)) -> str:
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return "–"
    return " / ".join(f"{xs[min(len(xs) - 1, int(q * len(xs)))]:.2f}" for q in qs)


def report(args) -> None:
    results = [r for d in DATASETS for m in METHODS
               if (r := merged(args.out, d, m, args.min_length_ratio))]
    print("| data | method | candidates | accepted | rejected by | similarity p10/p50/p90, "
          "all | similarity p10/p50/p90, accepted | length ratio p10/p50/p90, accepted | "
          "label agreement |")
    print("|" + " --- |" * 9)
    for r in results:
        trace = r["trace"]
        ok = [t for t in trace if t["reason"] is None]
        reasons = Counter(t["reason"] for t in trace if t["reason"])
        la = r.get("label_agreement") or {}
        share, n_pairs, ctrl = la.get("share"), la.get("variant_pairs"), la.get("control_share")
        print(f"| {r['dataset']} | {r['method']} | {len(trace)} | "
              f"{len(ok)} ({len(ok) / max(len(trace), 1):.0%}) | "
              f"{', '.join(f'{k} {v}' for k, v in reasons.most_common()) or '–'} | "
              f"{_q([t['similarity'] for t in trace])} | {_q([t['similarity'] for t in ok])} | "
              f"{_q([t['length_ratio'] for t in ok])} | "
              f"{'–' if share is None else f'{share:.2f} of {n_pairs}'}"
              f"{'' if ctrl is None else f' (control {ctrl:.2f})'} |")
    print()
    print("| data | method | wall s | CPU s | loadavg start → end | tokens | tokens/s (wall) | "
          "candidates/s (wall) | accepted/s (wall) | accepted per CPU-s | tokens per accepted | "
          "5,000 accepted: wall h at this load | 5,000 accepted: CPU-core h |")
    print("|" + " --- |" * 13)
    for r in results:
        ok = sum(t["reason"] is None for t in r["trace"])
        tok, wall = r["stats"].get("tokens", 0), r["seconds"]
        cpu = r.get("cpu_seconds")
        per_s, per_cpu = ok / wall, (ok / cpu if cpu else None)

        def hours(rate):
            return "–" if not rate else (f"{5000 / rate / 3600:.1f}" if 5000 / rate >= 360
                                         else f"{5000 / rate:.1f} s")
        print(f"| {r['dataset']} | {r['method']} | {wall:.1f} | "
              f"{'–' if cpu is None else f'{cpu:.1f}'} | "
              f"{'/'.join(map(str, r['load_start']))} → {'/'.join(map(str, r['load_end']))} | "
              f"{tok} | {tok / wall:.1f} | {len(r['trace']) / wall:.3g} | {per_s:.3g} | "
              f"{'–' if per_cpu is None else f'{per_cpu:.3g}'} | "
              f"{tok / max(ok, 1):.0f} | {hours(per_s)} | {hours(per_cpu)} |")
    print()
    for r in results:
        la = r.get("label_agreement") or {}
        print(f"{r['dataset']}/{r['method']}: {r.get('rejudged', 0)} re-judged by later rules; "
              f"settings {r['settings']}; reward model ranks "
              f"{la.get('source_pairs_ranked_right')} of the source pairs right")
    if args.examples:
        for r in results:
            print(f"\n### {r['dataset']} / {r['method']}")
            shown = Counter()
            for t in r["trace"]:
                kind = "accepted" if t["reason"] is None else t["reason"]
                if shown[kind] >= (2 if kind == "accepted" else 1):
                    continue
                shown[kind] += 1
                print(f"- [{kind}, sim {t['similarity'] or 0:.2f}, len {t['length_ratio']:.2f}] "
                      f"{t['role']}: {t['source'][:200]!r}\n    -> {t['variant'][:240]!r}")


def main() -> None:
    ap = arg_parser(__doc__)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=[*METHODS, "semantic"])
    ap.add_argument("--tries", type=int, default=2, help="semantic: rewrites per close pair and role")
    ap.add_argument("--pairs", type=int, default=50)
    ap.add_argument("--part", default="1/1", help="k/n: the k-th of n contiguous parts of the "
                    "pairs (one JSON each; --report and --score join them)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16, help="rewrite: prompts per generate call")
    ap.add_argument("--paraphrase-batch-size", type=int, default=8,
                    help="paraphrase: texts per generate call (each with 5 beams)")
    ap.add_argument("--min-similarity", type=float, default=0.5)
    ap.add_argument("--min-length-ratio", type=float, default=0.3)
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "augmenters"))
    ap.add_argument("--force", action="store_true", help="regenerate an existing result")
    ap.add_argument("--score", metavar="FOLDER", help="a reward model export: label agreement")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--examples", action="store_true", help="with --report: examples too")
    args = parse(ap)
    if args.quick:
        args.pairs, args.max_new_tokens = 2, 16
        args.out = tempfile.mkdtemp(prefix="aug_bench_")
    if args.report:
        return report(args)
    begin()
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("mars.augmenters").setLevel(logging.INFO)  # progress: count, tokens/s
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for dataset in args.datasets:
        if args.score:
            score(dataset, args.score, args)
            continue
        for method in args.methods:
            path = result_path(args.out, dataset, method, args.part)
            if path.exists() and not args.force:
                print(f"{path} exists (--force regenerates)")
                continue
            result = semantic(dataset, args) if method == "semantic" else generate(dataset, method, args)
            path.write_text(json.dumps(result, indent=1))
    if args.quick:
        report(args)
    print("SUMMARY", json.dumps({"out": args.out, "datasets": args.datasets,
                                 "methods": args.methods, "pairs": args.pairs}))


if __name__ == "__main__":
    main()
