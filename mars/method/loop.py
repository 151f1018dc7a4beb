"""The MARS self-refinement loop (docs/method.md §2): one round per training epoch.

    margins  = scorer(D₀)                        # prediction pass, model of round t−1
    probs    = exp(−τ·s(Δ)) / Σ                  # the allocator
    budget   = largest_remainder(probs, B^t)     # Σ b_i = B^t exactly
    variants = augmenter(requests for b_i > 0)   # cached, label-preserving
    D^t      = D^{t−1} ∪ D_syn^t  (or D₀ ∪ D_syn^t)

`MarsLoop.build_round` is that whole round. Plain Python: its collaborators are handed in (a
scorer of pairs, a distributed context), so it runs without Lightning; the DataModule asks it for
each epoch's D^t through `next_training_set`.

Contract: `start` once with the training pairs (D₀, prepared by the augmenter on rank 0) and the
held-out splits; then `next_training_set(epoch)` at the start of every epoch, in order; the
scorer must give identical margins on every rank (mars.model.scoring does).
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from mars.allocators.base import Allocator
from mars.augmenters.base import Augmenter, VariantRequest
from mars.augmenters.none import NoAugmenter
from mars.config import ConfigError, LoopConfig
from mars.data.records import PreferencePair
from mars.data.splits import check_no_heldout_leak
from mars.distributed import LOCAL, Distributed
from mars.method.report import Key, round_report
from mars.model.scoring import Scorer

log = logging.getLogger(__name__)


def variant_counts(b: int) -> tuple[int, int]:
    """Smallest balanced (n⁺, n⁻) with (n⁺+1)(n⁻+1) − 1 ≥ b."""
    n_pos = n_neg = 0
    while (n_pos + 1) * (n_neg + 1) - 1 < b:
        n_pos, n_neg = (n_pos + 1, n_neg) if n_pos == n_neg else (n_pos, n_neg + 1)
    return n_pos, n_neg


def pairs_digest(pairs: list[PreferencePair]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in pairs:
        h.update(p.id.encode()), h.update(p.content_hash().encode())
    return h.hexdigest()


@dataclass
class MarsLoop:
    cfg: LoopConfig
    allocator: Allocator
    augmenter: Augmenter
    scorer: Optional[Scorer] = None  # the model of the round: Δ of any pairs, identical on every rank
    seed: int = 0
    dist: Distributed = LOCAL  # rank 0 generates, every rank receives
    base: list[PreferencePair] = field(default_factory=list)
    synthetic: list[PreferencePair] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)  # one report (with its per-pair detail) per round
    heldout: dict[str, list[PreferencePair]] = field(default_factory=dict)
    last_report: dict = field(default_factory=dict)  # the report of the latest next_training_set

    def __post_init__(self) -> None:
        if self.allocator.spends_budget and isinstance(self.augmenter, NoAugmenter):
            raise ConfigError(f"{type(self.allocator).__name__} spends a budget of synthetic pairs but "
                             "augmenter=none makes none: choose augmenter=eda (or paraphrase, llm_rewrite, "
                             "semantic), or allocator=none")

    @property
    def active(self) -> bool:
        return self.allocator.spends_budget

    def start(self, train: list[PreferencePair], heldout: dict[str, list[PreferencePair]]) -> list[PreferencePair]:
        """D₀ from the training split, as the augmenter prepares it (on rank 0, for every rank)."""
        self.base = self.dist.on_rank0(lambda: self.augmenter.prepare(train))
        self.heldout = heldout
        return self.base

    def training_set(self) -> list[PreferencePair]:
        return self.base + self.synthetic

    def round_of_epoch(self, epoch: int) -> int:
        """Round t ≥ 1 for epochs after the warm-up; 0 for warm-up epochs (D₀ only)."""
        return max(0, epoch - self.cfg.warmup_epochs + 1) if self.active else 0

    def planned_size(self, epoch: int) -> int:
        """|D^t| that epoch `epoch` will train on if every variant is delivered."""
        t = self.round_of_epoch(epoch)
        if t == 0:
            return len(self.base)
        added = sum(self.cfg.budget_for(s) for s in range(1, t + 1)) if self.cfg.accumulate else self.cfg.budget_for(t)
        return len(self.base) + added

    def next_training_set(self, epoch: int) -> list[PreferencePair]:
        """D^t of `epoch`: its round built, checked against the held-out splits and across ranks."""
        report = self.build_round(epoch)
        if report.get(Key.SYNTHETIC_ADDED):  # no augmentation of a held-out pair is ever trained on
            check_no_heldout_leak(self.synthetic, self.heldout)
        pairs = self.training_set()
        digests = set(self.dist.gather(pairs_digest(pairs)))
        if len(digests) != 1:
            raise RuntimeError(f"ranks built different training sets at epoch {epoch}: {digests}")
        self.last_report = {**report, Key.DIGEST: digests.pop()}
        return pairs

    def build_round(self, epoch: int) -> dict:
        """Grow D^t for `epoch` from the current model's margins; returns the round's report."""
        t = self.round_of_epoch(epoch)
        if t == 0:
            return {Key.ROUND: 0, Key.WARMUP: self.active, Key.TRAIN_PAIRS: len(self.training_set())}
        if self.history and self.history[-1][Key.ROUND] >= t:
            # Resumed from a checkpoint written after this round was built (Lightning saves at
            # validation end, before the epoch counts as finished): D^t is already the restored one.
            return {Key.ROUND: t, Key.WARMUP: False, Key.RESUMED: True, Key.TRAIN_PAIRS: len(self.training_set())}
        started, rng = time.perf_counter(), np.random.default_rng([self.seed, t])
        scores = self.scorer.pairs(self.base, features=True)                           # prediction pass
        scored = time.perf_counter()
        budget = self._allocate(scores, self.cfg.budget_for(t), rng)                    # probabilities → budget
        before = dict(self.augmenter.stats)
        new = self._synthesise(t, budget, rng)                                         # variants
        self.synthetic = (self.synthetic + new) if self.cfg.accumulate else new        # D^t
        stats = {k: v - before.get(k, 0) for k, v in self.augmenter.stats.items()}
        report, detail = round_report(t, epoch, self.base, new, self.synthetic, budget, scores, stats,
                                      self.cfg.fisher_bins, self.cfg.fisher_dim)
        self.history.append({**report, **detail})
        # Timings for benchmarks, nested: the flat round/... metrics stay those of the method.
        return {**report, Key.SECONDS: {"prediction_pass": scored - started, "round": time.perf_counter() - started}}

    def _allocate(self, scores, budget: int, rng: np.random.Generator) -> np.ndarray:
        """b_i of every base pair; none for a pair truncation made uninformative (its Δ is 0 by
        construction, not by the model: it would draw budget as the hardest pair, and so would
        its variants)."""
        keep = ~scores.uninformative
        allocation = np.zeros(len(scores.margins), dtype=np.int64)
        if keep.any():
            allocation[keep] = self.allocator.allocate(scores.margins[keep], budget, rng)
        return allocation

    def _requests(self, budget: np.ndarray) -> tuple[list[int], list[VariantRequest]]:
        """Variant requests of every pair with b_i > 0: chosen, rejected (and prompt) per pair."""
        pool = self.cfg.crossing == "pool" or self.allocator.pools_variants
        chosen_ids, requests = [], []
        for i in np.flatnonzero(budget):
            p, b = self.base[i], int(budget[i])
            n_pos, n_neg = (self.cfg.pool_size, self.cfg.pool_size) if pool else variant_counts(b)
            chosen_ids.append(int(i))
            requests += [VariantRequest(p.chosen, "chosen", p.prompt, p.rejected, n_pos),
                         VariantRequest(p.rejected, "rejected", p.prompt, p.chosen, n_neg)]
            if self.cfg.vary_prompt:
                requests.append(VariantRequest(p.prompt, "prompt", "", "", self.cfg.pool_size))
        return chosen_ids, requests

    def _synthesise(self, t: int, budget: np.ndarray, rng: np.random.Generator) -> list[PreferencePair]:
        ids, requests = self._requests(budget)
        variants = self.dist.on_rank0(lambda: self.augmenter.augment(requests))
        per = 3 if self.cfg.vary_prompt else 2
        candidates: list[list[PreferencePair]] = []
        for k, i in enumerate(ids):
            p = self.base[i]
            pos, neg = [p.chosen] + variants[per * k], [p.rejected] + variants[per * k + 1]
            prompts = [p.prompt] + (variants[per * k + 2] if self.cfg.vary_prompt else [])
            cands = self.allocator.candidates(p.prompt, pos, neg)
            if cands is None and self.cfg.crossing == "pool":
                cands = [(prompts[rng.integers(len(prompts))], a, b) for a in pos[1:] for b in neg[1:]]
            elif cands is None:
                cands = [(p.prompt, a, b) for a in pos for b in neg][1:]  # all but the original pair
            own = {"margin": p.meta["margin"]} if "margin" in p.meta else {}  # a variant keeps its source's
            candidates.append([PreferencePair(f"{p.id}~t{t}~{j}", x, a, b, p.source,
                                              {"base_id": p.id, "base_index": i, "round": t, **own})
                               for j, (x, a, b) in enumerate(cands)])
        chosen = self.allocator.choose(candidates, [int(budget[i]) for i in ids], rng, self.scorer)
        return [c for pairs in chosen for c in pairs]

    def state_dict(self) -> dict:
        as_dict = lambda p: {"id": p.id, "prompt": p.prompt, "chosen": p.chosen,  # noqa: E731
                             "rejected": p.rejected, "source": p.source, "meta": p.meta}
        return {"synthetic": [as_dict(p) for p in self.synthetic], "history": self.history, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """The checkpoint's D^t and history; its synthetic pairs must derive from this run's D₀."""
        synthetic = [PreferencePair(**p) for p in state["synthetic"]]
        index = {p.id: i for i, p in enumerate(self.base)}
        stray = [p for p in synthetic if index.get(p.meta.get("base_id"), -1) != p.meta.get("base_index")]
        if stray:
            raise ConfigError(f"the D^t restored from the checkpoint has {len(stray)} of {len(synthetic)} synthetic "
                             f"pairs whose base pair is not this run's (e.g. {stray[0].id}, base_id "
                             f"{stray[0].meta.get('base_id')!r}): it was built on other data; resume a checkpoint of "
                             "this data and loop configuration, or start afresh without ckpt_path")
        self.synthetic, self.history, self.seed = synthetic, state["history"], state["seed"]
