"""Export a trained reward model as a folder that `from_pretrained` loads and any tool scores as
mars does (RewardBench, TRL's PPO, best-of-N sampling).

The folder is a plain `AutoModelForSequenceClassification` (num_labels=1, pad_token_id set; LoRA
merged into the weights) with its tokenizer, whose chat template renders exactly the text mars
trained and evaluated on (mars/data/format.py). `mars_export.json` states that format and the
truncation rule and holds no path of the training machine. `adapter/`, on request, is the peft
adapter (LoRA weights and the head) for the base model.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers

from mars.config import BackboneConfig, FinetuneConfig
from mars.data.format import PairFormatter
from mars.model.backbone import load_tokenizer
from mars.model.build import build_reward_model
from mars.model.finetune import has_lora, lora_config, merge_lora
from mars.model.portable import OLDEST_CHECKED, make_portable
from mars.model.reward_model import RewardModel

FORMAT = ("text = tokenizer.apply_chat_template(messages, tokenize=False) with messages = the prompt's turns "
          "(an HH-RLHF dialogue turn by turn, a plain prompt as one user turn) + {role: assistant, content: "
          "response}; ids = tokenizer(text, add_special_tokens=add_special_tokens); reward = the model's single logit")
TRUNCATION = {"keep_end": "sequences longer than max_length: the prompt is cut from the left down to "
                          "min_prompt_tokens, then the response from the left (its end stays); special tokens are kept",
              "keep_start": "sequences longer than max_length: the prompt is cut from the left down to "
                            "min_prompt_tokens, then the response from the right (its start stays); special tokens "
                            "are kept"}


# A folder that is no mars export (a Hub reward model) is scored up to the common encoder limit.
FOREIGN_MAX_LENGTH = 512


class CheckpointMismatch(RuntimeError):
    """A checkpoint whose weights do not fit the model it is loaded into."""


def load_weights(module, ckpt_path: str) -> None:
    """Load a Lightning checkpoint's weights into `module`, strictly: every key must match."""
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False)["state_dict"]
    own = module.state_dict()
    missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
    if missing or unexpected:  # checked before loading: a mismatch leaves the module as it was
        raise CheckpointMismatch(f"{ckpt_path} does not fit this model: {len(missing)} missing keys "
                                 f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}")
    module.load_state_dict(state)


@dataclass
class LoadedRewardModel:
    """A reward model with what scores it as it was trained: its tokenizer and backbone config."""

    model: RewardModel
    tokenizer: Any
    backbone_cfg: BackboneConfig
    finetune_cfg: FinetuneConfig = field(default_factory=FinetuneConfig)


def load_for_eval(model: str, max_length: int | None = None) -> LoadedRewardModel:
    """The reward model of a Lightning `.ckpt` or a `from_pretrained` folder (an export or a Hub
    name), in eval mode; an export's own max length and truncation rule unless `max_length` is given."""
    if model.endswith(".ckpt"):
        ckpt = torch.load(model, map_location="cpu", weights_only=False)  # our own checkpoints
        hparams = ckpt["hyper_parameters"]
        backbone, finetune = hparams["backbone"], hparams["finetune"]
        if max_length:
            backbone.max_length = max_length
        tokenizer = load_tokenizer(backbone)
        net = build_reward_model(backbone, finetune, tokenizer)
        net.load_state_dict({k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")})
        return LoadedRewardModel(net.eval(), tokenizer, backbone, finetune)
    export = {}
    if os.path.exists(os.path.join(model, "mars_export.json")):
        with open(os.path.join(model, "mars_export.json")) as f:
            export = json.load(f)
    backbone = BackboneConfig(name_or_path=model, kind=export.get("kind", "auto"),
                              max_length=max_length or export.get("max_length", FOREIGN_MAX_LENGTH),
                              **{k: export[k] for k in ("min_prompt_tokens",) if k in export},
                              truncation=export.get("response_truncation", "keep_end"))
    tokenizer = load_tokenizer(backbone)
    return LoadedRewardModel(build_reward_model(backbone, FinetuneConfig(), tokenizer).eval(), tokenizer, backbone)


def export_info(backbone: BackboneConfig, finetune: FinetuneConfig, decoder: bool) -> dict:
    """What mars_export.json records about the model (no paths of this machine)."""
    name = backbone.name_or_path
    return {"base_model": os.path.basename(name.rstrip("/")) if os.path.isabs(name) else name,
            "kind": "decoder" if decoder else "encoder", "finetune": finetune.name,
            "finetune_config": json.loads(json.dumps(vars(finetune), default=str))}


def export_reward_model(module, out_dir: str, extra: dict | None = None, adapter: bool = False) -> str:
    """model.safetensors + config + tokenizer (with its chat template) + mars_export.json of
    `module`: anything holding `model`, `tokenizer`, `backbone_cfg` and `finetune_cfg` (a
    RewardModule, a LoadedRewardModel)."""
    os.makedirs(out_dir, exist_ok=True)
    model = module.model
    if has_lora(model):
        if adapter:
            save_adapter(model, os.path.join(out_dir, "adapter"), module.finetune_cfg)
        model = copy.deepcopy(model)  # the module keeps training-ready adapters
        merge_lora(model)
    try:
        model.hf_model().save_pretrained(out_dir)
    finally:
        model.detach_head()
    module.tokenizer.save_pretrained(out_dir)
    make_portable(out_dir, model.decoder)
    cfg = module.backbone_cfg
    formatter = PairFormatter.of(module.tokenizer, cfg)
    probe = formatter.texts("x", "y")
    with open(os.path.join(out_dir, "mars_export.json"), "w") as f:
        json.dump({"format": FORMAT, "add_special_tokens": formatter.adds_special_tokens("".join(probe)),
                   "truncation": TRUNCATION[cfg.truncation], "response_truncation": cfg.truncation,
                   "max_length": cfg.max_length,
                   "min_prompt_tokens": cfg.min_prompt_tokens, **export_info(cfg, module.finetune_cfg, model.decoder),
                   "transformers_version": transformers.__version__, "oldest_transformers_checked": OLDEST_CHECKED,
                   **(extra or {})},
                  f, indent=2)
    return out_dir


def save_adapter(model, out_dir: str, finetune_cfg) -> None:
    """The peft adapter folder: `PeftModel.from_pretrained(AutoModelForSequenceClassification
    .from_pretrained(base, num_labels=1, pad_token_id=…), out_dir)` rebuilds the reward model."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    config = lora_config(finetune_cfg)
    config.modules_to_save = [model.head_path]
    state = get_peft_model_state_dict(model.net)
    state.update({f"{model.head_path}.{k}": v for k, v in model.head.state_dict().items()})
    os.makedirs(out_dir, exist_ok=True)
    config.save_pretrained(out_dir)
    save_file({f"base_model.model.{k}": v.detach().contiguous().cpu() for k, v in state.items()},
              os.path.join(out_dir, "adapter_model.safetensors"))
