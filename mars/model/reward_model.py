"""The reward model: r(x, y) = head(φ(x, y)), one scalar per token sequence.

`net` is the Hugging Face `AutoModelForSequenceClassification` of the backbone (so the export is
a plain `from_pretrained` folder for every architecture) with its final one-output linear layer
taken out as `head`; what is left computes φ, the head's input:
- decoder-only LMs: the hidden state of the last real token of each row (by the attention mask,
  so left and right padding give the same reward, and position ids follow the real tokens);
- encoders: the network's own pooled first token (BERT's pooler, RoBERTa's classification dense).
`forward(batch)` returns the rewards and φ, so the prediction pass and the diagnostics need no
hooks. A batch is padded (`input_ids`, `attention_mask`: one row per sequence) or packed
(`input_ids` and `position_ids` of one row holding every sequence, `seq_lengths`): attention then
stays within each sequence, through a variable-length path (flash-attention's where the network
runs on it, else SDPA per sequence: mars.model.attention), or a block-diagonal mask for
attention implementations that have none (eager). A prefix-shared batch (decoders: `input_ids`,
`position_ids`, `segments`) holds each pair as prefix · chosen · rejected; the rewards are read at
the end of each part.
"""
from __future__ import annotations

from typing import Optional, Protocol

import torch
from torch import nn

from mars.config import ConfigError
from mars.model.attention import VARLEN_SDPA, prefix_shared_block_mask, prefix_shared_mask, rejected_masks


class Trunk(Protocol):
    """φ of each row; the fast fine-tuning modes replace the network's own (mars.model.finetune)."""

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...


def final_linear(net: nn.Module) -> tuple[str, nn.Linear]:
    """The network's last one-output linear layer (`score`, `classifier`, `classifier.out_proj`)."""
    found = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear) and m.out_features == 1]
    if not found:
        raise ValueError(f"{type(net).__name__} has no one-output linear head (num_labels=1)")
    return found[-1]


def set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def last_real_token(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last attended position (right or left padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask).argmax(-1)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, … over each row's real tokens (left padding would otherwise shift them)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean [rows, 1, T, T] "may attend" mask as the additive mask attention layers take."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def padding_mask(attention_mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """[rows, 1, T, T]: no attention to padding (nor, for decoders, to the future)."""
    allowed = attention_mask[:, None, None, :].bool()
    if causal:
        t = attention_mask.shape[1]
        allowed = allowed & torch.ones(t, t, dtype=torch.bool, device=attention_mask.device).tril()
    return allowed


def block_mask(seq_lengths: torch.Tensor, causal: bool) -> torch.Tensor:
    """[1, 1, T, T] for packed sequences: each token attends within its own sequence only."""
    seq = torch.repeat_interleave(torch.arange(len(seq_lengths), device=seq_lengths.device), seq_lengths)
    allowed = seq[:, None] == seq[None, :]
    if causal:
        allowed = allowed & torch.ones_like(allowed).tril()
    return allowed[None, None]


def unpack(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A packed or prefix-shared batch as padded rows, chosen ones first (for the fast modes'
    per-row feature cache)."""
    if "segments" in batch:
        pieces = torch.split(batch["input_ids"][0], batch["segments"].reshape(-1).tolist())
        prefix, chosen, rejected = pieces[0::3], pieces[1::3], pieces[2::3]
        rows = [torch.cat(x) for x in zip(prefix, chosen)] + [torch.cat(x) for x in zip(prefix, rejected)]
    else:
        rows = torch.split(batch["input_ids"][0], batch["seq_lengths"].tolist())
    lengths = [len(row) for row in rows]
    ids = torch.zeros(len(rows), max(lengths), dtype=torch.long, device=batch["input_ids"].device)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    return ids, mask


class RewardModel(nn.Module):
    def __init__(self, net: nn.Module, decoder: bool):
        super().__init__()
        self.net, self.decoder = net, decoder
        self.head_path, self.head = final_linear(net)
        if net.config._attn_implementation == "sdpa":  # the same SDPA, with a packed path
            net.set_attn_implementation(VARLEN_SDPA)
        set_submodule(net, self.head_path, nn.Identity())
        self.trunk: Optional[Trunk] = None  # set by the head / top_layers fine-tuning modes

    @property
    def config(self):
        return self.net.config

    def encoder_tail(self, hidden: torch.Tensor) -> torch.Tensor:
        """φ from an encoder's hidden states: its own pooling of the first token (BERT's pooler,
        or RoBERTa's classification dense, which reads the first token itself)."""
        base = self.net.base_model
        if getattr(base, "pooler", None) is None:
            return self.net.classifier(hidden)
        return getattr(self.net, "dropout", nn.Identity())(base.pooler(hidden))

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """φ of padded rows through the whole network (no cache)."""
        if self.decoder:
            hidden = self.net.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                         position_ids=position_ids(attention_mask), use_cache=False).last_hidden_state
            return hidden[torch.arange(len(hidden), device=hidden.device), last_real_token(attention_mask)]
        return self.net(input_ids=input_ids, attention_mask=attention_mask).logits

    def packed_features(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                        seq_lengths: torch.Tensor) -> torch.Tensor:
        """φ of every sequence of one packed row."""
        ends = seq_lengths.cumsum(0) - 1
        kwargs = {"use_cache": False} if self.decoder else {}
        implementation = self.net.config._attn_implementation
        if implementation == VARLEN_SDPA or implementation.startswith("flash_attention"):
            cu = torch.cat([ends.new_zeros(1), ends + 1]).to(torch.int32)
            width = int(seq_lengths.max())
            kwargs.update(attention_mask=None, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                          max_length_q=width, max_length_k=width)
            if implementation == VARLEN_SDPA:
                kwargs["packed_lengths"] = seq_lengths.tolist()
        else:
            kwargs["attention_mask"] = additive_mask(block_mask(seq_lengths, causal=self.decoder), self.net.dtype)
        hidden = self.net.base_model(input_ids=input_ids, position_ids=position_ids, **kwargs).last_hidden_state[0]
        if self.decoder:
            return hidden[ends]
        return self.encoder_tail(hidden[ends - seq_lengths + 1][:, None, :])

    def shared_features(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                        segments: torch.Tensor) -> torch.Tensor:
        """φ of every pair's chosen, then every pair's rejected side, of one prefix-shared row."""
        implementation = self.net.config._attn_implementation
        if implementation == VARLEN_SDPA:
            segs = segments.tolist()
            kwargs = {"attention_mask": None, "prefix_segments": segs,
                      "prefix_masks": rejected_masks(segs, input_ids.device)}
        elif implementation == "eager":
            kwargs = {"attention_mask": additive_mask(prefix_shared_mask(segments, position_ids), self.net.dtype)}
        elif implementation == "flex_attention":
            kwargs = {"attention_mask": prefix_shared_block_mask(segments, position_ids)}
        else:  # flash-attention's variable-length kernel cannot keep the two parts apart
            raise ConfigError(f"data.prefix_sharing=true needs backbone.attn_implementation=null (SDPA), "
                              f"flex_attention or eager, not {implementation}")
        hidden = self.net.base_model(input_ids=input_ids, position_ids=position_ids, use_cache=False,
                                     **kwargs).last_hidden_state[0]
        ends = segments.sum(1).cumsum(0) - 1  # each pair's rejected end; its chosen end r tokens before
        return hidden[torch.cat([ends - segments[:, 2], ends])]

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(rewards [sequences], φ [sequences, hidden]) of a padded, packed or prefix-shared batch."""
        if "segments" in batch and not self.decoder:
            raise ConfigError("data.prefix_sharing=true is for decoder-only reward models: an encoder's prompt "
                              "tokens attend to the response, so they differ between the two sides")
        if "seq_lengths" not in batch and "segments" not in batch:
            phi = (self.trunk or self.features)(batch["input_ids"], batch["attention_mask"])
        elif self.trunk is not None:
            phi = self.trunk(*unpack(batch))
        elif "segments" in batch:
            phi = self.shared_features(batch["input_ids"], batch["position_ids"], batch["segments"])
        else:
            phi = self.packed_features(batch["input_ids"], batch["position_ids"], batch["seq_lengths"])
        return self.head(phi.to(self.head.weight.dtype)).squeeze(-1), phi

    def hf_model(self) -> nn.Module:
        """The network with its head back in place: what `save_pretrained` writes. Call
        `detach_head()` afterwards to keep training."""
        set_submodule(self.net, self.head_path, self.head)
        return self.net

    def detach_head(self) -> None:
        set_submodule(self.net, self.head_path, nn.Identity())
