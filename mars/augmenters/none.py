"""No augmentation: the baseline that trains on the base pairs alone."""
from __future__ import annotations

from typing import Sequence

from mars.augmenters.base import Augmenter, VariantRequest


class NoAugmenter(Augmenter):
    """Returns no variants; nothing is generated, cached or counted as a shortfall."""

    def augment(self, requests: Sequence[VariantRequest]) -> list[list[str]]:
        return [[] for _ in requests]
