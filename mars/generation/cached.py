"""What augmenters, best-of-N policies and the chat judge share: settings that determine the
outputs (`identity()`, the cache key), counters (`stats`) and the SQLite cache."""
from __future__ import annotations

import json
from collections import Counter
from typing import Hashable, Iterable, Optional, TypeVar

from mars.generation.cache import VariantCache, digest

Item = TypeVar("Item", bound=Hashable)


class CachedGenerator:
    """`identity()` is ``{kind: "module.Class", field: value, ...}`` over `_identity_fields`;
    its digest keys `_cache`. `stats`: the `_counters` (0 until counted), then the rest counted.

    Members that cache one text per item (a policy sample, a verdict) name its `_role` and
    `_key(item)` and read and write through `_cached` and `_store`.
    """

    kind = "generator"  # the identity's first key: an augmenter and a policy never share a key
    _identity_fields: tuple[str, ...] = ()  # attributes that determine the outputs
    _counters: tuple[str, ...] = ()  # reported even before anything was counted
    _role = ""  # the cache's role column for one-text items

    def __init__(self, cache_path: Optional[str] = None, seed: int = 0):
        self.seed = seed
        self._cache = VariantCache(cache_path)
        self._stats: Counter = Counter()

    def identity(self) -> dict:
        """The settings that determine the outputs (the cache key); never a secret."""
        cls = type(self)
        return {self.kind: f"{cls.__module__}.{cls.__qualname__}",
                **{f: getattr(self, f) for f in self._identity_fields}}

    def identity_digest(self) -> str:
        return digest(json.dumps(self.identity(), sort_keys=True))

    @property
    def stats(self) -> dict[str, int]:
        """Cumulative counts: the `_counters` first, then the member's own."""
        return {**dict.fromkeys(self._counters, 0), **self._stats}

    def _key(self, item) -> str:
        raise NotImplementedError(f"{type(self).__name__} caches no one-text items")

    def _cached(self, items: Iterable[Item]) -> tuple[dict[Item, str], list[Item]]:
        """(item → its cached text, the items without one, in order); hits counted as cache_hits."""
        ident, found, todo = self.identity_digest(), {}, []
        for item in items:
            cached = self._cache.get(ident, self._role, self._key(item), 1, final=False)
            if cached is None:
                todo.append(item)
            else:
                found[item] = cached[0]
        self._stats["cache_hits"] += len(found)
        return found, todo

    def _store(self, done: Iterable[tuple[Item, str]]) -> None:
        """Commit (item, text) pairs in one transaction: a killed run keeps them."""
        self._cache.put(self.identity_digest(),
                        [(self._role, self._key(item), 1, [text]) for item, text in done])
