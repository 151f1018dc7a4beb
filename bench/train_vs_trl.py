"""Training throughput of mars against TRL's RewardTrainer, side by side, on the same work.

    .venv/bin/python bench/train_vs_trl.py            # full: 512 train pairs, 500 held out
    .venv/bin/python bench/train_vs_trl.py --quick    # 48 train pairs, 40 held out (a smoke run)
    .venv/bin/python bench/train_vs_trl.py --packing --max-tokens 2304   # mars with data.packing=true
    .venv/bin/python bench/train_vs_trl.py --backbone smollm2 --mars padded,packed,prefix_shared   # a decoder
    .venv/bin/python bench/train_vs_trl.py --bf16     # both in bf16 autocast (mars: trainer.precision=bf16-mixed)
    .venv/bin/python bench/train_vs_trl.py --parity --seeds 5   # held-out accuracy over seeds, paired

Same model (the embedded all-MiniLM-L6-v2, `mars.model.backbone.resolve("minilm")`), same data
(the first N HH-RLHF pairs of the shared file to train on; the last M pairs held out, never
trained on), max length 256, 8 pairs per batch, 1 epoch, fp32, one process each, the same
optimisation recipe (AdamW lr 5e-5, weight decay 0.01, 10% linear warm-up then linear decay,
gradient clipping 1.0, dropout off (both frameworks' default), no gradient checkpointing: TRL's
own defaults differ in learning rate 1e-4 and gradient checkpointing on, and are overridden here
so that both do the same work). Each framework runs in its own child process (clean memory figures,
no cross-talk); the parent prints the table.

`--packing`: mars trains on packed, padding-free batches (`data.packing=true`) of up to
`--max-tokens` tokens (`data.max_tokens_per_batch`) instead of `--batch` pairs; its padded-token
count is then its token count (no padding). TRL keeps its padded batches of `--batch` pairs.
`--bf16`: both frameworks train in bf16 autocast (mars `trainer.precision=bf16-mixed`, TRL
`bf16=True`); held-out scoring stays as each framework does it after training.

`--mars MODES`: the mars runs beside TRL's, any of `padded`, `packed` (`data.packing=true`) and
`prefix_shared` (`data.prefix_sharing=true`: each pair one sequence, its common prefix computed
once; decoders only), each in its own process, in an order that alternates between repeats.
Useful tokens count both sequences of a pair whole, as TRL computes them; computed tokens are
what the model ran (padding excluded), so prefix sharing computes fewer than it uses. The table
gives the share of useful tokens the sharing saves, predicted from the pairs (their common
prefixes), against the speed-up measured over packed batches.

`--backbone smollm2`: the decoder SmolLM2-135M-Instruct (embedded) instead of MiniLM, on
`--dataset hh_rlhf` or `ultrafeedback` pairs; `--layers K` keeps its first K of 30 layers (the
checkpoint's weights, in both frameworks) for a shorter run. Both frameworks get the network and
tokenizer as mars loads them (`mars.model.backbone`: a dedicated pad token, as a pad equal to EOS
would move the reward), and the same conversations: TRL's conversational format (its
`apply_chat_template`), mars's pairs through the model's chat template, so that each side's ids
are equal where neither truncates.

`--parity`: held-out accuracy rather than speed. For every seed s < `--seeds` (order reversed on odd
seeds), four runs of the same recipe, each in its own process, with seed s in both frameworks (mars
`seed=`, TRL `seed`/`data_seed`): TRL; mars padded; mars packed (`data.packing=true`); mars padded
on TRL's pairs only (those whose both dialogues + EOS fit `--max-length`, the ones TRL does not
drop), so that truncation is not the difference. All score the same held-out pairs. The parent
prints each run's accuracy per seed (all held-out pairs, and those within TRL's limit), the
seed-to-seed std, and for mars − TRL (and packed − padded mars) the mean paired difference with a
95% interval from a bootstrap that resamples seeds and held-out pairs together (the same pairs
for both sides of a difference). `--report FILE` prints that table again from a `--json` file
(or its `.partial`); `--resume FILE` runs only the seeds that file has not finished.

mars runs the real path: the composed `conf/train.yaml` with data=hh_rlhf_offline (data.path /
val_path pointing at temporary HH-format copies of the chosen pairs), allocator=none
augmenter=none, through `mars.cli.train.train(cfg)`. TRL gets the HH dialogues as they are (its
"standard, implicit prompt" preference format: full `chosen` and `rejected` dialogue strings).
"""
from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C

HERE = Path(__file__).resolve()


# ---------------------------------------------------------------------------------------------
# Workers (child processes)

def worker_mars(args) -> dict:
    C.quiet_logging()
    import mars.cli.train as train_script

    tmp = Path(args.tmp)
    out_dir = tmp / f"mars_run_{args.tag}"
    train_file, train_size = (tmp / "train_kept.jsonl.gz", args.kept_size) if args.kept else \
        (tmp / "train.jsonl.gz", args.train)
    model = ["data=hh_rlhf_offline"] if args.backbone == "minilm" else [
        "data=local", "data.fields.id=id", f"backbone={args.backbone}", *decoder_overrides(args)]
    cfg = C.compose([
        *model, f"data.path={train_file}",
        f"data.val_path={tmp / 'heldout.jsonl.gz'}", "data.test_size=0",
        f"data.train_size={train_size}", f"backbone.max_length={args.max_length}",
        f"data.batch_size={args.batch}", "data.eval_batch_size=64",
        "allocator=none", "augmenter=none", "trainer.max_epochs=1", "~logger", "callbacks=none",
        "test=false", "export=false", f"seed={args.seed}", "+trainer.limit_val_batches=0",
        "+callbacks.bench_timer._target_=_common.EpochTimer", "+callbacks.bench_timer.memory=true",
        f"data.packing={str(args.mode == 'packed').lower()}",
        f"data.prefix_sharing={str(args.mode == 'prefix_shared').lower()}", f"data.max_tokens_per_batch={args.max_tokens}",
        f"trainer.precision={'bf16-mixed' if args.bf16 else '32-true'}",
        *C.QUIET,
    ], out_dir)
    t0 = time.perf_counter()
    _, objs = train_script.train(cfg)
    total = time.perf_counter() - t0
    timer = C.find_callback(objs["trainer"], C.EpochTimer)
    ep = timer.epochs[0]
    dm = objs["datamodule"]
    # Held-out margins with mars's own scorer (`mars.model.scoring.Scorer`, the run's: eval batch 64,
    # packed or prefix-shared like training); validation during fit is switched off
    # (limit_val_batches=0) so that the held-out set is scored once.
    heldout = dm.splits["val"]
    with C.Measure() as m_eval:
        scores = dm.loop.scorer.pairs(heldout)
    rc, rr = scores.r_chosen, scores.r_rejected
    from mars.data.batch import shared_prefix

    train = dm.encoded["train"]
    return {
        "framework": "mars", "mode": args.mode, "train_s": ep["train_s"], "train_cpu_s": ep["train_cpu_s"],
        "fit_wall_s": total, "pairs": ep["pairs"], "pairs_offered": train_size,
        "tokens": ep["useful"], "computed_tokens": ep["tokens"], "padded_tokens": ep["padded"],
        "pad_fraction": ep["pad_fraction"],
        # the share of the training pairs' tokens that are a common prefix (computed once when shared)
        "shared_fraction": sum(shared_prefix(e.chosen, e.rejected) for e in train)
        / max(1, sum(len(e.chosen) + len(e.rejected) for e in train)),
        "batches": ep["batches"], "truncated_train": dm.truncated.get("train"),
        "truncated_heldout": dm.truncated.get("val"),
        "uninformative": {k: len(v) for k, v in dm.uninformative.items()},
        "heldout_margins": (rc - rr).tolist(), "heldout_ids": [p.id for p in heldout],
        "memory": timer.memory_result, "load_start": ep["load_start"], "load_end": ep["load_end"],
        "eval_s": m_eval.seconds, "threads": timer.threads,
        "included": "on_train_epoch_start→on_train_epoch_end (no validation): batches (sampler, "
                    "collate), forward, backward, clip, AdamW, LR step, step logging, epoch metrics",
    }


def worker_trl(args) -> dict:
    C.quiet_logging()
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    from mars.model.backbone import resolve

    tmp = Path(args.tmp)
    with open(tmp / "trl.json") as f:
        data = json.load(f)
    path = resolve("minilm")
    if args.backbone == "minilm":
        tok, model = AutoTokenizer.from_pretrained(path), path
    else:  # the network and tokenizer as mars builds them (dedicated pad token, num_labels=1)
        from mars.config import BackboneConfig
        from mars.model.backbone import load_network, load_tokenizer

        overrides = {"num_hidden_layers": args.layers} if args.layers else {}
        backbone = BackboneConfig(name_or_path=args.backbone, max_length=args.max_length, config_overrides=overrides)
        tok = load_tokenizer(backbone)
        model = load_network(backbone, tok)

    class CountingCollator:
        """TRL's own collator, counting non-padding and padded tokens of every batch."""

        def __init__(self, inner):
            self.inner, self.tokens, self.padded, self.pairs, self.batches = inner, 0, 0, 0, 0

        def __call__(self, examples):
            out = self.inner(examples)
            self.tokens += int(out["attention_mask"].sum())
            self.padded += int(out["attention_mask"].numel())
            self.pairs += len(examples)
            self.batches += 1
            return out

    class Timer(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            self.threads = torch.get_num_threads()
            self.load_start = C.loadavg()
            self.mem = C.RSSPeak()
            self.mem.start()
            self.c0 = time.process_time()
            self.t0 = time.perf_counter()

        def on_train_end(self, a, state, control, **kw):
            self.seconds = time.perf_counter() - self.t0
            self.cpu_seconds = time.process_time() - self.c0
            self.memory = self.mem.stop()
            self.load_end = C.loadavg()

    collator = CountingCollator(DataCollatorForPreference(pad_token_id=tok.pad_token_id))
    timer = Timer()
    # The shared recipe (see the docstring), or TRL as a user gets it (--trl-defaults): its own
    # learning rate, warm-up, clipping and gradient checkpointing.
    recipe = {} if args.trl_defaults else {
        "learning_rate": 5e-5, "weight_decay": 0.01, "warmup_steps": 0.1, "lr_scheduler_type": "linear",
        "max_grad_norm": 1.0, "center_rewards_coefficient": None, "gradient_checkpointing": False,
        "disable_dropout": True}
    # MiniLM's BERT tokenizer has no EOS token, which TRL appends to standard-format text
    # (and fails on None): the BERT separator stands in for it. Conversations get none appended.
    eos = {"eos_token": tok.sep_token} if args.backbone == "minilm" else {}
    cfg = RewardConfig(
        output_dir=str(tmp / f"trl_out_{args.tag}"), per_device_train_batch_size=args.batch,
        num_train_epochs=1, max_length=args.max_length, report_to=[], use_cpu=True,
        bf16=args.bf16, fp16=False, save_strategy="no", eval_strategy="no", logging_steps=10**6,
        dataloader_num_workers=0, disable_tqdm=True, seed=args.seed, data_seed=args.seed, **recipe, **eos)
    train_ds = Dataset.from_list(data["train"])
    t_init = time.perf_counter()
    trainer = RewardTrainer(model=model, args=cfg, train_dataset=train_ds, processing_class=tok,
                            data_collator=collator, callbacks=[timer])
    init_s = time.perf_counter() - t_init
    kept = len(trainer.train_dataset)
    trainer.train()

    # Held-out accuracy with the trained model, in the text format it trained on (dialogue + EOS).
    # Over-long held-out pairs are scored with left truncation to max_length (the end of the dialogue stays).
    model = trainer.model.eval()
    heldout = data["heldout"]
    if args.backbone == "minilm":
        texts = [h["chosen"] + tok.sep_token for h in heldout] + [h["rejected"] + tok.sep_token for h in heldout]
        full = tok(texts)["input_ids"]
    else:  # what TRL trained on: each conversation through the chat template
        full = [tok.apply_chat_template(h[side], tokenize=True, return_dict=True)["input_ids"]
                for side in ("chosen", "rejected") for h in heldout]
    enc = [ids[-args.max_length:] for ids in full]
    full_len = [len(x) for x in full]
    order = np.argsort([-len(x) for x in enc], kind="stable")
    rewards = np.zeros(len(full))
    with C.Measure() as m_eval, torch.inference_mode():
        for b in range(0, len(order), 128):
            idx = order[b:b + 128]
            width = max(len(enc[i]) for i in idx)
            ids = torch.full((len(idx), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, :len(enc[i])] = torch.tensor(enc[i])
                mask[r, :len(enc[i])] = 1
            rewards[idx] = model(input_ids=ids, attention_mask=mask).logits.squeeze(-1).double().numpy()
    n = len(heldout)
    margins = rewards[:n] - rewards[n:]
    fits = [full_len[i] <= args.max_length and full_len[n + i] <= args.max_length for i in range(n)]
    return {
        "framework": "trl", "train_s": timer.seconds, "train_cpu_s": timer.cpu_seconds, "init_s": init_s, "pairs": collator.pairs,
        "pairs_offered": len(data["train"]), "pairs_kept": kept, "tokens": collator.tokens,
        "padded_tokens": collator.padded, "pad_fraction": 1 - collator.tokens / max(1, collator.padded),
        "batches": collator.batches, "heldout_margins": margins.tolist(), "heldout_fits": fits,
        "memory": timer.memory, "load_start": timer.load_start, "load_end": timer.load_end,
        "eval_s": m_eval.seconds, "threads": timer.threads,
        "included": "Trainer on_train_begin→on_train_end: batches (sampler, TRL collator), forward, "
                    "backward, clip, AdamW, LR step, TRL's per-step metric gathering",
    }


# ---------------------------------------------------------------------------------------------
# Parent

def decoder_overrides(args) -> list[str]:
    return [f"+backbone.config_overrides.num_hidden_layers={args.layers}"] if args.layers else []


def conversation(pair, response: str) -> list[dict]:
    """The messages mars renders for one side of a pair (its HH-aware prompt parser)."""
    from mars.data.format import hh_messages

    return hh_messages(pair.prompt) + [{"role": "assistant", "content": response}]


def prepare(args, tmp: Path) -> dict:
    if args.backbone != "minilm":
        return prepare_decoder(args, tmp)
    pairs = C.hh_pairs()
    rows = C.hh_raw_rows()
    train, heldout = pairs[:args.train], pairs[-args.heldout:]
    assert not {p.content_hash() for p in train} & {p.content_hash() for p in heldout}
    train_rows = [C.raw_row_of(p, rows) for p in train]
    held_rows = [C.raw_row_of(p, rows) for p in heldout]
    C.write_hh_jsonl_gz(train_rows, tmp / "train.jsonl.gz")
    C.write_hh_jsonl_gz(held_rows, tmp / "heldout.jsonl.gz")
    with open(tmp / "trl.json", "w") as f:
        json.dump({"train": [{"chosen": r["chosen"], "rejected": r["rejected"]} for r in train_rows],
                   "heldout": [{"chosen": r["chosen"], "rejected": r["rejected"]} for r in held_rows]}, f)
    # The pairs TRL keeps (its filter: both dialogues + EOS, [SEP] for MiniLM, within max_length),
    # for mars trained on them alone (--parity)
    from transformers import AutoTokenizer

    from mars.model.backbone import resolve

    tok = AutoTokenizer.from_pretrained(resolve("minilm"))
    kept = [r for r in train_rows if all(len(tok(r[k] + tok.sep_token)["input_ids"]) <= args.max_length
                                         for k in ("chosen", "rejected"))]
    C.write_hh_jsonl_gz(kept, tmp / "train_kept.jsonl.gz")
    args.kept_size = len(kept)
    return {"train_ids": [p.id for p in train], "heldout_ids": [p.id for p in heldout], "trl_kept": len(kept)}


def prepare_decoder(args, tmp: Path) -> dict:
    """--backbone smollm2: the dataset's pairs for mars (`data=local` rows) and for TRL
    (conversational: the same messages), the first --train to train on, the last --heldout held out."""
    from mars.data.sources import load_pairs

    path = {"hh_rlhf": C.HH_PATH, "ultrafeedback": C.DATA_DIR / "ultrafeedback" / "train.jsonl"}[args.dataset]
    pairs = load_pairs(args.dataset, path=str(path), on_error="skip").pairs
    train, heldout = pairs[:args.train], pairs[-args.heldout:]
    assert len(train) + len(heldout) <= len(pairs), "--train and --heldout overlap"
    for name, part in (("train", train), ("heldout", heldout)):
        with gzip.open(tmp / f"{name}.jsonl.gz", "wt", encoding="utf-8") as f:
            for p in part:
                f.write(json.dumps({"id": p.id, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n")
    with open(tmp / "trl.json", "w") as f:
        json.dump({name: [{"chosen": conversation(p, p.chosen), "rejected": conversation(p, p.rejected)} for p in part]
                   for name, part in (("train", train), ("heldout", heldout))}, f)
    args.kept_size = 0
    return {"train_ids": [p.id for p in train], "heldout_ids": [p.id for p in heldout]}


def run_worker(framework: str, args, tmp: Path, tag: str) -> dict:
    out = tmp / f"{framework}_{tag}.json"
    cmd = [sys.executable, str(HERE), "--worker", framework, "--tmp", str(tmp), "--tag", tag,
           "--result", str(out), "--train", str(args.train), "--heldout", str(args.heldout),
           "--max-length", str(args.max_length), "--batch", str(args.batch), "--threads", str(args.threads)]
    cmd += ["--trl-defaults"] if args.trl_defaults else []
    cmd += ["--max-tokens", str(args.max_tokens), "--mode", args.mode] + (["--bf16"] if args.bf16 else [])
    cmd += ["--backbone", args.backbone, "--dataset", args.dataset, "--layers", str(args.layers)]
    cmd += ["--seed", str(args.seed), "--kept-size", str(args.kept_size)] + (["--kept"] if args.kept else [])
    with C.Measure(f"{framework} process (load + tokenise + train + held-out scoring)") as m:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{framework} worker failed ({proc.returncode})")
    with open(out) as f:
        res = json.load(f)
    res["process_s"] = m.seconds
    return res


def acc(margins, mask=None) -> float:
    import numpy as np

    m = np.asarray(margins)
    if mask is not None:
        m = m[np.asarray(mask, dtype=bool)]
    return float((m > 0).mean()) if len(m) else float("nan")


def main() -> None:
    ap = C.arg_parser(__doc__)
    ap.add_argument("--train", type=int, default=512)
    ap.add_argument("--heldout", type=int, default=500)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1, help="runs of each framework (alternating order)")
    ap.add_argument("--trl-first", action="store_true", help="start with TRL (order effects)")
    ap.add_argument("--trl-defaults", action="store_true",
                    help="TRL with its own recipe (lr 1e-4, gradient checkpointing on) instead of the shared one")
    ap.add_argument("--mars", default="padded",
                    help="mars runs beside TRL's, comma-separated: padded, packed, prefix_shared")
    ap.add_argument("--packing", action="store_true", help="the same as --mars packed")
    ap.add_argument("--max-tokens", type=int, default=2304,
                    help="data.max_tokens_per_batch of the packed and prefix-shared runs")
    ap.add_argument("--backbone", choices=["minilm", "smollm2"], default="minilm")
    ap.add_argument("--dataset", choices=["hh_rlhf", "ultrafeedback"], default="hh_rlhf",
                    help="the pairs under --backbone smollm2 (MiniLM: HH-RLHF)")
    ap.add_argument("--layers", type=int, default=0, help="--backbone smollm2: its first K layers only (0: all)")
    ap.add_argument("--bf16", action="store_true",
                    help="both in bf16 autocast: mars trainer.precision=bf16-mixed, TRL bf16=True")
    ap.add_argument("--parity", action="store_true",
                    help="held-out accuracy over --seeds seeds: TRL, mars padded, packed, and padded on TRL's pairs")
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 under --parity")
    ap.add_argument("--report", metavar="JSON", help="print the --parity table of a --json file (or its .partial)")
    ap.add_argument("--resume", metavar="JSON", help="--parity: keep the seeds this --json file (or .partial) finished")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--kept", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--kept-size", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=MODES, default="padded", help=argparse.SUPPRESS)
    ap.add_argument("--worker", choices=["mars", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    ap.add_argument("--tag", default="0", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = C.parse(ap)
    if args.worker:
        res = (worker_mars if args.worker == "mars" else worker_trl)(args)
        C.write_json(args.result, res)
        return
    if args.quick:
        args.train, args.heldout = 48, 40
    if args.report:
        with open(args.report) as f:
            return parity_report(json.load(f)["runs"])
    if args.parity:
        return parity(args)
    return speed(args)


MODES = ("padded", "packed", "prefix_shared")


def speed(args) -> None:
    """TRL and every --mars run, --repeats times (the order turned round on every other repeat),
    then the table: medians over repeats, ratios to TRL."""
    modes = ["packed"] if args.packing else args.mars.split(",")
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise SystemExit(f"--mars {args.mars}: {', '.join(unknown)} unknown; use {', '.join(MODES)}")
    variants = {"TRL": ("trl", "padded"), **{f"mars {m.replace('_', '-')}": ("mars", m) for m in modes}}
    load0 = C.begin()
    model = "MiniLM" if args.backbone == "minilm" else \
        f"{args.backbone}{f' (first {args.layers} layers)' if args.layers else ''} on {args.dataset}"
    print(f"train_vs_trl: {model}, {args.train} train pairs (first of the file), {args.heldout} held out (last), "
          f"max_length {args.max_length}, {args.batch} pairs/batch (packed: {args.max_tokens} tokens/batch), "
          f"1 epoch, {'bf16 autocast' if args.bf16 else 'fp32'}, repeats {args.repeats}; "
          f"loadavg {C.fmt_load(load0)}", flush=True)
    runs = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="mars_bench_trl_") as d:
        tmp = Path(d)
        ids = prepare(args, tmp)
        for r in range(args.repeats):
            order = list(variants) if args.trl_first else list(variants)[1:] + ["TRL"]
            for name in order if r % 2 == 0 else order[::-1]:
                framework, mode = variants[name]
                res = run_worker(framework, argparse.Namespace(**{**vars(args), "mode": mode}), tmp, f"r{r}_{mode}")
                runs[name].append(res)
                if args.json:  # every finished run kept, should the next one be interrupted
                    C.write_json(args.json + ".partial", {"args": vars(args), "runs": runs, "load0": load0})
                print(f"  {name} run {r}: {res['pairs'] / res['train_s']:.2f} pairs/s over {res['pairs']} pairs "
                      f"({res['train_s']:.1f} s training, {res['threads']} threads); loadavg "
                      f"{C.fmt_load(tuple(res['load_start']))} → {C.fmt_load(tuple(res['load_end']))}", flush=True)
    load1 = C.loadavg()
    summary = speed_report(args, runs)
    C.write_json(args.json, {"args": vars(args), "summary": summary, "runs": runs, "ids": ids,
                             "load": [load0, load1], "machine": C.machine()})
    print(f"  loadavg: start {C.fmt_load(load0)}, end {C.fmt_load(load1)}")
    t = summary["TRL"]
    print("SUMMARY train_vs_trl: " + "; ".join(
        f"{name} {s['pairs_per_s']:.2f} pairs/s ({s['pairs_per_s'] / t['pairs_per_s']:.2f}x TRL's), useful tokens/s "
        f"{s['tokens_per_s'] / t['tokens_per_s']:.2f}x, held-out acc {s['heldout_acc']:.3f}"
        for name, s in ((n, summary[n]) for n in runs if n != "TRL")) + f"; TRL {t['pairs_per_s']:.2f} pairs/s, held-out acc "
        f"{t['heldout_acc']:.3f}; median of {args.repeats} run(s)")


def speed_report(args, runs: dict) -> dict:
    """Print the side-by-side table of `speed`; its figures returned for the JSON."""
    fits = runs["TRL"][0]["heldout_fits"]
    summary = {}
    for name, rs in runs.items():
        summary[name] = {
            "pairs_per_s": C.median([r["pairs"] / r["train_s"] for r in rs]),
            "tokens_per_s": C.median([r["tokens"] / r["train_s"] for r in rs]),
            "computed_tokens_per_s": C.median([r.get("computed_tokens", r["tokens"]) / r["train_s"] for r in rs]),
            "train_s": C.median([r["train_s"] for r in rs]),
            "pairs_per_cpu_s": C.median([r["pairs"] / r["train_cpu_s"] for r in rs]),
            "tokens_per_cpu_s": C.median([r["tokens"] / r["train_cpu_s"] for r in rs]),
            "pad_fraction": C.median([r["pad_fraction"] for r in rs]),
            "batches": rs[0]["batches"], "pairs_per_batch": rs[0]["pairs"] / max(1, rs[0]["batches"]),
            "tokens_per_batch": rs[0]["tokens"] / max(1, rs[0]["batches"]),
            "peak_rss_mib": C.median([r["memory"]["rss_peak_mib"] for r in rs]),
            "rss_delta_mib": C.median([r["memory"]["rss_delta_mib"] for r in rs]),
            "ru_maxrss_mib": C.median([r["memory"]["ru_maxrss_mib"] for r in rs]),
            "pairs_trained": rs[0]["pairs"], "pairs_offered": rs[0]["pairs_offered"],
            "heldout_acc": C.median([acc(r["heldout_margins"]) for r in rs]),
            "heldout_acc_fitting": C.median([acc(r["heldout_margins"], fits) for r in rs]),
        }
    n_fit = sum(fits)
    print()
    print(f"{'':34}" + "".join(f"{name:>20}" for name in runs))
    rows = [
        ("pairs/s (training only)", "pairs_per_s", "{:.2f}"),
        ("useful tokens/s (TRL's count)", "tokens_per_s", "{:.0f}"),
        ("computed tokens/s", "computed_tokens_per_s", "{:.0f}"),
        ("training time (s)", "train_s", "{:.1f}"),
        ("pairs per CPU-second", "pairs_per_cpu_s", "{:.2f}"),
        ("useful tokens per CPU-s", "tokens_per_cpu_s", "{:.0f}"),
        ("padding fraction", "pad_fraction", "{:.3f}"),
        ("batches (optimiser steps)", "batches", "{:d}"),
        ("pairs per batch (mean)", "pairs_per_batch", "{:.2f}"),
        ("useful tokens per batch", "tokens_per_batch", "{:.0f}"),
        ("peak RSS during training (MiB)", "peak_rss_mib", "{:.0f}"),
        ("  growth over train start (MiB)", "rss_delta_mib", "{:.0f}"),
        ("  process ru_maxrss (MiB)", "ru_maxrss_mib", "{:.0f}"),
        (f"held-out acc (all {args.heldout})", "heldout_acc", "{:.4f}"),
        (f"held-out acc ({n_fit} fitting TRL's limit)", "heldout_acc_fitting", "{:.4f}"),
    ]
    for label, key, f in rows:
        print(f"{label:34}" + "".join(f"{f.format(s[key]):>20}" for s in summary.values()))
    kept = ["{}/{}".format(s["pairs_trained"], s["pairs_offered"]) for s in summary.values()]
    print(f"{'pairs kept / offered':34}" + "".join(f"{k:>20}" for k in kept))
    t = summary["TRL"]
    print(f"{'ratio to TRL: pairs/s':34}" + "".join(f"{s['pairs_per_s'] / t['pairs_per_s']:>19.2f}x"
                                                   for s in summary.values()))
    print(f"{'ratio to TRL: useful tokens/s':34}" + "".join(f"{s['tokens_per_s'] / t['tokens_per_s']:>19.2f}x"
                                                           for s in summary.values()))
    mars = {name: rs[0] for name, rs in runs.items() if name != "TRL"}
    first = next(iter(mars.values()))
    print(f"  mars truncated {first['truncated_train']} of {first['pairs_offered']} training pairs (kept, counted); "
          f"TRL dropped {t['pairs_offered'] - t['pairs_trained']} over-long pairs "
          f"({1 - t['pairs_trained'] / t['pairs_offered']:.1%}).")
    if "mars packed" in summary and "mars prefix-shared" in summary:
        shared = mars["mars prefix-shared"]["shared_fraction"]
        gain = summary["mars prefix-shared"]["tokens_per_s"] / summary["mars packed"]["tokens_per_s"]
        summary["prefix_sharing"] = {"shared_fraction": shared, "predicted_speedup": 1 / (1 - shared),
                                     "measured_speedup": gain}
        print(f"  prefix sharing: {shared:.1%} of the training pairs' tokens are a common prefix, computed once; "
              f"predicted speed-up over packed {1 / (1 - shared):.2f}x (tokens alone), measured {gain:.2f}x")
    print("  memory: RSS sampled every 10 ms by a psutil thread from train start to train end "
          "(peak and growth); ru_maxrss: the worker process's lifetime high-water mark (getrusage).")
    print(f"  timing: mars = {first['included']}; TRL = {runs['TRL'][0]['included']}. "
          "Model loading, tokenisation and held-out scoring are outside both.")
    if args.backbone == "minilm":
        print("  TRL text: each HH dialogue string as it is (chosen/rejected, implicit prompt) + its EOS "
              "('[SEP]': MiniLM has no EOS token); held-out pairs over its limit scored with left truncation.")
    else:
        print("  TRL text: the same conversations, in its conversational format (the chat template); held-out "
              "pairs over its limit scored with left truncation.")
    print(f"  held-out pairs truncated by mars: {first['truncated_heldout']} of {args.heldout}; "
          f"{args.heldout - n_fit} are over TRL's limit")
    print("  CPU-seconds: the worker process's CPU time over the same window (all threads); with --threads 1 "
          "it is the work done, whatever else runs on the machine.")
    return summary


# ---------------------------------------------------------------------------------------------
# --parity: held-out accuracy over seeds

# The same recipe in every run; only what mars is fed, and how it is batched, differs.
PARITY = {"TRL": ("trl", {}), "mars padded": ("mars", {}), "mars packed": ("mars", {"mode": "packed"}),
          "mars on TRL's pairs": ("mars", {"kept": True})}
DIFFERENCES = [("mars padded", "TRL"), ("mars packed", "TRL"), ("mars on TRL's pairs", "TRL"),
               ("mars packed", "mars padded")]


def parity(args) -> None:
    """Every PARITY run on seeds 0..N−1 (order reversed on odd seeds, so neither side always runs
    first), then the table of `parity_report`."""
    load0, t0 = C.begin(), time.perf_counter()
    runs = {name: [] for name in PARITY}
    if args.resume:  # the seeds a previous run (its --json or .partial) finished, with the same recipe
        with open(args.resume) as f:
            before = json.load(f)
        same = ("train", "heldout", "max_length", "batch", "max_tokens", "bf16", "trl_defaults")
        changed = [k for k in same if before["args"].get(k) != vars(args)[k]]
        if changed:
            raise SystemExit(f"--resume {args.resume}: other settings ({', '.join(changed)}); run with those")
        done = min(len(rs) for rs in before["runs"].values())
        runs = {name: before["runs"][name][:done] for name in PARITY}
    with tempfile.TemporaryDirectory(prefix="mars_bench_parity_") as d:
        tmp = Path(d)
        ids = prepare(args, tmp)
        print(f"parity: {args.train} train pairs ({ids['trl_kept']} within TRL's limit), {args.heldout} held out, "
              f"seeds 0..{args.seeds - 1}, packed batches of {args.max_tokens} tokens; loadavg {C.fmt_load(load0)}",
              flush=True)
        for seed in range(min(len(rs) for rs in runs.values()), args.seeds):
            order = list(enumerate(PARITY))
            for k, name in order if seed % 2 == 0 else order[::-1]:
                framework, mode = PARITY[name]
                run_args = argparse.Namespace(**{**vars(args), "seed": seed, "mode": "padded", "kept": False, **mode})
                res = run_worker(framework, run_args, tmp, f"s{seed}_{k}")
                runs[name].append(res)
                print(f"  seed {seed} {name}: held-out acc {acc(res['heldout_margins']):.4f}, {res['pairs']} pairs "
                      f"trained in {res['train_s']:.1f} s ({res['process_s']:.0f} s in all)", flush=True)
                if args.json:  # every finished run kept, should the next one be interrupted
                    C.write_json(args.json + ".partial", {"args": vars(args), "runs": runs, "ids": ids})
    # Margins are paired by position: mars scored the held-out file in its order, as TRL did; and
    # TRL dropped exactly the pairs that "mars on TRL's pairs" left out.
    assert all(r["heldout_ids"] == [f"hh_rlhf-{i}" for i in range(args.heldout)]
               for name, (fw, _) in PARITY.items() if fw == "mars" for r in runs[name])
    assert all(r["pairs_kept"] == ids["trl_kept"] for r in runs["TRL"])
    report = parity_report(runs)
    print(f"SUMMARY train_vs_trl --parity: {args.seeds} seeds × {len(PARITY)} runs in "
          f"{(time.perf_counter() - t0) / 60:.1f} min; loadavg {C.fmt_load(load0)} → {C.fmt_load(C.loadavg())}")
    C.write_json(args.json, {"args": vars(args), "report": report, "runs": runs, "ids": ids,
                             "machine": C.machine(), "load": [load0, C.loadavg()]})


def paired_difference(a, b, draws: int = 10_000, seed: int = 0) -> dict:
    """a − b held-out accuracy, from [seeds, pairs] arrays of correct (margin > 0) paired by seed:
    per seed, its mean, the seed-to-seed std, and a 95% interval from a bootstrap that draws seeds
    and held-out pairs with replacement (one draw for both sides, so the pairing is kept)."""
    import numpy as np

    d = a.astype(float) - b
    rng = np.random.default_rng(seed)
    s, p = rng.integers(0, d.shape[0], (draws, d.shape[0])), rng.integers(0, d.shape[1], (draws, d.shape[1]))
    boot = [d[si][:, pi].mean() for si, pi in zip(s, p)]
    per_seed = d.mean(1)
    return {"per_seed": per_seed.tolist(), "mean": float(d.mean()), "std": std(per_seed),
            "lo": float(np.percentile(boot, 2.5)), "hi": float(np.percentile(boot, 97.5))}


def std(xs) -> float:
    import numpy as np

    return float(np.std(xs, ddof=1)) if len(xs) > 1 else float("nan")


def parity_report(runs: dict) -> dict:
    """Print accuracy per seed and the DIFFERENCES, on all held-out pairs and on those within
    TRL's limit; the same figures returned for the JSON."""
    import numpy as np

    seeds = min(len(rs) for rs in runs.values())  # of a .partial file: the seeds every run finished
    fits = np.array(runs["TRL"][0]["heldout_fits"])
    subsets = {"all": np.ones(len(fits), bool), "within TRL's limit": fits}
    # correct: margin > 0, so a tie (the 0 of a pair mars found uninformative) counts against
    correct = {name: np.array([r["heldout_margins"] for r in rs[:seeds]]) > 0 for name, rs in runs.items()}
    report = {"seeds": seeds, "pairs": {sub: int(mask.sum()) for sub, mask in subsets.items()},
              "accuracy": {}, "differences": {}}
    cols = "".join(f"{f'seed {s}':>8}" for s in range(seeds))
    print(f"\n{'held-out accuracy':51}{cols}{'mean':>8}{'std':>8}")
    for name, c in correct.items():
        for k, (sub, mask) in enumerate(subsets.items()):
            per_seed = c[:, mask].mean(1)
            r = {"per_seed": per_seed.tolist(), "mean": float(per_seed.mean()), "std": std(per_seed)}
            report["accuracy"].setdefault(name, {})[sub] = r
            print(f"{name if k == 0 else '':27}{f'{sub} ({mask.sum()})':24}" + "".join(f"{x:8.3f}" for x in per_seed)
                  + f"{r['mean']:8.3f}{r['std']:8.3f}")
    print(f"\n{'paired difference':51}{cols}{'mean':>8}{'std':>8}   95% interval (seeds × pairs bootstrap)")
    for ours, theirs in DIFFERENCES:
        for k, (sub, mask) in enumerate(subsets.items()):
            r = paired_difference(correct[ours][:, mask], correct[theirs][:, mask])
            report["differences"].setdefault(f"{ours} − {theirs}", {})[sub] = r
            print(f"{f'{ours} − {theirs}' if k == 0 else '':27}{f'{sub} ({mask.sum()})':24}"
                  + "".join(f"{x:+8.3f}" for x in r["per_seed"])
                  + f"{r['mean']:+8.3f}{r['std']:8.3f}   [{r['lo']:+.3f}, {r['hi']:+.3f}]")
    print()
    for name, rs in runs.items():
        r = rs[0]
        data = f"{r['pairs_kept']} of {r['pairs_offered']} pairs kept (the rest over its limit)" if name == "TRL" else \
            (f"{r['pairs']} pairs trained, {r['truncated_train']} truncated; left out as uninformative after "
             f"truncation: {r['uninformative'].get('train', 0)} train, {r['uninformative'].get('val', 0)} held out")
        print(f"  {name}: {data}; {r['batches']} batches; per run {C.median([x['train_s'] for x in rs]):.0f} s "
              f"training, {C.median([x['process_s'] for x in rs]):.0f} s in all (median)")
    return report


if __name__ == "__main__":
    main()
