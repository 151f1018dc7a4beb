"""West-of-N self-training baselines (docs/method.md §4), both forms.

`mode="top_margin"` (the MARS authors' version): the budget is spread uniformly; each pair keeps
its b_i candidate synthetic pairs with the *highest* margin under the current model.
`mode="best_vs_worst"` (Pace et al. 2024): each prompt's pool of N responses (chosen, rejected and
their variants) is scored and the best and worst form pseudo-pairs (next best vs next worst, …).
"""
from typing import Optional

import numpy as np

from mars.allocators.uniform import UniformAllocator


class WestOfNAllocator(UniformAllocator):
    pools_variants = True  # candidates: loop.pool_size variants per response

    def __init__(self, mode: str = "top_margin"):
        if mode not in ("top_margin", "best_vs_worst"):
            raise ValueError(f"allocator.mode={mode!r} is not one of ['top_margin', 'best_vs_worst']")
        self.select = mode

    def candidates(self, prompt: str, pos: list[str], neg: list[str]) -> Optional[list[tuple[str, str, str]]]:
        """best_vs_worst: both orders of every two responses of the pool (the originals' too)."""
        if self.select != "best_vs_worst":
            return None
        return [(prompt, a, b) for a in pos + neg for b in pos + neg if a != b]

    def choose(self, candidates: list[list], wanted: list[int], rng: np.random.Generator, scorer) -> list[list]:
        """Each pair's b_i highest-margin candidates by the current model."""
        flat = [c for cs in candidates for c in cs]
        margins = scorer.pairs(flat).margins if flat else np.empty(0)
        out, start = [], 0
        for cs, b in zip(candidates, wanted):
            # Highest margin first: for best_vs_worst, whose candidates hold both orders of every
            # two responses, that is the best response against the worst, then the next widest gap.
            order = np.argsort(-margins[start:start + len(cs)], kind="stable")[:b]
            out.append([cs[j] for j in order])
            start += len(cs)
        return out
