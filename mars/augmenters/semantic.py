"""Semantic refinement (the paper's second version): pull apart pairs whose responses read alike.

`prepare` embeds both responses of every pair, d = 1 − cosine. Pairs with d below the mean are
close; for each, the rejected response is rewritten to differ more from the chosen one without
becoming better (`tries` attempts); if none increases d, the chosen one is rewritten to differ more
while staying better. A rewrite is kept only if it increases d; otherwise the pair stays as it was.
Variants for the refined pairs then come from `inner` (paraphrase in the paper).
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Sequence

import torch

from mars.augmenters.base import Augmenter, VariantRequest
from mars.augmenters.quality import Embedder
from mars.data.records import PreferencePair
from mars.generation.local import resolve_device

log = logging.getLogger(__name__)

_OTHER = {"rejected": "chosen", "chosen": "rejected"}


class SemanticAugmenter(Augmenter):
    """Refines close pairs with `rewriter` (an llm_rewrite with "more different" templates and a
    temperature per role), then delegates `augment` to `inner`. It has no cache of its own: the
    rewrites and the variants live in the caches of `rewriter` and `inner`.

    The attempts of one pair are asked for at once (`tries` variants); the first, in variant order,
    that increases d is kept, as sequential tries that stop at the first success would.
    `embedder`: "minilm" (the embedded all-MiniLM-L6-v2), a sentence-transformers name or a path.
    """

    def __init__(self, inner: Augmenter, rewriter: Augmenter, embedder: str = "minilm",
                 tries: int = 5, batch_size: int = 32, device: str = "auto", seed: int = 0):
        super().__init__(None, seed)
        self.inner = inner
        self.rewriter = rewriter
        self.embedder = embedder
        self.tries = tries
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self._embedder = Embedder(embedder, self.device, batch_size)

    def identity(self) -> dict:
        return {**super().identity(), "inner": self.inner.identity(), "tries": self.tries,
                "rewriter": self.rewriter.identity(), "embedder": self.embedder}

    @property
    def stats(self) -> dict[str, int]:
        """`inner`'s counters, the rewriter's as `rewrite_*`, and pairs close / refined / kept."""
        rewrites = {f"rewrite_{k}": v for k, v in self.rewriter.stats.items()}
        return {**self.inner.stats, **rewrites, **self._stats}

    def augment(self, requests: Sequence[VariantRequest]) -> list[list[str]]:
        return self.inner.augment(requests)

    def _embed(self, texts: list[str]) -> torch.Tensor:
        return self._embedder(texts)

    def prepare(self, pairs: list[PreferencePair]) -> list[PreferencePair]:
        if not pairs:
            return pairs
        emb = {role: self._embed([getattr(p, role) for p in pairs]) for role in _OTHER}
        d = (1 - (emb["chosen"] * emb["rejected"]).sum(-1)).tolist()
        threshold = sum(d) / len(d)
        todo = [i for i, di in enumerate(d) if di < threshold]
        close = len(todo)
        out = list(pairs)
        refined = {}
        for role in ("rejected", "chosen"):
            found = self._refine(pairs, todo, role, d, emb[_OTHER[role]])
            for i, (text, d_new) in found.items():
                meta = {**pairs[i].meta, "semantic": {"rewrote": role, "distance": [d[i], d_new]}}
                out[i] = replace(pairs[i], **{role: text}, meta=meta)
            refined[role] = len(found)
            todo = [i for i in todo if i not in found]
        self._stats.update(pairs_close=close, refined_rejected=refined["rejected"],
                           refined_chosen=refined["chosen"], kept_original=len(todo))
        log.info("semantic refinement: %d of %d pairs close (d < mean %.3f); rewrote %d rejected "
                 "and %d chosen responses; %d close pairs kept as they were", close, len(pairs),
                 threshold, refined["rejected"], refined["chosen"], len(todo))
        return out

    def _refine(self, pairs: list[PreferencePair], idx: list[int], role: str, d: list[float],
                other_emb: torch.Tensor) -> dict[int, tuple[str, float]]:
        """Pair index → (the first rewrite of its `role` response that increases d, the new d)."""
        other = _OTHER[role]
        requests = [VariantRequest(getattr(pairs[i], role), role, pairs[i].prompt,
                                   getattr(pairs[i], other), self.tries) for i in idx]
        rewrites = self.rewriter.augment(requests)
        flat = [t for ts in rewrites for t in ts]
        if not flat:
            return {}
        emb, k, found = self._embed(flat), 0, {}
        for i, ts in zip(idx, rewrites):
            d_new = (1 - emb[k:k + len(ts)] @ other_emb[i]).tolist()
            k += len(ts)
            better = [j for j, dj in enumerate(d_new) if dj > d[i]]
            if better:
                found[i] = (ts[better[0]], d_new[better[0]])
        return found
