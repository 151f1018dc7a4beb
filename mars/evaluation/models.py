"""Reward models under evaluation: a Scorer for a checkpoint, export or Hub name, and candidate
rewards that several models with the same frozen trunk share.

Models trained with `finetune=head` differ only in their linear head: every weight under it (the
trunk) is the pretrained backbone's. `CandidateRewards` fingerprints each model's trunk (a hash of
every tensor but the head's) and the token rows it is asked to score; where both match a model seen
before, the head's input features φ are reused and only the head is applied. Rewards are then
those of a full forward up to float rounding (the head runs on a different batch shape).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from mars.data.format import PairFormatter
from mars.model.backbone import PackingKeys, check_packing
from mars.model.export import load_for_eval
from mars.model.scoring import Scorer


def resolve_model(path: str) -> tuple[str, list[dict]]:
    """(what to load, the run's round reports) for a checkpoint, export, Hub name or run folder."""
    run = Path(path)
    if (run / "export").is_dir():
        rounds = [json.loads(p.read_text()) for p in sorted((run / "rounds").glob("round_*.json"))]
        return str(run / "export"), rounds
    return path, []


def load_scorer(model: str, max_length: Optional[int] = None, batch_size: int = 64, packing: bool = False,
                max_tokens: int = 4096, prefix_sharing: bool = False, allow_unverified_packing: bool = False,
                keys: PackingKeys = PackingKeys()) -> Scorer:
    """The one scorer over a `.ckpt`, an export folder or a Hub name (its own max length unless given);
    `keys`: the caller's names for its packing settings, for the error that names them."""
    loaded = load_for_eval(model, max_length)
    if packing or prefix_sharing:
        check_packing(loaded.model.config.model_type, allow_unverified_packing, keys)
    bb = loaded.backbone_cfg
    return Scorer(PairFormatter.of(loaded.tokenizer, bb), loaded.tokenizer.pad_token_id, loaded.model, batch_size,
                  packing=packing, max_tokens=max_tokens, prefix_sharing=prefix_sharing)


def trunk_digest(model) -> str:
    """A hash of every tensor of the reward model's network except the head (detached from `net`)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(model.net.state_dict().items()):
        h.update(name.encode())
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class CandidateRewards:
    """`rewards(scorer, [(prompt, response), ...])` → reward of each; φ shared across equal trunks."""

    def __init__(self):
        self._features: dict[tuple[str, str], np.ndarray] = {}
        self.forwards = 0  # trunk passes actually run

    def __call__(self, scorer: Scorer, prompt_response: Sequence[tuple[str, str]]) -> np.ndarray:
        row_of: dict[tuple[int, ...], int] = {}
        index = np.asarray([row_of.setdefault(tuple(scorer.formatter.sequence(p, r)[0]), len(row_of))
                            for p, r in prompt_response], dtype=np.int64)
        rows = list(row_of)
        key = (trunk_digest(scorer.model), hashlib.blake2b(repr(rows).encode(), digest_size=16).hexdigest())
        if key not in self._features:
            self._features[key] = scorer.rows([list(ids) for ids in rows], features=True)[1]
            self.forwards += 1
        head = scorer.model.head
        with torch.inference_mode():
            phi = torch.from_numpy(self._features[key]).to(head.weight.device, head.weight.dtype)
            rewards = head(phi).squeeze(-1).double().cpu().numpy()
        return rewards[index]

    @staticmethod
    def truncated(scorer: Scorer, prompt_response: Sequence[tuple[str, str]]) -> int:
        """How many (prompt, response) rows the truncation rule cut (the formatter memoises them)."""
        return sum(scorer.formatter.sequence(p, r)[1] for p, r in prompt_response)
