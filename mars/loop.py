"""The MARS self-refinement loop (method.md §2): one round per training epoch.

    margins  = scorer(D₀)                        # prediction pass, model of round t−1
    probs    = exp(−τ·s(Δ)) / Σ                  # the allocator
    budget   = largest_remainder(probs, B^t)     # Σ b_i = B^t exactly
    variants = augmenter(requests for b_i > 0)   # cached, label-preserving
    D^t      = D^{t−1} ∪ D_syn^t  (or D₀ ∪ D_syn^t)

`MarsLoop.build_round` is that whole loop; the DataModule calls it once per epoch.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from mars.allocators.base import Allocator
from mars.augmenters.base import Augmenter, VariantRequest
from mars.config import LoopConfig
from mars.data.records import PreferencePair
from mars.diagnostics import round_report
from mars.model.scoring import Scorer

log = logging.getLogger(__name__)


def variant_counts(b: int) -> tuple[int, int]:
    """Smallest balanced (n⁺, n⁻) with (n⁺+1)(n⁻+1) − 1 ≥ b."""
    n_pos = n_neg = 0
    while (n_pos + 1) * (n_neg + 1) - 1 < b:
        n_pos, n_neg = (n_pos + 1, n_neg) if n_pos == n_neg else (n_pos, n_neg + 1)
    return n_pos, n_neg


@dataclass
class MarsLoop:
    cfg: LoopConfig
    allocator: Allocator
    augmenter: Augmenter
    scorer: Optional[Scorer] = None  # the model of the round: Δ of any pairs, identical on every rank
    seed: int = 0
    base: list[PreferencePair] = field(default_factory=list)
    synthetic: list[PreferencePair] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)  # one report per round
    on_rank0: Callable[[Callable], object] = lambda fn: fn()  # distributed: rank 0 generates, all receive

    def __post_init__(self) -> None:
        from mars.augmenters.none import NoAugmenter

        if self.allocator.spends_budget and isinstance(self.augmenter, NoAugmenter):
            raise ValueError(f"{type(self.allocator).__name__} spends a budget of synthetic pairs but "
                             "augmenter=none makes none: choose augmenter=eda (or paraphrase, llm_rewrite, "
                             "semantic), or allocator=none")

    @property
    def active(self) -> bool:
        return self.allocator.spends_budget

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

    def build_round(self, epoch: int) -> dict:
        """Grow D^t for `epoch` from the current model's margins; returns the round's report."""
        t = self.round_of_epoch(epoch)
        if t == 0:
            return {"round": 0, "warmup": self.active, "train_pairs": len(self.training_set())}
        if self.history and self.history[-1]["round"] >= t:
            # Resumed from a checkpoint written after this round was built (Lightning saves at
            # validation end, before the epoch counts as finished): D^t is already the restored one.
            return {"round": t, "warmup": False, "resumed": True, "train_pairs": len(self.training_set())}
        rng = np.random.default_rng([self.seed, t])
        scores = self.scorer.pairs(self.base, features=True)
        budget = self.allocator.allocate(scores.margins, self.cfg.budget_for(t), rng)
        before = dict(self.augmenter.stats)
        new = self._synthesise(t, budget, rng)
        self.synthetic = (self.synthetic + new) if self.cfg.accumulate else new
        # What was added per pair (the augmenter may deliver fewer variants than b_i): the report
        # says where the round's pairs went; the intended allocation stays beside it.
        added = np.bincount([p.meta["base_index"] for p in new], minlength=len(self.base))
        copies = np.ones(len(self.base))
        for p in self.synthetic:
            copies[p.meta["base_index"]] += 1
        noisy = np.array([bool(p.meta.get("noise", {}).get("selected")) for p in self.base])
        report = {"round": t, "epoch": epoch, "warmup": False, "train_pairs": len(self.training_set()),
                  "synthetic_added": len(new), "synthetic_total": len(self.synthetic),
                  "budget_allocated": int(budget.sum()), "shortfall": int(budget.sum()) - len(new),
                  "shortfall_pairs": int((added < budget).sum()),
                  **{f"augment_{k}": v - before.get(k, 0) for k, v in self.augmenter.stats.items()},
                  **round_report(scores.margins, added, copies, scores.features,
                                 self.cfg.fisher_bins, self.cfg.fisher_dim)}
        if noisy.any():  # data with known flipped labels (robustness studies): where the budget went
            report["budget_on_flipped_fraction"] = float(added[noisy].sum() / max(1, added.sum()))
            report["flipped_fraction"] = float(noisy.mean())
            # How well the margins single out flipped pairs: a model that learnt the true preference
            # mis-ranks flipped pairs (by their recorded label) and few clean ones.
            misranked = scores.margins < 0
            report["misranked_among_flipped"] = float(misranked[noisy].mean())
            report["misranked_among_clean"] = float(misranked[~noisy].mean()) if (~noisy).any() else float("nan")
        self.history.append({**report, "allocation": budget.tolist(), "added": added.tolist(),
                             "margins": scores.margins.tolist()})
        return report

    def _requests(self, budget: np.ndarray) -> tuple[list[int], list[VariantRequest]]:
        """Variant requests of every pair with b_i > 0: chosen, rejected (and prompt) per pair."""
        pool = self.cfg.crossing == "pool" or self.allocator.select != "random"
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
        variants = self.on_rank0(lambda: self.augmenter.augment(requests))
        per = 3 if self.cfg.vary_prompt else 2
        candidates: list[list[PreferencePair]] = []
        for k, i in enumerate(ids):
            p = self.base[i]
            pos, neg = [p.chosen] + variants[per * k], [p.rejected] + variants[per * k + 1]
            prompts = [p.prompt] + (variants[per * k + 2] if self.cfg.vary_prompt else [])
            if self.allocator.select == "best_vs_worst":
                cands = [(p.prompt, a, b) for a in pos + neg for b in pos + neg if a != b]
            elif self.cfg.crossing == "pool":
                cands = [(prompts[rng.integers(len(prompts))], a, b) for a in pos[1:] for b in neg[1:]]
            else:
                cands = [(p.prompt, a, b) for a in pos for b in neg][1:]  # all but the original pair
            own = {"margin": p.meta["margin"]} if "margin" in p.meta else {}  # a variant keeps its source's
            candidates.append([PreferencePair(f"{p.id}~t{t}~{j}", x, a, b, p.source,
                                              {"base_id": p.id, "base_index": i, "round": t, **own})
                               for j, (x, a, b) in enumerate(cands)])
        chosen = self._select(candidates, [int(budget[i]) for i in ids], rng)
        return [c for pairs in chosen for c in pairs]

    def _select(self, candidates, wanted, rng) -> list[list[PreferencePair]]:
        """b_i of each pair's candidates: seeded draw, or by the current model (West-of-N)."""
        if self.allocator.select == "random":
            return [[c[j] for j in sorted(rng.choice(len(c), min(b, len(c)), replace=False))]
                    for c, b in zip(candidates, wanted)]
        flat = [c for cs in candidates for c in cs]
        margins = self.scorer.pairs(flat).margins if flat else np.empty(0)
        out, start = [], 0
        for cs, b in zip(candidates, wanted):
            # Highest margin first: for best_vs_worst, whose candidates hold both orders of every
            # two responses, that is the best response against the worst, then the next widest gap.
            order = np.argsort(-margins[start:start + len(cs)], kind="stable")[:b]
            out.append([cs[j] for j in order])
            start += len(cs)
        return out

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
            raise ValueError(f"the D^t restored from the checkpoint has {len(stray)} of {len(synthetic)} synthetic "
                             f"pairs whose base pair is not this run's (e.g. {stray[0].id}, base_id "
                             f"{stray[0].meta.get('base_id')!r}): it was built on other data; resume a checkpoint of "
                             "this data and loop configuration, or start afresh without ckpt_path")
        self.synthetic, self.history, self.seed = synthetic, state["history"], state["seed"]
