"""No augmentation: D^t = D₀ every round."""
from mars.allocators.base import Allocator


class NoAllocator(Allocator):
    spends_budget = False
