"""What every allocator shares: turning selection probabilities into integer budgets."""
from __future__ import annotations

from typing import Optional

import numpy as np


def largest_remainder(probs: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    """b_i = floor(B·q_i) plus one for the largest remainders, so Σ b_i = B exactly.

    Remainder ties are broken by `rng` (a random permutation before a stable sort).

    >>> largest_remainder(np.array([0.5, 0.25, 0.25]), 5, np.random.default_rng(0)).sum()
    5
    """
    if budget <= 0 or len(probs) == 0:
        return np.zeros(len(probs), dtype=np.int64)
    exact = budget * np.asarray(probs, dtype=np.float64) / np.sum(probs)
    counts = np.floor(exact).astype(np.int64)
    left = budget - int(counts.sum())
    if left:
        shuffle = rng.permutation(len(exact))
        remainders = (exact - counts)[shuffle]
        counts[shuffle[np.argsort(-remainders, kind="stable")[:left]]] += 1
    return counts


class Allocator:
    """Splits a round's budget B over the base pairs given their margins Δ, and chooses each
    pair's b_i synthetic pairs among its candidates.

    Subclasses set `probabilities`; `select` names how the b_i are chosen ("random": a seeded draw,
    here; West-of-N overrides `choose` and `candidates`); `pools_variants`: ask the augmenter for
    `loop.pool_size` variants per response instead of the fewest that give b_i crossings.
    """

    select = "random"
    spends_budget = True
    pools_variants = False

    def probabilities(self, margins: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def candidates(self, prompt: str, pos: list[str], neg: list[str]) -> Optional[list[tuple[str, str, str]]]:
        """(prompt, chosen, rejected) candidates of one pair from its responses and their variants
        (the originals first); None: the loop's crossing (`loop.crossing`) makes them."""
        return None

    def choose(self, candidates: list[list], wanted: list[int], rng: np.random.Generator, scorer) -> list[list]:
        """b_i of each pair's candidates, by a seeded draw."""
        return [[c[j] for j in sorted(rng.choice(len(c), min(b, len(c)), replace=False))]
                for c, b in zip(candidates, wanted)]

    def allocate(self, margins: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
        if not self.spends_budget:
            return np.zeros(len(margins), dtype=np.int64)
        margins = np.asarray(margins, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(margins))
        if len(bad):  # a diverged model: exp(−τ·NaN) would silently hand out a garbage budget
            raise FloatingPointError(f"{len(bad)} of {len(margins)} margins are not finite (first at base pair "
                                     f"{bad[0]}: {margins[bad[0]]}): the model diverged; lower optim.lr or check "
                                     "trainer.precision")
        return largest_remainder(self.probabilities(margins), budget, rng)
