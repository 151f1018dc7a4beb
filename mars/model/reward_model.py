"""The reward model: r(x, y) = head(φ(x, y)), one scalar per token sequence.

`net` is the Hugging Face `AutoModelForSequenceClassification` of the backbone (so the export is
a plain `from_pretrained` folder for every architecture) with its final one-output linear layer
taken out as `head`; what is left computes φ, the head's input:
- decoder-only LMs: the hidden state of the last real token of each row (by the attention mask,
  so left and right padding give the same reward, and position ids follow the real tokens);
- encoders: the network's own pooled first token (BERT's pooler, RoBERTa's classification dense).
`forward` returns the rewards and φ, so the prediction pass and the diagnostics need no hooks.
"""
from __future__ import annotations

from typing import Optional, Protocol

import torch
from torch import nn


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


class RewardModel(nn.Module):
    def __init__(self, net: nn.Module, decoder: bool):
        super().__init__()
        self.net, self.decoder = net, decoder
        self.head_path, self.head = final_linear(net)
        set_submodule(net, self.head_path, nn.Identity())
        self.trunk: Optional[Trunk] = None  # set by the head / top_layers fine-tuning modes

    @property
    def config(self):
        return self.net.config

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """φ through the whole network (no cache)."""
        if self.decoder:
            hidden = self.net.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                         position_ids=position_ids(attention_mask), use_cache=False).last_hidden_state
            return hidden[torch.arange(len(hidden), device=hidden.device), last_real_token(attention_mask)]
        return self.net(input_ids=input_ids, attention_mask=attention_mask).logits

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rewards [rows], φ [rows, hidden])."""
        phi = (self.trunk or self.features)(input_ids, attention_mask)
        return self.head(phi.to(self.head.weight.dtype)).squeeze(-1), phi

    def hf_model(self) -> nn.Module:
        """The network with its head back in place: what `save_pretrained` writes. Call
        `detach_head()` afterwards to keep training."""
        set_submodule(self.net, self.head_path, self.head)
        return self.net

    def detach_head(self) -> None:
        set_submodule(self.net, self.head_path, nn.Identity())
