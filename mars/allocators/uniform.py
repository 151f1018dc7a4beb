"""Uniform augmentation: the same budget, spread evenly over the base pairs (τ = 0)."""
import numpy as np

from mars.allocators.base import Allocator


class UniformAllocator(Allocator):
    def probabilities(self, margins: np.ndarray) -> np.ndarray:
        return np.full(len(margins), 1.0 / max(1, len(margins)))
