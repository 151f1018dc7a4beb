"""Loading the configured source and splitting it into train / val / test without overlap.

A split assigns whole groups of pairs (a shared whitespace-normalised prompt, or the same two
responses in either order), so no prompt, pair or label-swapped twin is in two splits; held-out
files that overlap the training data fail loudly (`check_disjoint`), and so does a synthetic pair
derived from a held-out one (`check_no_heldout_leak`)."""
from __future__ import annotations

import logging

import numpy as np

from mars.config import DataConfig
from mars.data.demo import demo_splits
from mars.data.records import DataFormatError, PreferencePair

log = logging.getLogger(__name__)


def _load(cfg: DataConfig, path: str | None, split: str) -> list[PreferencePair]:
    from mars.data.sources import load_pairs

    result = load_pairs(cfg.source, path=path, hub_name=cfg.hub_name, hub_data_dir=cfg.hub_data_dir,
                        hub_subset=cfg.hub_subset, split=split, fields=cfg.fields, on_error=cfg.on_error)
    return result.pairs


def dedupe(pairs: list[PreferencePair], where: str) -> list[PreferencePair]:
    """Exact duplicate pairs removed (counted), so a random split cannot leak one across splits."""
    seen, kept = set(), []
    for p in pairs:
        h = p.content_hash()
        if h not in seen:
            seen.add(h)
            kept.append(p)
    if len(kept) < len(pairs):
        log.warning("%s: removed %d exact duplicate pairs of %d", where, len(pairs) - len(kept), len(pairs))
    return kept


class _Groups:
    """Union-find over pair indices: pairs that share a normalised prompt, or the same two
    responses in either order, end in one group (so a label-swapped twin stays with its pair)."""

    def __init__(self, pairs: list[PreferencePair]):
        self.parent = list(range(len(pairs)))
        first: dict[tuple, int] = {}
        for i, p in enumerate(pairs):
            keys = [("responses", p.responses_key())]
            if p.prompt_key():  # an empty prompt groups by its responses alone
                keys.append(("prompt", p.prompt_key()))
            for key in keys:
                j = first.setdefault(key, i)
                if j != i:
                    self.union(i, j)

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)

    def members(self) -> list[list[int]]:
        """Each group's pair indices, groups in the order of their first pair."""
        out: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            out.setdefault(self.find(i), []).append(i)
        return list(out.values())


def group_by_prompt(pairs: list[PreferencePair]) -> list[list[int]]:
    """Indices of `pairs` in groups that a split must keep whole: connected by a shared
    whitespace-normalised prompt or by the same unordered pair of responses."""
    return _Groups(pairs).members()


def _closest_prefix(groups: list[list[int]], size: int) -> int:
    """How many leading groups to take so that their pair count is closest to `size` (at least
    one group; on a tie the fewer groups)."""
    best, best_gap, total = 1, None, 0
    for k, g in enumerate(groups, 1):
        total += len(g)
        gap = abs(total - size)
        if best_gap is None or gap < best_gap:
            best, best_gap = k, gap
        if total >= size:
            break
    return best


def _leak_index(pairs: list[PreferencePair]) -> tuple[set, set]:
    return ({p.prompt_key() for p in pairs if p.prompt_key()}, {p.responses_key() for p in pairs})


def _leaks(pairs: list[PreferencePair], prompts: set, responses: set) -> tuple[list, int, int]:
    by_prompt = [p for p in pairs if p.prompt_key() and p.prompt_key() in prompts]
    by_responses = [p for p in pairs if p.responses_key() in responses]
    seen = {id(p) for p in by_prompt}
    leaked = by_prompt + [p for p in by_responses if id(p) not in seen]
    return leaked, len(by_prompt), len(by_responses)


def check_disjoint(train: list[PreferencePair], /, *, where: str = "train",
                   **held_out: list[PreferencePair]) -> None:
    """Fail loudly if a held-out pair also occurs in train: by its whitespace-normalised prompt,
    or by its two responses in either order (the pair itself, or its label-swapped twin).
    `where` names `train` in the message."""
    prompts, responses = _leak_index(train)
    for name, pairs in held_out.items():
        leaked, n_prompt, n_responses = _leaks(pairs, prompts, responses)
        if leaked:
            raise DataFormatError(
                f"{len(leaked)} {name} pairs also occur in {where}: {n_prompt} by normalised prompt, "
                f"{n_responses} by their responses in either order, e.g. "
                f"{[p.id for p in leaked[:3]]}; held-out pairs must never be trained on")


def check_no_heldout_leak(synthetic_pairs: list[PreferencePair],
                          held_out: dict[str, list[PreferencePair]]) -> None:
    """Fail loudly if a synthetic (augmented) pair derives from or equals a held-out pair: it has
    a held-out pair's normalised prompt or its two responses in either order."""
    for name, pairs in held_out.items():
        prompts, responses = _leak_index(pairs)
        leaked, n_prompt, n_responses = _leaks(synthetic_pairs, prompts, responses)
        if leaked:
            raise DataFormatError(
                f"{len(leaked)} synthetic pairs derive from {name} pairs: {n_prompt} by normalised "
                f"prompt, {n_responses} by their responses in either order, e.g. "
                f"{[p.id for p in leaked[:3]]}; no augmentation of a held-out pair may be trained on")


def load_pool(cfg: DataConfig) -> list[PreferencePair]:
    """Every pair of the configured source, deduplicated (evaluation-only sets)."""
    if cfg.source == "demo":
        return [p for split in demo_splits(1200, cfg.val_size, cfg.test_size, cfg.split_seed).values() for p in split]
    return dedupe(_load(cfg, cfg.path, cfg.split), cfg.path or cfg.hub_name or cfg.source)


def _check_sizes(cfg: DataConfig, val_explicit: bool) -> None:
    for key in ("val_size", "test_size"):
        if getattr(cfg, key) < 0:
            raise DataFormatError(f"data.{key}={getattr(cfg, key)}: a split size is a number of pairs, >= 0")
    if cfg.train_size == 0 or cfg.train_size < -1:
        raise DataFormatError(f"data.train_size={cfg.train_size}: use a number of pairs >= 1, or -1 "
                              f"for all that is left after val/test")
    if cfg.val_size == 0 and not val_explicit:
        raise DataFormatError("data.val_size=0: validation needs at least one pair: the best checkpoint "
                              "is chosen by val/acc")


def split_pool(pool: list[PreferencePair], sizes: dict[str, int], train_size: int, seed: int,
               where: str) -> dict[str, list[PreferencePair]]:
    """Split `pool` into the held-out splits of `sizes` (in its order, e.g. test then val) and train.

    Pairs are grouped (`group_by_prompt`: a shared whitespace-normalised prompt, or the same two
    responses in either order), and whole groups are assigned, so that no prompt and no pair or
    its swapped twin is in two splits. The groups are permuted with `seed`; each held-out split
    takes the shortest run of the next groups whose pair count is closest to its size (at least
    one group), so it is off by at most half the group at its edge (the actual sizes are
    logged). Train is the first `train_size` pairs (-1: all) of the groups left, in the permuted
    order. An impossible size is an error that names the key and the number available.
    """
    held = sum(sizes.values())
    if held >= len(pool):
        asked = " + ".join(f"data.{name}_size={n}" for name, n in sizes.items())
        asked += f" = {held}" if len(sizes) > 1 else ""
        raise DataFormatError(f"{asked} held-out pairs, but {where} has only {len(pool)} "
                              f"(after removing duplicates), and at least one must be left to train on")
    groups = group_by_prompt(pool)
    n_groups = len(groups)
    groups = [groups[i] for i in np.random.default_rng(seed).permutation(len(groups))]
    splits: dict[str, list[PreferencePair]] = {}
    for name, size in sizes.items():
        k = _closest_prefix(groups, size) if size > 0 and groups else 0
        splits[name] = [pool[i] for g in groups[:k] for i in g]
        groups = groups[k:]
    rest = [pool[i] for g in groups for i in g]
    if not rest:
        raise DataFormatError(f"no training pairs left in {where} after "
                              + ", ".join(f"{name} ({len(splits[name])} pairs)" for name in sizes)
                              + ": lower " + " or ".join(f"data.{name}_size" for name in sizes))
    if train_size > len(rest):
        raise DataFormatError(f"data.train_size={train_size}, but only {len(rest)} pairs of {where} are "
                              f"left after " + ", ".join(f"{name} ({len(splits[name])} pairs)" for name in sizes)
                              + ": lower it (or -1 for all that is left)")
    splits["train"] = rest if train_size < 0 else rest[:train_size]
    log.info("%s split by prompt groups (split_seed=%d, %d pairs in %d groups): %s, train %d pairs",
             where, seed, len(pool), n_groups,
             ", ".join(f"{name} {len(splits[name])} (asked {size})" for name, size in sizes.items()),
             len(splits["train"]))
    return splits


def load_splits(cfg: DataConfig) -> dict[str, list[PreferencePair]]:
    """{"train", "val", "test"} pair lists as configured; disjoint by normalised prompt and by
    unordered responses (`split_pool`, `check_disjoint`)."""
    _check_sizes(cfg, val_explicit=cfg.source != "demo" and bool(cfg.val_path or cfg.val_split))
    if cfg.source == "demo":
        splits = demo_splits(cfg.train_size if cfg.train_size > 0 else 1200, cfg.val_size, cfg.test_size,
                             seed=cfg.split_seed)
        check_disjoint(splits["train"], val=splits["val"], test=splits["test"])
        return splits
    pool = load_pool(cfg)
    where = cfg.path or cfg.hub_name or cfg.source
    explicit: dict[str, list[PreferencePair]] = {}
    for name, path, hub_split in (("test", cfg.test_path, cfg.test_split), ("val", cfg.val_path, cfg.val_split)):
        if path or hub_split:
            explicit[name] = _load(cfg, path, hub_split or cfg.split)
    # A held-out file must share nothing with the pool that train (and val) are split from, nor
    # with the other held-out file.
    check_disjoint(pool, where=f"train ({where})", **explicit)
    if len(explicit) == 2:
        check_disjoint(explicit["val"], where="val", test=explicit["test"])
    sizes = {name: getattr(cfg, f"{name}_size") for name in ("test", "val") if name not in explicit}
    splits = {**explicit, **split_pool(pool, sizes, cfg.train_size, cfg.split_seed, where)}
    check_disjoint(splits["train"], val=splits["val"], test=splits["test"])
    return splits
