"""What trains: one policy per `finetune` member, applied to the reward model once it is built.

| member       | trains                                   | frozen part                                   |
| ------------ | ---------------------------------------- | --------------------------------------------- |
| `full`       | everything                               | none                                          |
| `lora`       | LoRA adapters (peft) and the head        | the backbone's weights                        |
| `qlora`      | LoRA adapters and the head               | the backbone, in 4 bits (bitsandbytes, CUDA)  |
| `head`       | the head alone: a linear reward model on | the whole network, run once per distinct      |
|              | frozen features φ (the paper's theory)   | sequence and cached                           |
| `top_layers` | the top `layers` layers (and encoders'   | embeddings and lower layers, their output     |
|              | pooler) and the head                     | cached                                        |

The reward head always trains. The frozen part of `head` and `top_layers` never adapts, so their
accuracy is that of the features; each distinct token sequence goes through it once per run, and
once ever with the cache on disk (`attach_cache`), so sweeps pay only for the trainable part.
"""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Optional

import torch
from torch import nn

from mars.config import FinetuneConfig
from mars.model.reward_model import RewardModel, additive_mask, last_real_token, padding_mask, position_ids

log = logging.getLogger(__name__)


def load_kwargs(cfg: FinetuneConfig) -> dict:
    """Extra `from_pretrained` arguments of the policy (4-bit loading for qlora)."""
    if cfg.name != "qlora":
        return {}
    if not torch.cuda.is_available():
        raise ValueError("finetune=qlora loads the backbone in 4 bits through bitsandbytes, which needs a CUDA "
                         "GPU; none is visible here: use finetune=lora (same adapters, full-precision backbone)")
    from transformers import BitsAndBytesConfig

    return {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                      bnb_4bit_compute_dtype=torch.bfloat16,
                                                      bnb_4bit_use_double_quant=True)}


def lora_config(cfg: FinetuneConfig):
    from peft import LoraConfig

    return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.target_modules)


# the modes that train on top of frozen features, which runs cache in paths.cache_dir/features
CACHED_FEATURES = ("head", "top_layers")


def apply_finetune(model: RewardModel, cfg: FinetuneConfig) -> None:
    """Mark what trains (and inject LoRA adapters) as `cfg.name` says."""
    if cfg.name in ("lora", "qlora"):
        from peft import inject_adapter_in_model, prepare_model_for_kbit_training

        if cfg.name == "qlora":
            prepare_model_for_kbit_training(model.net, use_gradient_checkpointing=False)
        inject_adapter_in_model(lora_config(cfg), model.net)
        trainable = {id(p) for n, p in model.net.named_parameters() if "lora_" in n}
    elif cfg.name in CACHED_FEATURES:
        model.trunk = CachedTrunk(model, 0 if cfg.name == "head" else cfg.layers)
        trainable = {id(p) for p in model.trunk.trainable_parameters()}
    else:
        trainable = {id(p) for p in model.parameters()}
    trainable |= {id(p) for p in model.head.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)


def merge_lora(model: RewardModel) -> None:
    """Fold LoRA adapters into the weights they adapt (the export is then a plain model)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.net.named_modules()):
        if isinstance(module, BaseTunerLayer) and hasattr(module, "base_layer"):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(model.net.get_submodule(parent) if parent else model.net, child, module.get_base_layer())


def has_lora(model: RewardModel) -> bool:
    return any("lora_" in n for n, _ in model.net.named_parameters())


class CachedTrunk:
    """φ from a frozen lower part (cached per token sequence) and a trainable upper part.

    k = 0: the frozen part is the whole network and its output is φ itself. k > 0: embeddings
    and all but the top k layers are frozen; their output is cached and the top k layers (with
    the encoder's pooler, or the decoder's final norm and last-token pooling) make φ.

    `first_token_only`: on a BERT-style encoder, run the top layer at the first position only
    (`first_token_layer`, all the pooler reads); False runs the whole top layer (same rewards up
    to rounding, more work: a switch for comparing the two).
    """

    def __init__(self, model: RewardModel, k: int, first_token_only: bool = True):
        self.model, self.k, self.first_token_only = model, k, first_token_only
        base = model.net.base_model
        self.layers = self._layer_stack(base)
        if k:
            if self.layers is None:
                raise ValueError(f"finetune=top_layers needs a BERT-style encoder (embeddings + encoder.layer) or a "
                                 f"decoder (embed_tokens + layers); {type(model.net).__name__} is neither: use "
                                 "finetune=head or full")
            if not 0 < k <= len(self.layers):
                raise ValueError(f"finetune.layers={k}: the model has {len(self.layers)} layers")
        self.cache: dict[bytes, torch.Tensor] = {}
        self.cache_file: Optional[str] = None
        self._saved = 0

    @staticmethod
    def _layer_stack(base) -> Optional[nn.ModuleList]:
        if hasattr(base, "embeddings") and hasattr(getattr(base, "encoder", None), "layer"):
            return base.encoder.layer
        if hasattr(base, "embed_tokens") and isinstance(getattr(base, "layers", None), nn.ModuleList):
            return base.layers
        return None

    @property
    def upper(self) -> nn.ModuleList:
        return self.layers[len(self.layers) - self.k:]

    def trainable_parameters(self):
        if not self.k:
            return []
        base = self.model.net.base_model
        extra = [getattr(base, "pooler", None), getattr(base, "norm", None)]
        if not self.model.decoder and getattr(base, "pooler", None) is None:
            extra.append(getattr(self.model.net, "classifier", None))  # RoBERTa-style heads pool themselves
        return [p for m in [self.upper, *extra] if m is not None for p in m.parameters()]

    def identity(self) -> list:
        """What the cached features depend on (the cache file's name)."""
        return [self.k, type(self.model.net).__name__, self.model.net.config.to_json_string()]

    def attach_cache(self, folder: str, identity: list, rank_suffix: str = "") -> None:
        """Keep the features in `folder` too: loaded now, written by `save()`."""
        name = hashlib.blake2b(repr(identity + self.identity()).encode(), digest_size=8).hexdigest()
        self.cache_file = os.path.join(folder, f"{name}{rank_suffix}.pt")
        if os.path.exists(self.cache_file):
            self.cache.update(torch.load(self.cache_file, map_location="cpu"))
            log.info("loaded %d cached features from %s", len(self.cache), self.cache_file)
        self._saved = len(self.cache)

    def save(self) -> None:
        """Write the cache when it has grown (atomically: a kill never leaves a torn file)."""
        if self.cache_file and len(self.cache) > self._saved:
            os.makedirs(os.path.dirname(self.cache_file), exist_ok=True)
            torch.save(self.cache, self.cache_file + ".tmp")
            os.replace(self.cache_file + ".tmp", self.cache_file)
            self._saved = len(self.cache)

    @torch.no_grad()
    def _frozen(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """φ (k = 0) or the output of the frozen layers (k > 0), in eval mode."""
        net = self.model.net
        training = net.training
        net.eval()
        try:
            if not self.k:
                return self.model.features(input_ids, attention_mask)
            base = net.base_model
            if self.model.decoder:
                hidden = base.embed_tokens(input_ids)
            else:
                hidden = base.embeddings(input_ids=input_ids)
            return self._run(self.layers[: len(self.layers) - self.k], hidden, attention_mask)
        finally:
            net.train(training)

    def _run(self, layers, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = additive_mask(padding_mask(attention_mask, causal=self.model.decoder), hidden.dtype)
        kwargs = {}
        if self.model.decoder:
            pos = position_ids(attention_mask)
            kwargs = {"position_ids": pos, "position_embeddings": self.model.net.base_model.rotary_emb(hidden, pos)}
        for layer in layers:
            out = layer(hidden, attention_mask=mask, **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lengths = attention_mask.sum(1).tolist()
        keys = [hashlib.blake2b(row[:n].cpu().numpy().tobytes(), digest_size=16).digest()
                for row, n in zip(input_ids, lengths)]
        missing = [i for i, key in enumerate(keys) if key not in self.cache]
        if missing:
            width = max(lengths[i] for i in missing)
            out = self._frozen(input_ids[missing, :width], attention_mask[missing, :width]).float().cpu()
            for j, i in enumerate(missing):
                self.cache[keys[i]] = out[j] if not self.k else out[j, : lengths[i]].clone()
        rows = [self.cache[key] for key in keys]
        if not self.k:
            return torch.stack(rows).to(input_ids.device)
        hidden = torch.zeros(len(rows), input_ids.shape[1], rows[0].shape[-1])
        for i, row in enumerate(rows):
            hidden[i, : len(row)] = row
        hidden = hidden.to(input_ids.device)
        if self.model.decoder:
            hidden = self.model.net.base_model.norm(self._run(self.upper, hidden, attention_mask))
            return hidden[torch.arange(len(hidden), device=hidden.device), last_real_token(attention_mask)]
        top = self.upper[-1]
        if not (self.first_token_only and bert_style(top)):
            return self.model.encoder_tail(self._run(self.upper, hidden, attention_mask))
        hidden = self._run(self.upper[:-1], hidden, attention_mask)
        return self.model.encoder_tail(first_token_layer(top, hidden, attention_mask))


def bert_style(layer: nn.Module) -> bool:
    """Whether `layer` is a BERT-style encoder layer (attention.self.query/key/value, intermediate,
    output): the layers `first_token_layer` runs."""
    attention = getattr(layer, "attention", None)
    return all(hasattr(attention, "self") and hasattr(attention.self, n) for n in ("query", "key", "value")) \
        and hasattr(layer, "intermediate") and hasattr(layer, "output")


def first_token_layer(layer: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """A BERT-style layer's output at the first position only, [rows, 1, hidden]: all an encoder's
    pooling reads, so the top layer's queries and feed-forward run on one token instead of all."""
    attention = layer.attention.self
    rows, width, _ = hidden.shape
    heads, size = attention.num_attention_heads, attention.attention_head_size
    split = lambda x: x.view(rows, -1, heads, size).transpose(1, 2)  # noqa: E731
    first = hidden[:, :1]
    context = nn.functional.scaled_dot_product_attention(
        split(attention.query(first)), split(attention.key(hidden)), split(attention.value(hidden)),
        attn_mask=attention_mask[:, None, None, :].bool(), scale=attention.scaling,
        dropout_p=attention.dropout.p if layer.training else 0.0)
    out = layer.attention.output(context.transpose(1, 2).reshape(rows, 1, heads * size), first)
    return layer.output(layer.intermediate(out), out)
