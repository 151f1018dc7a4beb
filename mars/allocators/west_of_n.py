"""West-of-N self-training baselines (method.md §4), both forms.

`mode="top_margin"` (the MARS authors' version): the budget is spread uniformly; each pair keeps
its b_i candidate synthetic pairs with the *highest* margin under the current model.
`mode="best_vs_worst"` (Pace et al. 2024): each prompt's pool of N responses (chosen, rejected and
their variants) is scored and the best and worst form pseudo-pairs (next best vs next worst, …).
"""
from mars.allocators.uniform import UniformAllocator


class WestOfNAllocator(UniformAllocator):
    def __init__(self, mode: str = "top_margin"):
        if mode not in ("top_margin", "best_vs_worst"):
            raise ValueError(f"allocator.mode={mode!r} is not one of ['top_margin', 'best_vs_worst']")
        self.select = mode  # candidates: loop.pool_size variants per response
