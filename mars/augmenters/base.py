"""The augmenter interface: label-preserving variants of texts, generated in batches and cached.

A member implements `_generate` (fresh variants for a batch of requests) and `identity` (the
settings that determine its outputs); `augment` serves what the cache holds and generates the rest,
committing each batch as soon as it is done.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Iterable, Optional, Sequence

from mars.data.records import PreferencePair
from mars.generation.cache import digest
from mars.generation.cached import CachedGenerator

log = logging.getLogger(__name__)

ROLES = ("chosen", "rejected", "prompt")


@dataclass(frozen=True)
class VariantRequest:
    """Ask for `n` variants of `text`; `prompt` and `other` (the pair's other response): context."""

    text: str
    role: str  # chosen | rejected | prompt
    prompt: str = ""
    other: str = ""  # "" for role "prompt"
    n: int = 1

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"VariantRequest.role={self.role!r} is not one of {list(ROLES)}")


def distinct_variants(text: str, candidates: Iterable[str],
                      limit: Optional[int] = None) -> list[str]:
    """Candidates stripped, minus empties, copies of `text` and repeats, in order; at most `limit`.

    Lazy: a generator of candidates is consumed only until `limit` variants are found.
    """
    out: list[str] = []
    seen = {text.strip()}
    for c in candidates:
        c = c.strip()
        if c and c not in seen:
            seen.add(c)
            out.append(c)
            if len(out) == limit:
                break
    return out


class Augmenter(CachedGenerator):
    """Batched: many requests in, up to `n` distinct variants each out (never the input, never "").

    A shortfall (fewer than `n`) comes back as a shorter list and is counted in `stats`, not raised.
    Variant i of a request depends only on (identity, role, text, context where used, i, seed).
    Members implement `_generate`, or override `augment` when they make no variants themselves.
    """

    uses_context = False  # prompt and other response shape the variants: part of the cache key
    retry_shortfall = False  # a shortfall can be transient (endpoint errors): ask again next time
    commit_every = 32  # distinct texts generated, then committed to the cache, per batch
    log_every = 5.0  # seconds between progress lines
    kind = "augmenter"
    _counters = ("generated", "cache_hits", "failures", "shortfall")

    def prepare(self, pairs: list[PreferencePair]) -> list[PreferencePair]:
        """Refine the base pairs once before training (default: unchanged)."""
        return pairs

    def augment(self, requests: Sequence[VariantRequest]) -> list[list[str]]:
        """Up to `n` variants per request: cached ones, then the misses generated batch by batch."""
        ident = self.identity_digest()
        out: list[list[str]] = [[] for _ in requests]
        misses: dict[tuple[str, str], list[int]] = {}  # (role, text key) → requests asking for it
        for i, req in enumerate(requests):
            if req.n <= 0:
                continue
            key = self._text_key(req)
            cached = self._cache.get(ident, req.role, key, req.n, final=not self.retry_shortfall)
            if cached is None:
                misses.setdefault((req.role, key), []).append(i)
            else:
                out[i] = cached[:req.n]
        hits = sum(map(len, out))
        self._stats["cache_hits"] += hits

        todo = list(misses.items())
        start = last_log = time.monotonic()
        tokens_before = self._stats["tokens"]
        for b in range(0, len(todo), self.commit_every):
            chunk = todo[b:b + self.commit_every]
            batch = [replace(requests[idx[0]], n=max(requests[i].n for i in idx))
                     for _, idx in chunk]
            generated = self._generate(batch)
            self._cache.put(ident, [(role, key, req.n, vs)
                                    for ((role, key), _), req, vs in zip(chunk, batch, generated)])
            for (_, idx), vs in zip(chunk, generated):
                self._stats["generated"] += len(vs)
                for i in idx:
                    out[i] = vs[:requests[i].n]
            done, now = b + len(chunk), time.monotonic()
            if now - last_log >= self.log_every or done == len(todo):
                elapsed = max(now - start, 1e-9)
                tokens = self._stats["tokens"] - tokens_before  # counted by model-based members
                log.info("%s: generated for %d/%d texts (%.2f texts/s%s); %d variants from the "
                         "cache", type(self).__name__, done, len(todo), done / elapsed,
                         f", {tokens / elapsed:.1f} tokens/s" if tokens else "", hits)
                last_log = now
        self._stats["shortfall"] += sum(max(r.n, 0) - len(o) for r, o in zip(requests, out))
        return out

    def _text_key(self, req: VariantRequest) -> str:
        parts = (req.text, req.prompt, req.other) if self.uses_context else (req.text,)
        return digest("\x00".join(parts))

    def _generate(self, requests: Sequence[VariantRequest]) -> list[list[str]]:
        """Fresh variants, one list per request (at most `n` are used; more are cached)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither _generate nor augment")
