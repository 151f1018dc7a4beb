"""Scoring a reward model on a set of pairs, with bootstrap confidence intervals."""
from __future__ import annotations

import json
import os
from collections import defaultdict

import numpy as np
import torch

from mars.config import BackboneConfig
from mars.data.batching import PairBatchSampler, PairCollator
from mars.data.encoding import PairEncoder
from mars.data.records import PreferencePair
from mars.model.metrics import pairwise_metrics


def load_for_eval(model: str, max_length: int | None = None):
    """A RewardModule from a Lightning `.ckpt` or a `from_pretrained` folder (export or Hub name)."""
    from mars.config import LossConfig, OptimConfig
    from mars.model.module import RewardModule

    if model.endswith(".ckpt"):
        return RewardModule.load_from_checkpoint(model, map_location="cpu", weights_only=False)
    export = {}
    if os.path.exists(os.path.join(model, "mars_export.json")):
        with open(os.path.join(model, "mars_export.json")) as f:
            export = json.load(f)
    backbone = BackboneConfig(name_or_path=model, max_length=max_length or export.get("max_length", 512),
                              min_prompt_tokens=export.get("min_prompt_tokens", 32),
                              chat_template=export.get("chat_template", "auto"))
    return RewardModule(backbone, OptimConfig(), LossConfig())


def score_pairs(module, pairs: list[PreferencePair], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, int]:
    """(r⁺, r⁻) of every pair in order, and how many pairs were truncated."""
    cfg = module.backbone_cfg
    tok = module.tokenizer
    encoder = PairEncoder(tok, cfg.max_length, cfg.min_prompt_tokens,
                          use_chat_template=cfg.chat_template == "auto" and bool(getattr(tok, "chat_template", None)))
    encoded = encoder.encode(pairs)
    sampler = PairBatchSampler([e.length for e in encoded], batch_size, shuffle=False)
    loader = torch.utils.data.DataLoader(encoded, batch_sampler=sampler, collate_fn=PairCollator(tok.pad_token_id))
    r_chosen, r_rejected = np.zeros(len(pairs)), np.zeros(len(pairs))
    module.eval()
    with torch.inference_mode():
        for batch in loader:
            batch = {k: v.to(module.device) for k, v in batch.items()}
            rc, rr = module.pair_rewards(batch)
            idx = batch["pair_index"].cpu().numpy()
            r_chosen[idx], r_rejected[idx] = rc.cpu().double().numpy(), rr.cpu().double().numpy()
    return r_chosen, r_rejected, encoder.truncated


def bootstrap(r_chosen: np.ndarray, r_rejected: np.ndarray, n: int = 1000, ci: float = 0.95,
              seed: int = 0) -> dict[str, dict[str, float]]:
    """Each metric's value on all pairs and its percentile interval over `n` resamples of pairs."""
    point = pairwise_metrics(torch.from_numpy(r_chosen), torch.from_numpy(r_rejected))
    rng = np.random.default_rng(seed)
    draws = defaultdict(list)
    for _ in range(n):
        idx = rng.integers(0, len(r_chosen), len(r_chosen))
        for k, v in pairwise_metrics(torch.from_numpy(r_chosen[idx]), torch.from_numpy(r_rejected[idx])).items():
            draws[k].append(v)
    lo_q, hi_q = (1 - ci) / 2 * 100, (1 + ci) / 2 * 100
    out = {}
    for k, v in point.items():
        values = np.asarray(draws[k], dtype=np.float64)
        values = values[np.isfinite(values)]
        lo, hi = (np.percentile(values, [lo_q, hi_q]) if len(values) else (np.nan, np.nan))
        out[k] = {"value": v, "lo": float(min(lo, v)), "hi": float(max(hi, v))}
    return out


def by_group(pairs: list[PreferencePair], r_chosen: np.ndarray, r_rejected: np.ndarray, key: str) -> dict:
    """Accuracy and count per value of `meta[key]` (e.g. RewardBench "section", demo "difficulty")."""
    groups = defaultdict(list)
    for i, p in enumerate(pairs):
        if key in p.meta:
            groups[p.meta[key]].append(i)
    return {g: {"pairs": len(idx), "acc": float(np.mean(r_chosen[idx] > r_rejected[idx]))}
            for g, idx in sorted(groups.items())}


def format_table(metrics: dict[str, dict[str, float]], ci: float) -> str:
    lines = [f"{'metric':<14}{'value':>10}   {int(ci * 100)}% interval", "-" * 44]
    for k, v in metrics.items():
        lines.append(f"{k:<14}{v['value']:>10.4f}   [{v['lo']:.4f}, {v['hi']:.4f}]")
    return "\n".join(lines)
