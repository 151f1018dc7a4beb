"""MARS: q_i ∝ exp(−τ·s(Δ_i)); more budget where the model is least sure (docs/method.md §2)."""
import numpy as np

from mars.allocators.base import Allocator


class MarsAllocator(Allocator):
    """`margin="abs"`: s(Δ) = |Δ| (the paper; near-zero margins get most).
    `margin="signed"`: s(Δ) = Δ (the authors' code; mis-ranked pairs get most). τ = 0 is uniform."""

    def __init__(self, temperature: float, margin: str = "abs"):  # τ: conf/allocator/mars.yaml
        if margin not in ("abs", "signed"):
            raise ValueError(f"allocator.margin={margin!r} is not one of ['abs', 'signed']")
        if temperature < 0:
            raise ValueError(f"allocator.temperature must be >= 0, got {temperature}")
        self.temperature, self.margin = temperature, margin

    def probabilities(self, margins: np.ndarray) -> np.ndarray:
        score = np.abs(margins) if self.margin == "abs" else margins
        logits = -self.temperature * score
        weights = np.exp(logits - logits.max())  # shifted: no overflow for large |τΔ|
        return weights / weights.sum()
