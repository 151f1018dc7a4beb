"""Augmenters: label-preserving variants of responses (the `augmenter` config group).

Each member lives in its own module and is built from `conf/augmenter/<name>.yaml`; only the
interface is imported here, so choosing `none` or `eda` loads no model (no transformers import).
"""
from mars.augmenters.base import Augmenter, VariantRequest

__all__ = ["Augmenter", "VariantRequest"]
