"""Fast modes: a frozen lower part of the reward model, run once per sequence and cached.

`train_layers=0` trains the reward head alone on cached head-input features φ(x, y): the linear
reward model of the paper's theory, any architecture. `train_layers=k>0` trains the top k encoder
layers (and pooler and head) on the cached output of the layers below, for BERT-style encoders
(BERT, MiniLM, RoBERTa). Each distinct token sequence goes through the frozen part once per run
(and once ever, with the cache on disk); a sweep point then costs the trainable part only.
Trade-off: the frozen part never adapts, so accuracy is that of the features (see
docs/benchmarks.md); dropout in the frozen part is off.
"""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Optional

import torch

log = logging.getLogger(__name__)


class FrozenPrefix:
    def __init__(self, model, head: torch.nn.Module, train_layers: int):
        self.model, self.head, self.k = model, head, train_layers
        self.base = model.base_model
        if self.k > 0:
            layers = getattr(getattr(self.base, "encoder", None), "layer", None)
            if layers is None or not hasattr(self.base, "embeddings"):
                raise ValueError(f"backbone.train_layers={train_layers} needs a BERT-style encoder "
                                 f"(embeddings + encoder.layer); {type(model).__name__} is not: use 0 or -1")
            if not 0 < self.k <= len(layers):
                raise ValueError(f"backbone.train_layers={train_layers}: the model has {len(layers)} layers")
            self.lower, self.upper = layers[: len(layers) - self.k], layers[len(layers) - self.k:]
        trainable = {id(p) for p in head.parameters()}
        if self.k > 0:
            trainable |= {id(p) for p in self.upper.parameters()}
            pooler = getattr(self.base, "pooler", None)
            trainable |= {id(p) for p in pooler.parameters()} if pooler is not None else set()
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable)
        self.cache: dict[bytes, torch.Tensor] = {}
        self.cache_file: Optional[str] = None
        self._saved = 0

    def attach_cache(self, cache_file: str) -> None:
        """Keep the features in `cache_file` too: loaded now, written by `save()`."""
        self.cache_file = cache_file
        if os.path.exists(cache_file):
            self.cache.update(torch.load(cache_file, map_location="cpu"))
            log.info("loaded %d cached features from %s", len(self.cache), cache_file)
        self._saved = len(self.cache)

    @staticmethod
    def _mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min

    @torch.no_grad()
    def _frozen_part(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Head input (k=0) or the output of the frozen layers (k>0), in eval mode."""
        training = self.model.training
        self.model.eval()
        try:
            if self.k == 0:
                captured = []
                hook = self.head.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
                try:
                    self.model(input_ids=input_ids, attention_mask=attention_mask)
                finally:
                    hook.remove()
                phi = captured[0]
                return phi[:, :1] if phi.dim() == 3 else phi  # heads that pool themselves read [CLS]
            hidden = self.base.embeddings(input_ids=input_ids)
            mask = self._mask(attention_mask, hidden.dtype)
            for layer in self.lower:
                out = layer(hidden, attention_mask=mask)
                hidden = out[0] if isinstance(out, tuple) else out
            return hidden
        finally:
            self.model.train(training)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The frozen part's output for every row, from the cache where it has it."""
        lengths = attention_mask.sum(1).tolist()
        keys = [hashlib.blake2b(row[:n].cpu().numpy().tobytes(), digest_size=16).digest()
                for row, n in zip(input_ids, lengths)]
        missing = [i for i, key in enumerate(keys) if key not in self.cache]
        if missing:
            width = max(lengths[i] for i in missing)
            out = self._frozen_part(input_ids[missing, :width], attention_mask[missing, :width]).float().cpu()
            for j, i in enumerate(missing):
                self.cache[keys[i]] = out[j] if self.k == 0 else out[j, : lengths[i]].clone()
        rows = [self.cache[key] for key in keys]
        if self.k == 0:
            return torch.stack(rows).to(input_ids.device)
        batch = torch.zeros(len(rows), input_ids.shape[1], rows[0].shape[-1])
        for i, row in enumerate(rows):
            batch[i, : len(row)] = row
        return batch.to(input_ids.device)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.features(input_ids, attention_mask)
        if self.k == 0:
            return self.head(hidden)
        mask = self._mask(attention_mask, hidden.dtype)
        for layer in self.upper:
            out = layer(hidden, attention_mask=mask)
            hidden = out[0] if isinstance(out, tuple) else out
        pooler = getattr(self.base, "pooler", None)
        if pooler is None:  # RoBERTa-style heads pool the sequence themselves
            return self.head(hidden)
        dropout = getattr(self.model, "dropout", torch.nn.Identity())
        return self.head(dropout(pooler(hidden)))

    def save(self) -> None:
        """Write the cache when it has grown (atomically: a kill never leaves a torn file)."""
        if self.cache_file and len(self.cache) > self._saved:
            os.makedirs(os.path.dirname(self.cache_file), exist_ok=True)
            torch.save(self.cache, self.cache_file + ".tmp")
            os.replace(self.cache_file + ".tmp", self.cache_file)
            self._saved = len(self.cache)
