"""The augmenter interface: label-preserving variants of texts, generated in batches and cached.

A member implements `_generate` (fresh variants for a batch of requests) and `identity` (the
settings that determine its outputs); `augment` serves what the cache holds and generates the rest,
committing each batch as soon as it is done.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Iterable, Optional, Sequence

import torch

from mars.augmenters.cache import VariantCache
from mars.data.records import PreferencePair

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


def stable_seed(*parts) -> int:
    """A 31-bit seed from the parts' text (Python's hash() changes between processes)."""
    digest = hashlib.blake2b("\x00".join(map(str, parts)).encode("utf-8"), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


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


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def resolve_device(device: str) -> str:
    """"auto": cuda where available, else cpu; anything else as given."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


class Augmenter:
    """Batched: many requests in, up to `n` distinct variants each out (never the input, never "").

    A shortfall (fewer than `n`) comes back as a shorter list and is counted in `stats`, not raised.
    Variant i of a request depends only on (identity, role, text, context where used, i, seed).
    Members implement `_generate`, or override `augment` when they make no variants themselves.
    """

    uses_context = False  # prompt and other response shape the variants: part of the cache key
    retry_shortfall = False  # a shortfall can be transient (endpoint errors): ask again next time
    commit_every = 32  # distinct texts generated, then committed to the cache, per batch
    log_every = 5.0  # seconds between progress lines
    _identity_fields: tuple[str, ...] = ()  # attributes that determine the outputs

    def __init__(self, cache_path: Optional[str] = None, seed: int = 0):
        self.seed = seed
        self._cache = VariantCache(cache_path)
        self._stats: Counter = Counter()

    def identity(self) -> dict:
        """The settings that determine the outputs (the cache key); never a secret."""
        cls = type(self)
        return {"augmenter": f"{cls.__module__}.{cls.__qualname__}",
                **{f: getattr(self, f) for f in self._identity_fields}}

    @property
    def stats(self) -> dict[str, int]:
        """Cumulative counts: generated, cache_hits, failures, shortfall, and the member's own."""
        return {"generated": 0, "cache_hits": 0, "failures": 0, "shortfall": 0, **self._stats}

    def prepare(self, pairs: list[PreferencePair]) -> list[PreferencePair]:
        """Refine the base pairs once before training (default: unchanged)."""
        return pairs

    def augment(self, requests: Sequence[VariantRequest]) -> list[list[str]]:
        """Up to `n` variants per request: cached ones, then the misses generated batch by batch."""
        ident = _digest(json.dumps(self.identity(), sort_keys=True))
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
        return _digest("\x00".join(parts))

    def _generate(self, requests: Sequence[VariantRequest]) -> list[list[str]]:
        """Fresh variants, one list per request (at most `n` are used; more are cached)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither _generate nor augment")
