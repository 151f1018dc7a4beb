"""Loading the configured source and splitting it into train / val / test without overlap."""
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


def check_disjoint(train: list[PreferencePair], **held_out: list[PreferencePair]) -> None:
    """Fail loudly if a held-out pair has the same content as a training pair."""
    train_hashes = {p.content_hash() for p in train}
    for name, pairs in held_out.items():
        leaked = [p.id for p in pairs if p.content_hash() in train_hashes]
        if leaked:
            raise DataFormatError(f"{len(leaked)} {name} pairs also occur in train (by content), "
                                  f"e.g. {leaked[:3]}: held-out pairs must never be trained on")


def load_pool(cfg: DataConfig) -> list[PreferencePair]:
    """Every pair of the configured source, deduplicated (evaluation-only sets)."""
    if cfg.source == "demo":
        return [p for split in demo_splits(1200, cfg.val_size, cfg.test_size, cfg.split_seed).values() for p in split]
    return dedupe(_load(cfg, cfg.path, cfg.split), cfg.path or cfg.hub_name or cfg.source)


def load_splits(cfg: DataConfig) -> dict[str, list[PreferencePair]]:
    """{"train", "val", "test"} pair lists as configured; disjoint by content."""
    if cfg.source == "demo":
        splits = demo_splits(cfg.train_size if cfg.train_size > 0 else 1200, cfg.val_size, cfg.test_size,
                             seed=cfg.split_seed)
        check_disjoint(splits["train"], val=splits["val"], test=splits["test"])
        return splits
    pool = load_pool(cfg)
    splits: dict[str, list[PreferencePair]] = {}
    for name, path, hub_split in (("test", cfg.test_path, cfg.test_split), ("val", cfg.val_path, cfg.val_split)):
        if path or hub_split:
            splits[name] = _load(cfg, path, hub_split or cfg.split)
    order = np.random.default_rng(cfg.split_seed).permutation(len(pool))
    start = 0
    for name, size in (("test", cfg.test_size), ("val", cfg.val_size)):
        if name not in splits:
            splits[name] = [pool[i] for i in order[start:start + size]]
            start += size
    rest = [pool[i] for i in order[start:]]
    splits["train"] = rest if cfg.train_size < 0 else rest[: cfg.train_size]
    if cfg.train_size > len(rest):
        log.warning("data.train_size=%d but only %d pairs are left after val/test", cfg.train_size, len(rest))
    if not splits["train"]:
        raise DataFormatError(f"no training pairs left from {cfg.path or cfg.source} after val/test")
    check_disjoint(splits["train"], val=splits["val"], test=splits["test"])
    return splits
