"""Loading the network (a transformer with a one-output head) and its tokenizer.

A name is a Hub name, a local folder, or one of the embedded models ("minilm", "smollm2"; see
mars/generation/embedded.py).
"""
from __future__ import annotations

import logging
from typing import NamedTuple

import torch
from transformers import (AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel,
                          PreTrainedTokenizerBase)
from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                    MODEL_FOR_MASKED_LM_MAPPING_NAMES)

from mars.config import BackboneConfig, ConfigError
from mars.generation.embedded import resolve

log = logging.getLogger(__name__)

PAD = "<|pad|>"

# mars's own text format as a chat template (for tokenizers without one): the HH-RLHF dialogue
# format, "\n\nHuman: …\n\nAssistant: …". The export carries it, so every tool renders what mars trained on.
MARS_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}{{ '\n\nHuman: ' + m['content'] }}"
    "{% elif m['role'] == 'assistant' %}{{ '\n\nAssistant: ' + m['content'] }}"
    "{% else %}{{ m['content'] }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '\n\nAssistant:' }}{% endif %}"
)


def load_tokenizer(cfg: BackboneConfig) -> PreTrainedTokenizerBase:
    """The tokenizer, with a chat template and a pad token that never occurs in real text.

    Sequence-classification heads (and RewardBench) read the reward at the last token that is not
    the pad token, so a pad equal to EOS or BOS (SmolLM2, Llama 3) would move the reward of every
    sequence ending in EOS: such tokenizers get a dedicated pad token. Without a chat template
    (encoders, or `chat_template=never`), mars's own format is installed as the template.
    """
    tok = AutoTokenizer.from_pretrained(resolve(cfg.tokenizer or cfg.name_or_path),
                                        trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token is None or tok.pad_token_id in (tok.eos_token_id, tok.bos_token_id):
        tok.add_special_tokens({"pad_token": PAD})
        log.info("tokenizer pad token %s is also EOS/BOS or unset: padding with a new %s token",
                 tok.eos_token, PAD)
    if cfg.chat_template == "never" or not getattr(tok, "chat_template", None):
        tok.chat_template = MARS_TEMPLATE
    tok.padding_side = "right"
    return tok


def is_decoder(config) -> bool:
    """Decoder-only LMs (reward at the last real token) vs encoders (reward at the first token)."""
    return (config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            and config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)


# Architectures whose packed and prefix-shared rewards are checked equal to padded ones
# (tests/test_packing.py, tests/test_prefix_sharing.py). Position ids and per-sequence attention
# are not enough for all: RoBERTa derives positions from the padding index, and linear-attention
# layers (Qwen3-Next, Qwen3.5) carry state across the sequences of a packed row.
PACKING_VERIFIED = ("bert", "llama", "qwen2", "qwen3")


class PackingKeys(NamedTuple):
    """The caller's names for the packing switches and the override that forces them."""
    switches: tuple[str, ...] = ("data.packing", "data.prefix_sharing")
    force: str = "data.allow_unverified_packing"


def check_packing(model_type: str, allow_unverified: bool = False, keys: PackingKeys = PackingKeys()) -> None:
    """Packed batches only for an architecture checked to score them exactly (or when forced)."""
    if model_type in PACKING_VERIFIED:
        return
    if allow_unverified:
        log.warning("packed batches on %s, an architecture whose packed rewards mars has not checked against padded "
                    "ones (%s=true): compare a few rewards with %s=false", model_type, keys.force, keys.switches[0])
        return
    raise ConfigError(f"{' / '.join(keys.switches)}: mars has not checked that packed batches give {model_type} "
                      f"the rewards of padded ones (checked: {', '.join(PACKING_VERIFIED)}); position ids and "
                      "per-sequence attention do not make every architecture exact (RoBERTa's positions, linear-"
                      f"attention layers). Use {' '.join(k + '=false' for k in keys.switches)}, or force it unverified "
                      f"with {keys.force}=true")


def model_config(cfg: BackboneConfig, tokenizer: PreTrainedTokenizerBase):
    """The network's config: `num_labels=1`, the tokenizer's pad id, and `config_overrides`."""
    overrides = dict(cfg.config_overrides, num_labels=1)
    if cfg.model_type:  # an architecture built from scratch (tiny test models)
        config = AutoConfig.for_model(cfg.model_type, **overrides)
    else:
        config = AutoConfig.from_pretrained(resolve(cfg.name_or_path), trust_remote_code=cfg.trust_remote_code,
                                            **overrides)
    # A pad token mars added lies past the checkpoint's vocabulary until the embeddings grow
    # (load_network): the embedding layer would refuse it as its padding index before that.
    if tokenizer.pad_token_id < config.get_text_config().vocab_size:
        config.pad_token_id = tokenizer.pad_token_id
    return config


def load_network(cfg: BackboneConfig, tokenizer: PreTrainedTokenizerBase, **kwargs) -> PreTrainedModel:
    """`AutoModelForSequenceClassification` (num_labels=1, pad_token_id set and checked), its
    embeddings grown to the tokenizer's vocabulary when mars added a pad token. `net.loading_info`
    holds the checkpoint keys the network missed and left unused (empty for random weights)."""
    config = model_config(cfg, tokenizer)
    info = {"missing_keys": [], "unexpected_keys": []}
    try:
        if cfg.random_init or cfg.model_type:
            net = AutoModelForSequenceClassification.from_config(
                config, trust_remote_code=cfg.trust_remote_code, attn_implementation=cfg.attn_implementation)
        else:
            net, info = AutoModelForSequenceClassification.from_pretrained(
                resolve(cfg.name_or_path), config=config, trust_remote_code=cfg.trust_remote_code,
                attn_implementation=cfg.attn_implementation, output_loading_info=True, **kwargs)
    except (ValueError, ImportError) as e:  # an unknown name, or flash-attn not installed
        if cfg.attn_implementation and any(w in str(e).lower() for w in ("attn", "flash", "attention")):
            raise type(e)(f"backbone.attn_implementation={cfg.attn_implementation}: {e}") from e
        raise
    if len(tokenizer) > net.get_input_embeddings().num_embeddings:
        net.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        net.config.pad_token_id = tokenizer.pad_token_id
    if net.config.num_labels != 1 or net.config.pad_token_id != tokenizer.pad_token_id:
        raise ValueError(f"{cfg.name_or_path}: reward head needs num_labels=1 and pad_token_id="
                         f"{tokenizer.pad_token_id}, got {net.config.num_labels} and {net.config.pad_token_id}")
    if cfg.dropout is not None:
        set_dropout(net, cfg.dropout)
    net.loading_info = {k: sorted(info[k]) for k in ("missing_keys", "unexpected_keys")}
    return net


def set_dropout(model: torch.nn.Module, p: float) -> None:
    """Every `nn.Dropout` and every float `attention_dropout` (decoder attention) to `p`."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = p
