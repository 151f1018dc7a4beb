"""The prompts of an alignment run: training prompts for the policy, held-out prompts to judge it on.

From a pair source (HH-RLHF, UltraFeedback, PKU-SafeRLHF, your pairs) the training prompts come
from its train split and the held-out ones from its test split: mars's splits keep a prompt in one
split only, so the reward models, trained on the same data config, never saw the held-out prompts
either. From prompt sets (AlpacaEval-BoN instructions, `data=prompts` files) the first `heldout`
prompts are held out and the next `train` are trained on. A separate `heldout_path` file replaces
the held-out prompts. Any held-out prompt that is also a training prompt (whitespace-normalised) is
an error before training starts.
"""
from __future__ import annotations

from dataclasses import dataclass

from mars.config import CANDIDATE_SOURCES, ConfigError
from mars.data.candidates import load_prompts, load_sets
from mars.data.records import normalise_text
from mars.data.splits import load_splits


@dataclass(frozen=True)
class Prompts:
    train: list[str]
    heldout: list[str]
    ids: list[str]  # of the held-out prompts


def distinct(prompts) -> list[str]:
    return list(dict.fromkeys(p for p in prompts if p.strip()))


def load_prompts_for(data, train: int, heldout: int, heldout_path: str | None = None) -> Prompts:
    """`train` training prompts and `heldout` held-out prompts (with ids) of the data config `data`."""
    if data.source in CANDIDATE_SOURCES:
        sets = load_sets(data, prompts_only=True)
        held = [(s.id, s.prompt) for s in sets[:heldout]] if heldout_path is None else []
        pool = distinct(s.prompt for s in sets[len(held):])
    else:
        splits = load_splits(data)
        pool = distinct(p.prompt for p in splits["train"])
        held = list({p.prompt: p.id for p in splits["test"] if p.prompt.strip()}.items())[:heldout]
        held = [(i, p) for p, i in held] if heldout_path is None else []
    if heldout_path is not None:
        held = [(s.id, s.prompt) for s in load_prompts(heldout_path, heldout)]
    where = data.path or data.hub_name or data.source
    if len(pool) < train:
        raise ConfigError(f"align.prompts.train={train}, but {where} has only {len(pool)} distinct training prompts: "
                          f"lower align.prompts.train")
    if len(held) < heldout:
        raise ConfigError(f"align.prompts.heldout={heldout}, but only {len(held)} held-out prompts are available "
                          f"({heldout_path or where}): lower align.prompts.heldout or give more")
    prompts = Prompts(pool[:train], [p for _, p in held], [i for i, _ in held])
    check_heldout(prompts)
    return prompts


def check_heldout(prompts: Prompts) -> None:
    """No held-out prompt may be trained on."""
    seen = {normalise_text(p) for p in prompts.train}
    overlap = [i for i, p in zip(prompts.ids, prompts.heldout) if normalise_text(p) in seen]
    if overlap:
        raise ConfigError(f"{len(overlap)} of the {len(prompts.heldout)} held-out prompts are also training prompts "
                          f"(e.g. {overlap[:3]}): held-out prompts must never be trained on; give a held-out file "
                          "disjoint from the training prompts (align.prompts.heldout_path)")
