"""Training and prediction throughput of mars on one GPU: padded, packed and prefix-shared batches.

    python bench/gpu.py --json $OUT/gpu.json     # a lent GPU, a few minutes (bench/README.md)
    .venv/bin/python bench/gpu.py --self-test    # CPU, tiny model, every path but the GPU-only ones

The model is Qwen2.5-0.5B's architecture with random weights (`QWEN2_5_0_5B`, built by
mars.model.build from `model_type` + `config_overrides`: no download), under mars's reward head.
The pairs are HH-RLHF's, as token lengths: the shared file tokenised by mars.data.format.PairFormatter
with the embedded SmolLM2 tokenizer (ChatML template, max_length and min_prompt_tokens of
conf/backbone/qwen2_5_0_5b.yaml) where both are here, else the same lengths from `hh_lengths.json`
beside this script (written by `--write-lengths`). Each pair becomes random token ids of its
lengths: chosen and rejected share exactly its prefix, so prefix sharing saves what it would on
the real text. Token ids do not change the arithmetic.

Per attention implementation (SDPA, which mars runs through its variable-length path for packed
batches; FlexAttention; flash-attention 2 where `flash_attn` imports, not for prefix sharing) and
batch kind (padded: `Collator`; packed: `PackedCollator`; prefix-shared: `PrefixSharedCollator`),
a fresh model trains `--warmup` + `--steps` steps on the same batches of `--pairs` pairs (drawn
and length-grouped by mars's `PairBatchSampler`, as `data.length_grouping` does) the way mars's
Lightning module does under `trainer=gpu`: bf16 autocast over fp32 weights (precision
bf16-mixed), Bradley-Terry loss, gradient clipping at 1.0, AdamW with decay on matrices only
(not fused, as Lightning's mixed precision requires). A step is step end to step end after
`torch.cuda.synchronize()`: collation, host-to-device copy, forward, backward, clipping, AdamW.

Figures per run, over the timed steps: pairs/s; useful tokens/s, counting both sequences of every
pair in full (TRL's count: prefix sharing's saved tokens count as done); padding (slots run that
are no token); peak memory (`torch.cuda.max_memory_allocated`, model and optimiser included); MFU.
MFU is model FLOP/s over the card's dense bf16 peak (`PEAK_BF16`, else `--peak-tflops`). A
sequence of L tokens costs k·(2·N·L + 4·layers·d·L(L+1)/2) FLOPs: N the non-embedding parameters,
d = heads × head_dim, L(L+1)/2 the query-key pairs of causal attention, k = 3 for a training step
(forward, backward) and 1 for the prediction pass. `mfu` counts both sequences of every pair in
full (the same FLOPs for every batch kind, so it ranks them as tokens/s does); `mfu_prefix_once`
counts what a prefix-shared batch needs: its prefix once (p + c + r tokens, (p+c)(p+c+1)/2 +
r·p + r(r+1)/2 attention pairs). Neither counts padding, nor recomputation (gradient
checkpointing is off: the preset turns it on for memory, which a big card does not need here).

The prediction pass: mars's `Scorer.pairs` (each distinct sequence once, length-sorted batches of
`--eval-batch` pairs, or packed / prefix-shared batches of `--eval-tokens` tokens) over
`--eval-pairs` pairs, SDPA, bf16 autocast, timed by the scorer's own `time` after one warm-up pass.
TRL's `RewardTrainer`, when `trl` imports: the same network config (AutoModelForSequenceClassification,
SDPA), the same padded batches in the same order where transformers' `train_sampling_strategy`
allows it ("sequential"), bf16, the same recipe; its steps timed by a callback, end to end.

Phases run in order (SDPA training, prediction, flash-attention, TRL, FlexAttention, whose first
steps compile) and each is skipped once `--budget-s` has passed; the JSON is rewritten after
every run, so a run stopped by its timeout keeps what it measured.
"""
from __future__ import annotations

import dataclasses
import functools
import gc
import importlib
import itertools
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import _common as C

# the working tree's mars where none is installed (a device machine's copy of the tree)
if str(C.ROOT) not in sys.path:
    sys.path.append(str(C.ROOT))

HERE = Path(__file__).resolve().parent
LENGTHS = HERE / "hh_lengths.json"
PRESET = C.ROOT / "conf" / "backbone" / "qwen2_5_0_5b.yaml"

# Qwen/Qwen2.5-0.5B-Instruct's config.json: the architecture, built with random weights
QWEN2_5_0_5B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                    intermediate_size=4864, vocab_size=151936, rope_theta=1e6, tie_word_embeddings=True,
                    max_position_embeddings=32768, rms_norm_eps=1e-6)
# tiny_qwen2's dimensions (conf/backbone/tiny_qwen2.yaml), for the CPU self-test
TINY_QWEN2 = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                  intermediate_size=64, vocab_size=512, max_position_embeddings=2048)

# Dense bf16 tensor-core peaks (datasheets), matched against torch.cuda.get_device_name()
PEAK_BF16 = ((r"H200", 989e12), (r"H100.*(SXM|HBM3)", 989e12), (r"H100 PCIe", 756e12), (r"A100", 312e12),
             (r"\bL4\b", 121e12))

MODES = ("padded", "packed", "prefix_shared")
ATTENTIONS = ("sdpa", "flex_attention", "flash_attention_2")


# ---------------------------------------------------------------------------------------------
# Pairs: HH-RLHF lengths as token ids

@functools.cache
def preset() -> dict:
    import yaml

    with open(PRESET) as f:
        cfg = yaml.safe_load(f)
    return {"max_length": cfg["max_length"], "min_prompt_tokens": cfg["min_prompt_tokens"]}


def hh_lengths(limit: int | None = None) -> list[tuple[int, int, int]]:
    """(shared prefix, rest of chosen, rest of rejected) tokens of the first `limit` shared
    HH-RLHF pairs, tokenised by PairFormatter with the embedded SmolLM2 tokenizer at the preset's lengths."""
    from mars.config import BackboneConfig
    from mars.data.batch import shared_prefix
    from mars.data.format import PairFormatter
    from mars.model.backbone import load_tokenizer

    formatter = PairFormatter(load_tokenizer(BackboneConfig(name_or_path="smollm2")), preset()["max_length"],
                              preset()["min_prompt_tokens"])
    out = []
    for e in formatter.encode(C.hh_pairs()[:limit]):
        k = shared_prefix(e.chosen, e.rejected)
        out.append((k, len(e.chosen) - k, len(e.rejected) - k))
    return out


def write_lengths(path: str) -> None:
    table = {"source": f"{C.HH_PATH.name}, mars PairFormatter, SmolLM2-135M-Instruct tokenizer (ChatML)",
             **preset(), "columns": ["shared_prefix", "chosen_rest", "rejected_rest"], "pairs": hh_lengths()}
    with open(path, "w") as f:
        json.dump(table, f, separators=(",", ":"))
    print(f"{len(table['pairs'])} pairs' lengths → {path}")


def load_lengths(limit: int | None) -> tuple[list[tuple[int, int, int]], str]:
    """The first `limit` pairs' lengths, and where they came from: the shared file tokenised
    here, else the table."""
    if C.HH_PATH.exists():
        try:
            return hh_lengths(limit), f"{C.HH_PATH.name} tokenised here"
        except (FileNotFoundError, OSError, ImportError) as e:  # no embedded SmolLM2 on this machine
            print(f"  HH file here but no SmolLM2 tokenizer ({e}): lengths from {LENGTHS.name}")
    with open(LENGTHS) as f:
        rows = json.load(f)["pairs"][:limit]
    return [tuple(row) for row in rows], f"{LENGTHS.name} (HH-RLHF lengths; no data folder here)"


def make_pairs(lengths, vocab: int, seed: int = 0) -> list:
    """EncodedPairs of random ids with exactly these lengths: a shared prefix, then chosen ids
    even and rejected ids odd, so the sides part right after it. The pad id, `vocab - 1`, is never drawn."""
    import numpy as np

    from mars.data.format import EncodedPair

    rng = np.random.default_rng(seed)
    pairs = []
    for i, (p, c, r) in enumerate(lengths):
        prefix = rng.integers(0, vocab - 1, p).tolist()
        chosen = (2 * rng.integers(0, (vocab - 1) // 2, c)).tolist()
        rejected = (2 * rng.integers(0, (vocab - 2) // 2, r) + 1).tolist()
        pairs.append(EncodedPair(i, prefix + chosen, prefix + rejected))
    return pairs


def split(pairs: list, per_batch: int, steps: int, eval_pairs: int) -> tuple[list, list]:
    """The first `steps` batches of mars's seeded, length-grouped training sampler over the pairs,
    and `eval_pairs` others for the prediction pass."""
    import numpy as np

    from mars.data.batch import PairBatchSampler

    sampler = PairBatchSampler([e.length for e in pairs], per_batch, shuffle=True, seed=0)
    batches = [[pairs[i] for i in batch] for batch in list(sampler)[:steps]]
    trained = {e.index for batch in batches for e in batch}
    others = [pairs[i] for i in np.random.default_rng(1).permutation(len(pairs)) if i not in trained]
    return batches, others[:eval_pairs]


def stand_in_tokenizer(vocab: int):
    """A tokenizer of two tokens, the pad (`vocab - 1`) and EOS (`vocab - 2`): what mars's model
    builder and TRL read from one (pad id, length, vocabulary), without a download."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": vocab - 1, "<eos>": vocab - 2}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(words, unk_token="<pad>")),
                                   pad_token="<pad>", eos_token="<eos>")


class Encoded:
    """The scorer's formatter for pairs that are token ids already (indexed by their place, as
    `PairFormatter.encode` indexes them)."""

    @staticmethod
    def encode(pairs):
        return [dataclasses.replace(e, index=i) for i, e in enumerate(pairs)]


def collator(mode: str, pad_id: int):
    from mars.data.batch import Collator, PackedCollator, PrefixSharedCollator

    return {"padded": Collator(pad_id), "packed": PackedCollator(), "prefix_shared": PrefixSharedCollator()}[mode]


# ---------------------------------------------------------------------------------------------
# Work and FLOPs

def triangle(n):
    return n * (n + 1) // 2


def batch_work(batch: dict) -> dict:
    """Pairs, token slots run (padding included), and tokens and causal attention pairs counted
    two ways: both sequences of each pair in full, and as the batch needs them (prefix once)."""
    if "segments" in batch:
        p, c, r = batch["segments"].long().T
        full = int((2 * p + c + r).sum()), int((triangle(p + c) + triangle(p + r)).sum())
        needed = int((p + c + r).sum()), int((triangle(p + c) + r * p + triangle(r)).sum())
    else:
        lengths = (batch["seq_lengths"] if "seq_lengths" in batch else batch["attention_mask"].sum(1)).long()
        full = needed = int(lengths.sum()), int(triangle(lengths).sum())
    return {"pairs": len(batch["index"]), "tokens": full[0], "attended": full[1], "needed_tokens": needed[0],
            "needed_attended": needed[1], "slots": batch["input_ids"].numel()}


def add_work(works: list[dict]) -> dict:
    return {k: sum(w[k] for w in works) for k in works[0]}


class Flops:
    """A sequence of L tokens: k·(2·N·L + 4·layers·d·L(L+1)/2) FLOPs, N the non-embedding
    parameters, d = heads × head_dim, k = 3 for a training step, 1 for the prediction pass."""

    def __init__(self, model, embeddings, config):
        skip = {id(p) for p in embeddings.parameters()}
        self.params = sum(p.numel() for p in model.parameters())
        self.n = sum(p.numel() for p in model.parameters() if id(p) not in skip)
        heads, self.layers = config.num_attention_heads, config.num_hidden_layers
        self.d = heads * (getattr(config, "head_dim", None) or config.hidden_size // heads)

    def __call__(self, tokens: int, attended: int, passes: int) -> float:
        return passes * (2 * self.n * tokens + 4 * self.layers * self.d * attended)


def rates(work: dict, seconds: float, flops: Flops, passes: int, peak: float | None) -> dict:
    full = flops(work["tokens"], work["attended"], passes)
    needed = flops(work["needed_tokens"], work["needed_attended"], passes)
    return {"seconds": seconds, "pairs": work["pairs"], "pairs_per_s": work["pairs"] / seconds,
            "useful_tokens": work["tokens"], "useful_tokens_per_s": work["tokens"] / seconds,
            "tokens_run": work["needed_tokens"], "slots": work["slots"],
            "padding_fraction": 1 - work["needed_tokens"] / work["slots"],
            "model_flops": full, "model_flops_prefix_once": needed,
            "mfu": full / seconds / peak if peak else None,
            "mfu_prefix_once": needed / seconds / peak if peak else None}


# ---------------------------------------------------------------------------------------------
# Runs

class Bench:
    def __init__(self, args, torch):
        self.args, self.torch = args, torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.cuda = self.device.type == "cuda"
        self.model_dims = TINY_QWEN2 if args.self_test else QWEN2_5_0_5B
        self.tokenizer = stand_in_tokenizer(self.model_dims["vocab_size"])
        self.flops = None  # of the last model built
        self.started = time.perf_counter()

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def autocast(self):
        # bf16 autocast over fp32 weights on the GPU (trainer=gpu's bf16-mixed); fp32 on CPU
        return self.torch.autocast(self.device.type, dtype=self.torch.bfloat16, enabled=self.cuda)

    def over_budget(self) -> bool:
        return time.perf_counter() - self.started > self.args.budget_s

    def backbone(self, attention: str):
        from mars.config import BackboneConfig

        return BackboneConfig(name_or_path="Qwen2.5-0.5B architecture", model_type="qwen2", random_init=True,
                              config_overrides=self.model_dims, attn_implementation=attention, dropout=0.0)

    def release(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()

    def build(self, attention: str):
        """A fresh reward model on the device (the same weights every time), peak memory reset first."""
        from mars.config import FinetuneConfig
        from mars.model.build import build_reward_model

        self.release()
        # each FlexAttention run compiles afresh: past dynamo's recompile limit, the runs' different
        # masks would make it fall back to unfused attention
        if attention == "flex_attention":
            self.torch._dynamo.reset()
        self.torch.manual_seed(0)
        with self.torch.device(self.device):  # weights made on the card, not copied there
            model = build_reward_model(self.backbone(attention), FinetuneConfig(name="full"), self.tokenizer)
        self.flops = Flops(model, model.net.get_input_embeddings(), model.config)
        return model

    def peak_gib(self) -> float | None:
        return self.torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None

    def optimizer(self, model):
        """mars's AdamW (mars.lightning.module): decay on matrices only, not fused under mixed precision."""
        from mars.config import OptimConfig

        cfg = OptimConfig()
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        return self.torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=False)

    def train(self, attention: str, mode: str, batches: list, peak: float | None) -> dict:
        from mars.model.loss import bradley_terry_loss

        torch = self.torch
        model = self.build(attention)
        optimizer = self.optimizer(model)
        collate = collator(mode, self.tokenizer.pad_token_id)
        works = [batch_work(collate(items)) for items in batches]  # counted outside the timed steps
        model.train()
        times, losses = [], []
        self.sync()
        last = time.perf_counter()
        for items in batches:
            batch = collate(items)
            with self.autocast():
                rewards, _ = model({k: v.to(self.device, non_blocking=True) for k, v in batch.items()})
            loss = bradley_terry_loss(*rewards.float().chunk(2))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            self.sync()
            now = time.perf_counter()
            times.append(now - last)
            last = now
        w, timed = self.args.warmup, times[self.args.warmup:]
        return {"pass": "train", "framework": "mars", "attention": attention, "mode": mode, "warmup_steps": w,
                "timed_steps": len(timed), "warmup_s": sum(times[:w]), "step_s": sum(timed) / len(timed),
                "step_s_median": C.median(timed), "loss_first": float(losses[0]), "loss_last": float(losses[-1]),
                **rates(add_work(works[w:]), sum(timed), self.flops, 3, peak), "peak_memory_gib": self.peak_gib()}

    def predict(self, mode: str, pairs: list, peak: float | None) -> dict:
        """mars's scorer over the pairs, timed and counted by its own `time` (one warm-up call first)."""
        from mars.model.scoring import Scorer

        a = self.args
        model = self.build("sdpa")
        scorer = Scorer(Encoded(), self.tokenizer.pad_token_id, model, batch_size=a.eval_batch,
                        packing=mode == "packed", max_tokens=a.eval_tokens, device=self.device,
                        prefix_sharing=mode == "prefix_shared")
        with self.autocast():
            scorer.pairs(pairs[: a.eval_batch])
            before = (scorer.time.seconds, scorer.time.slots)
            scorer.pairs(pairs)
        # tokens and attention pairs from one row of all the pairs (as the pass needs them);
        # the slots it ran, padding included, from the scorer
        work = batch_work(collator("prefix_shared" if mode == "prefix_shared" else "packed", 0)(pairs))
        work["slots"] = scorer.time.slots - before[1]
        return {"pass": "predict", "framework": "mars", "attention": "sdpa", "mode": mode,
                "batch": f"{a.eval_batch} pairs" if mode == "padded" else f"{a.eval_tokens} tokens",
                **rates(work, scorer.time.seconds - before[0], self.flops, 1, peak), "peak_memory_gib": self.peak_gib()}


def trl_train(bench: Bench, batches: list, peak: float | None) -> dict:
    """TRL's RewardTrainer on the same network config and pairs (padded; bf16 on the GPU)."""
    torch = bench.torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl.trainer.reward_trainer import DataCollatorForPreference

    from mars.model.backbone import model_config

    class Counting:
        """TRL's collator, keeping each batch's work in the order the steps take them."""

        def __init__(self):
            self.inner, self.works = DataCollatorForPreference(pad_token_id=bench.tokenizer.pad_token_id), []

        def __call__(self, examples):
            out = self.inner(examples)
            self.works.append(batch_work({"index": examples, **out}))
            return out

    class StepEnds(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_train_begin(self, args, state, control, **kwargs):
            bench.sync()
            self.ends.append(time.perf_counter())

        on_step_end = on_train_begin

    bench.release()
    torch.manual_seed(0)
    config = model_config(bench.backbone("sdpa"), bench.tokenizer)
    with torch.device(bench.device):
        model = AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")
    flops = Flops(model, model.get_input_embeddings(), config)
    rows = [{"chosen_ids": e.chosen, "rejected_ids": e.rejected} for batch in batches for e in batch]
    # mars's batches in mars's order, where this transformers has the option
    order = {"train_sampling_strategy": "sequential"} if "train_sampling_strategy" in \
        trl.RewardConfig.__dataclass_fields__ else {}
    collate, steps = Counting(), StepEnds()
    with tempfile.TemporaryDirectory(prefix="mars_gpu_trl_") as out_dir:
        cfg = trl.RewardConfig(
            output_dir=out_dir, per_device_train_batch_size=bench.args.pairs, max_steps=len(batches),
            learning_rate=5e-5, weight_decay=0.01, lr_scheduler_type="constant", max_grad_norm=1.0,
            center_rewards_coefficient=None, gradient_checkpointing=False, disable_dropout=True, max_length=None,
            bf16=bench.cuda, use_cpu=not bench.cuda, report_to=[], save_strategy="no", eval_strategy="no",
            logging_steps=10**6, disable_tqdm=True, dataloader_num_workers=0, seed=0, **order)
        trainer = trl.RewardTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows),
                                    processing_class=bench.tokenizer, data_collator=collate, callbacks=[steps])
        trainer.remove_callback(PrinterCallback)  # its end-of-training metrics line, not ours
        trainer.train()
    w = bench.args.warmup
    times = [b - a for a, b in itertools.pairwise(steps.ends)]
    return {"pass": "train", "framework": f"trl {trl.__version__}", "attention": "sdpa", "mode": "padded",
            "batch_order": "mars's batches, in order" if order else "TRL's random order over the same pairs",
            "optimizer": getattr(cfg.optim, "value", cfg.optim), "warmup_steps": w, "timed_steps": len(times) - w,
            "warmup_s": sum(times[:w]),
            "step_s": sum(times[w:]) / (len(times) - w), "step_s_median": C.median(times[w:]),
            **rates(add_work(collate.works[w:len(times)]), sum(times[w:]), flops, 3, peak),
            "peak_memory_gib": bench.peak_gib()}


# ---------------------------------------------------------------------------------------------
# Report

def card_peak(torch, cli_tflops: float | None, self_test: bool) -> tuple[str, float | None, str]:
    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name() if cuda else f"CPU ({C.machine()['cpu'] or 'unknown'})"
    if cli_tflops:
        return name, cli_tflops * 1e12, "--peak-tflops"
    for pattern, peak in PEAK_BF16 if cuda else ():
        if re.search(pattern, name):
            return name, peak, f"dense bf16 datasheet peak, /{pattern}/"
    if self_test:  # so that the MFU path runs: not a figure of this CPU
        return name, 1e12, "nominal 1 TFLOP/s (self-test)"
    return name, None, "card not in PEAK_BF16: pass --peak-tflops for MFU"


def versions(torch) -> dict:
    import transformers

    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
           "python": sys.version.split()[0]}
    for name in ("trl", "flash_attn"):
        try:
            out[name] = importlib.import_module(name).__version__
        except ImportError:
            out[name] = None
    return out


def fmt(x, spec: str, scale: float = 1.0) -> str:
    return "—" if x is None else format(x * scale, spec)


COLUMNS = ("pass", "attention", "batches", "step ms", "pairs/s", "useful tok/s", "MFU", "MFU prefix once", "padding",
           "peak GiB")


def table(result: dict) -> str:
    v, m, s = result["versions"], result["model"], result["setup"]
    lines = [f"## mars on {result['card']}", "",
             (f"Peak {fmt(result['peak_flops'], '.0f', 1e-12)} TFLOP/s ({result['peak_source']}). torch {v['torch']} "
             f"(CUDA {v['cuda'] or '—'}), transformers {v['transformers']}, flash-attn {v['flash_attn'] or '—'}, "
             f"trl {v['trl'] or '—'}. {m.get('name')}: {m.get('params', 0):,} parameters, "
             f"{m.get('non_embedding_params', 0):,} non-embedding. {s['pairs_per_step']} pairs a step, "
             f"{s['warmup_steps']} warm-up + {s['timed_steps']} timed steps; prediction over {s['eval_pairs']} pairs; "
             f"{s['precision']}. Lengths: {result['data']['source']}."), "",
             "| " + " | ".join(COLUMNS) + " |", "| --- | --- | --- |" + " ---: |" * (len(COLUMNS) - 3)]
    for r in result["runs"]:
        lines.append(f"| {r['pass']} ({r['framework']}) | {r['attention']} | {r['mode']} | "
                     f"{fmt(r.get('step_s'), '.1f', 1e3)} | {r['pairs_per_s']:.1f} | {r['useful_tokens_per_s']:,.0f} | "
                     f"{fmt(r['mfu'], '.1%')} | {fmt(r['mfu_prefix_once'], '.1%')} | {r['padding_fraction']:.1%} | "
                     f"{fmt(r['peak_memory_gib'], '.1f')} |")
    for kind, rows in (("skipped", result["skipped"]), ("error", result["errors"])):
        for r in rows:
            lines.append(f"| {r['pass']} | {r['attention']} | {r['mode']} | {kind}: {r['why'][:160]} |" + " |" * 6)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------

def main() -> int:
    ap = C.arg_parser(__doc__)
    ap.add_argument("--self-test", action="store_true",
                    help="CPU: tiny model, a few steps, every path but the GPU-only ones (the same as --quick)")
    ap.add_argument("--pairs", type=int, default=16, help="pairs per training step")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (FlexAttention compiles in them)")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps")
    ap.add_argument("--eval-pairs", type=int, default=1024, help="pairs of the prediction pass")
    ap.add_argument("--eval-batch", type=int, default=64, help="pairs per padded prediction batch")
    ap.add_argument("--eval-tokens", type=int, default=32768,
                    help="tokens per packed or prefix-shared prediction batch")
    ap.add_argument("--attention", nargs="+", choices=ATTENTIONS,
                    help="default: all (FlexAttention on a GPU only, flash-attention where flash_attn imports)")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--no-trl", action="store_true", help="skip TRL even where it imports")
    ap.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak, for a card not in PEAK_BF16")
    ap.add_argument("--budget-s", type=float, default=390, help="start no run after this many seconds")
    ap.add_argument("--write-lengths", metavar="PATH", help=f"write the HH length table ({LENGTHS.name}) and stop")
    args = C.parse(ap)
    args.self_test = args.self_test or args.quick
    if args.self_test:
        args.pairs, args.warmup, args.steps = 4, 1, 2
        args.eval_pairs, args.eval_batch, args.eval_tokens = 24, 8, 4096
    C.quiet_logging()
    if args.write_lengths:
        write_lengths(args.write_lengths)
        return 0
    import torch

    if args.self_test and not args.threads:  # a tiny model: more threads only wait on each other
        torch.set_num_threads(1)
    bench = Bench(args, torch)
    card, peak, peak_source = card_peak(torch, args.peak_tflops, args.self_test)
    v = versions(torch)
    print(f"gpu bench: {card}, peak {fmt(peak, '.0f', 1e-12)} TFLOP/s ({peak_source})", flush=True)
    # the self-test's few steps need few pairs: the first 64 (tokenising all takes seconds)
    lengths, source = load_lengths(64 if args.self_test else None)
    pairs = make_pairs(lengths, bench.model_dims["vocab_size"])
    batches, eval_pairs = split(pairs, args.pairs, args.warmup + args.steps, args.eval_pairs)
    result = {"card": card, "device": str(bench.device), "peak_flops": peak, "peak_source": peak_source, "versions": v,
              "data": {"source": source, "pairs": len(pairs),
                       "mean_lengths": dict(zip(("shared_prefix", "chosen_rest", "rejected_rest"),
                                                (sum(x) / len(x) for x in zip(*lengths, strict=True)), strict=True))},
              "setup": {"pairs_per_step": args.pairs, "warmup_steps": args.warmup, "timed_steps": args.steps,
                        "eval_pairs": len(eval_pairs), "eval_batch": args.eval_batch, "eval_tokens": args.eval_tokens,
                        "precision": "bf16 autocast, fp32 weights and AdamW (bf16-mixed)" if bench.cuda else
                                     "fp32 (CPU)",
                        "recipe": "Bradley-Terry loss, clipping at 1.0, AdamW at a constant learning rate",
                        "flops": " ".join(Flops.__doc__.split()), "step": "step end to step end after "
                        "synchronize: collation, copy, forward, backward, clipping, AdamW"},
              "model": {}, "runs": [], "skipped": [], "errors": [], "seconds": None}

    def save() -> None:
        if bench.flops and not result["model"]:
            f = bench.flops
            result["model"] = {"name": "tiny qwen2 (random init)" if args.self_test else
                               "Qwen2.5-0.5B architecture (random init)", "config": bench.model_dims,
                               "params": f.params, "non_embedding_params": f.n, "layers": f.layers,
                               "attention_width": f.d}
        result["seconds"] = time.perf_counter() - bench.started
        C.write_json(args.json, result)

    def skip(kind: str, attention: str, mode: str, why: str) -> None:
        result["skipped"].append({"pass": kind, "attention": attention, "mode": mode, "why": why})

    def record(kind: str, attention: str, mode: str, run, *run_args) -> None:
        tag = f"{kind} {attention} {mode}"
        if bench.over_budget():
            print(f"  [{tag}] skipped: past --budget-s {args.budget_s:.0f}", flush=True)
            return skip(kind, attention, mode, f"past --budget-s {args.budget_s:.0f}")
        t0 = time.perf_counter()
        try:
            r = run(*run_args)
        except Exception as e:  # one failing run (a kernel, memory) must not lose the others
            why = f"{type(e).__name__}: {e}"
            result["errors"].append({"pass": kind, "attention": attention, "mode": mode, "why": why})
            print(f"  [{tag}] error: {why[:600]}", flush=True)
        else:
            result["runs"].append(r)
            print(f"  [{tag}] {time.perf_counter() - t0:.1f} s: {r['pairs_per_s']:.1f} pairs/s, "
                  f"{r['useful_tokens_per_s']:,.0f} useful tok/s, MFU {fmt(r['mfu'], '.1%')}, "
                  f"peak {fmt(r['peak_memory_gib'], '.1f')} GiB", flush=True)
        bench.release()
        save()

    attentions = args.attention or list(ATTENTIONS)
    cannot = {"flex_attention": None if bench.cuda else "CPU: FlexAttention has no backward there (and compiles ~30 s)",
              "flash_attention_2": None if bench.cuda and v["flash_attn"] else
              "needs CUDA, and flash_attn does not import"}
    # cheap and sure first; FlexAttention, which compiles, last. The prediction pass and TRL run SDPA.
    for phase in ("sdpa", "predict", "flash_attention_2", "trl", "flex_attention"):
        if phase == "predict" and "sdpa" in attentions:
            for mode in args.modes:
                record("predict", "sdpa", mode, bench.predict, mode, eval_pairs, peak)
        elif phase == "trl" and "sdpa" in attentions and "padded" in args.modes:
            if args.no_trl or not v["trl"]:
                skip("train (trl)", "sdpa", "padded", "--no-trl" if args.no_trl else "trl does not import")
            else:
                record("train (trl)", "sdpa", "padded", trl_train, bench, batches, peak)
        elif phase in attentions:
            for mode in args.modes:
                if cannot.get(phase):
                    skip("train", phase, mode, cannot[phase])
                elif phase == "flash_attention_2" and mode == "prefix_shared":
                    skip("train", phase, mode, "flash-attention cannot keep the two sides apart (mars: ConfigError)")
                else:
                    record("train", phase, mode, bench.train, phase, mode, batches, peak)
    save()
    print()
    print(table(result))
    print(f"\nSUMMARY gpu: {card}: {len(result['runs'])} runs, {len(result['skipped'])} skipped, "
          f"{len(result['errors'])} errors, {result['seconds']:.0f} s" + (f"; JSON {args.json}" if args.json else ""))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
