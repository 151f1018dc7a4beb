"""Shared helpers of the benchmarks (not part of the package or the test suite).

Every benchmark composes the *real* Hydra config (`conf/`) the way `tests/conftest.py` does,
runs the real code path (`mars.cli.train.train`, `MarsLoop.next_training_set`,
`mars.model.scoring.Scorer`) and measures it through public hooks only, never by wrapping or
replacing mars's functions: Lightning callbacks for epoch timing and token counts, the round's
own timing in the loop's report (`loop.last_report["seconds"]`), the scorer's accumulated
`scorer.time`, wall clocks around public calls, a psutil thread for memory, `os.getloadavg()` at
the start and end of every measurement.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

import lightning as L

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")

os.environ.setdefault("MARS_DATA_DIR", str(ROOT.parent / "shared" / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

DATA_DIR = Path(os.environ["MARS_DATA_DIR"])
HH_PATH = DATA_DIR / "hh-rlhf" / "harmless-base-test.jsonl.gz"
PKU_PATH = DATA_DIR / "pku-saferlhf" / "safer-vs-unsafe-5k.json"


# ---------------------------------------------------------------------------------------------
# Machine, load, statistics

def loadavg() -> tuple[float, float, float]:
    return tuple(round(x, 2) for x in os.getloadavg())


def fmt_load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.2f}" for x in load)


def machine() -> dict:
    import torch

    model = platform.processor() or ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version()}


def print_machine() -> dict:
    m = machine()
    print(f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
          f"python {m['python']}")
    return m


def arg_parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's parser with the flags they all take: --quick, --json, --threads."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    ap.add_argument("--json", help="write every figure here")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads (0: torch's default, one per core). With other work "
                         "on the machine, 2 OpenMP threads on 2 shared cores wait on each other at every "
                         "parallel region; 1 thread then measures more steadily")
    return ap


def parse(ap: argparse.ArgumentParser) -> argparse.Namespace:
    """The arguments, with torch's threads set in this process and (OMP_NUM_THREADS) its children."""
    args = ap.parse_args()
    if args.threads > 0:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    return args


def begin() -> tuple[float, float, float]:
    """Quiet logs, print the machine; the loadavg at the start."""
    quiet_logging()
    print_machine()
    return loadavg()


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


class Measure:
    """`with Measure("name") as m:` wall time (perf_counter), this process's CPU time (all its
    threads, `time.process_time`) and loadavg at start and end."""

    def __init__(self, name: str = "", quiet: bool = False):
        self.name, self.quiet = name, quiet

    def __enter__(self):
        self.load_start = loadavg()
        self.c0 = time.process_time()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self.cpu_seconds = time.process_time() - self.c0
        self.load_end = loadavg()
        if not self.quiet and self.name:
            print(f"  [{self.name}] {self.seconds:.2f} s; loadavg start {fmt_load(self.load_start)}, "
                  f"end {fmt_load(self.load_end)}", flush=True)
        return False


# ---------------------------------------------------------------------------------------------
# Memory: RSS high-water mark

class RSSPeak:
    """Samples this process's RSS every `interval` s in a thread (psutil): the peak of a window.

    `ru_maxrss` (getrusage) is a process-lifetime high-water mark that cannot be reset, so the
    window's own peak comes from sampling; `ru_maxrss` is reported beside it.
    """

    def __init__(self, interval: float = 0.01):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.start_rss = self.peak = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self.start_rss = self.peak = self.proc.memory_info().rss
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.interval)

    def stop(self) -> dict:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        return {"rss_start_mib": self.start_rss / 2**20, "rss_peak_mib": self.peak / 2**20,
                "rss_delta_mib": (self.peak - self.start_rss) / 2**20,
                "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# ---------------------------------------------------------------------------------------------
# Data

def hh_pairs():
    """The shared HH-RLHF pairs as mars reads them (4 records with an empty response skipped)."""
    from mars.data.sources import load_pairs

    return load_pairs("hh_rlhf", path=str(HH_PATH), on_error="skip").pairs


def hh_raw_rows() -> list[dict]:
    with gzip.open(HH_PATH, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def raw_row_of(pair, rows: list[dict]) -> dict:
    """The original `{"chosen", "rejected"}` dialogue strings of a pair loaded by `hh_pairs()`."""
    return rows[int(pair.id.rsplit("-", 1)[1])]


def write_hh_jsonl_gz(rows: list[dict], path: Path) -> str:
    """HH-format rows to a temporary file (outside the repository), for `data.path=`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"chosen": r["chosen"], "rejected": r["rejected"]}) + "\n")
    return str(path)


# ---------------------------------------------------------------------------------------------
# The real config

def compose(overrides: list[str], output_dir: Path, name: str = "train"):
    """`conf/train.yaml` composed with `overrides` (as the tests do), paths in `output_dir`."""
    from mars.cli.runtime import compose_run_config

    return compose_run_config(name, overrides, output_dir, DATA_DIR)


# Quiet, single-process runs: no progress bar / model summary printing (same for TRL: disable_tqdm).
QUIET = ["++trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false"]


def quiet_logging() -> None:
    import logging
    import warnings

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "mars",
                 "transformers", "datasets", "trl", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    try:
        import datasets

        datasets.disable_progress_bars()
    except Exception:
        pass


# ---------------------------------------------------------------------------------------------
# Lightning callbacks: epoch and round timers

def batch_tokens(batch: dict) -> tuple[int, int]:
    """(non-padding tokens, token slots) of a batch. Padded batches: the attention mask's sum and
    size. Packed batches (`data.packing`: one row, `seq_lengths`) have no padding: both are
    `input_ids.numel()`. Prefix-shared batches (`segments`) too: their tokens are those computed,
    each shared prefix once (`useful_tokens` counts it twice, as a trainer without sharing does)."""
    if "seq_lengths" in batch or "segments" in batch:
        n = int(batch["input_ids"].numel())
        return n, n
    mask = batch["attention_mask"]
    return int(mask.sum()), int(mask.numel())


def useful_tokens(batch: dict) -> int:
    """Both sequences of every pair in a batch, each counted whole (as TRL counts them)."""
    if "segments" in batch:
        prefix, chosen, rejected = batch["segments"].long().sum(0).tolist()
        return 2 * prefix + chosen + rejected
    return batch_tokens(batch)[0]


class EpochTimer(L.Callback):
    """A Lightning callback timing every training epoch, validation excluded, and counting tokens.

    Per epoch: `train_s` = on_train_epoch_start → on_train_epoch_end minus the validation that
    Lightning runs inside that window. It includes data loading/collation, forward, backward,
    optimiser and scheduler steps and per-step logging; it excludes model loading, tokenisation
    (done once in `setup`), and everything between two epochs: the module's epoch-end metrics and
    the next epoch's `train_dataloader()`, where the MARS round is built (see `RoundTimer`). Also:
    pairs, sequences, non-padding (computed), useful (`useful_tokens`) and
    padded token counts, loadavg at the epoch's start and end. With `memory=True` an RSS sampler
    runs from on_train_start to on_train_end.
    """

    def __init__(self, memory: bool = False):
        self.epochs: list[dict] = []
        self._cur: Optional[dict] = None
        self._val_t0 = None
        self.memory = RSSPeak() if memory else None
        self.memory_result: dict = {}
        self.train_window_s = None

    def on_train_start(self, trainer, pl_module):
        import torch

        self.threads = torch.get_num_threads()
        self._t_start = time.perf_counter()
        if self.memory:
            self.memory.start()

    def on_train_end(self, trainer, pl_module):
        self.train_window_s = time.perf_counter() - self._t_start
        if self.memory:
            self.memory_result = self.memory.stop()

    def on_train_epoch_start(self, trainer, pl_module):
        self._cur = {"epoch": trainer.current_epoch, "t0": time.perf_counter(), "c0": time.process_time(),
                     "val_s": 0.0, "val_cpu_s": 0.0,
                     "pairs": 0, "tokens": 0, "useful": 0, "padded": 0, "batches": 0, "load_start": loadavg()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        tokens, slots = batch_tokens(batch)
        self._cur["pairs"] += int(batch["index"].numel())
        self._cur["tokens"] += tokens
        self._cur["useful"] += useful_tokens(batch)
        self._cur["padded"] += slots
        self._cur["batches"] += 1

    def on_validation_start(self, trainer, pl_module):
        if self._cur is not None and not trainer.sanity_checking:
            self._val_t0 = time.perf_counter()
            self._val_c0 = time.process_time()

    def on_validation_end(self, trainer, pl_module):
        if self._val_t0 is not None and self._cur is not None:
            self._cur["val_s"] += time.perf_counter() - self._val_t0
            self._val_t0 = None

    def on_train_epoch_end(self, trainer, pl_module):
        cur = self._cur
        cur["t1"] = time.perf_counter()
        cur["train_s"] = cur["t1"] - cur["t0"] - cur["val_s"]
        cur["train_cpu_s"] = time.process_time() - cur["c0"] - cur["val_cpu_s"]
        cur["load_end"] = loadavg()
        cur["pad_fraction"] = 1 - cur["tokens"] / max(1, cur["padded"])
        self.epochs.append(cur)
        self._cur = None


def find_callback(trainer, cls):
    return next(c for c in trainer.callbacks if isinstance(c, cls))


class RoundTimer(L.Callback):
    """The MARS round of every training epoch, read through public hooks (nothing is wrapped).

    At `on_train_epoch_start`, which Lightning calls after the epoch's `train_dataloader()` has
    built its round (and after mars's RoundReporter, the first callback, has written it):

    - `round_s`, `prediction_pass_s`: the round's own timing from the loop's report,
      `trainer.datamodule.loop.last_report["seconds"]` (`MarsLoop.build_round`: prediction pass,
      allocation, augmentation, D^t; 0 for warm-up and plain epochs, which build no round);
    - `scoring_s`, `scored_rows`: what the loop's scorer spent since the previous epoch
      (`loop.scorer.time`, accumulated by the scorer itself);
    - `boundary_s`, `boundary_cpu_s`: wall clock and CPU time from this callback's previous
      `on_train_epoch_end` to this `on_train_epoch_start`, i.e. everything between two epochs as a
      whole: the module's epoch-end metrics, `train_dataloader()` (the round, the held-out leak
      check and digest of D^t, tokenising D^t, the loader), Lightning's loader set-up (its first
      batch prefetched), the round's JSON, PNG and logger metrics, and a checkpoint if one is saved
      at epoch end (benchmarks timing this pass `NO_CHECKPOINTS`). None for the first epoch, whose
      loader is built before `on_train_start`. `boundary_window` is its (start, end) perf_counter.

    `fresh` keeps (report, detail) of every newly built round, as RoundReporter hands them to
    `mars.lightning.rounds.write_round`, so a benchmark can time that public call on its own.
    """

    def __init__(self):
        self.rounds: list[dict] = []
        self.fresh: list[tuple[dict, dict]] = []
        self._end: Optional[tuple[float, float]] = None
        self._scored = (0.0, 0)

    def on_train_epoch_end(self, trainer, pl_module):
        self._end = (time.perf_counter(), time.process_time())

    def on_train_epoch_start(self, trainer, pl_module):
        now = (time.perf_counter(), time.process_time())
        loop = trainer.datamodule.loop
        report = loop.last_report or {}
        seconds = report.get("seconds") or {}
        spent = (loop.scorer.time.seconds, loop.scorer.time.rows) if loop.scorer is not None else (0.0, 0)
        self.rounds.append({
            "epoch": trainer.current_epoch, "round_s": seconds.get("round", 0.0),
            "prediction_pass_s": seconds.get("prediction_pass", 0.0),
            "scoring_s": spent[0] - self._scored[0], "scored_rows": spent[1] - self._scored[1],
            "boundary_s": now[0] - self._end[0] if self._end else None,
            "boundary_cpu_s": now[1] - self._end[1] if self._end else None,
            "boundary_window": (self._end[0], now[0]) if self._end else None,
            "report": {k: v for k, v in report.items() if isinstance(v, (int, float, bool))}})
        if seconds and loop.history:  # a round built for this epoch (not a warm-up, not restored)
            self.fresh.append((report, loop.history[-1]))
        self._scored, self._end = spent, None


# Config overrides of a run timed by `RoundTimer`: the callback, and no checkpoint saved between
# epochs (it would fall inside the epoch boundary).
ROUND_TIMER = ["+callbacks.bench_rounds._target_=_common.RoundTimer"]
NO_CHECKPOINTS = ["++trainer.enable_checkpointing=false"]


def non_embedding_params(model) -> int:
    """Parameters outside the embedding tables (word, position, token type)."""
    total = 0
    for name, p in model.named_parameters():
        if "embeddings" in name and "LayerNorm" not in name:
            continue
        total += p.numel()
    return total


def write_json(path: Optional[str], obj) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            json.dump(obj, f, indent=2, default=str)
