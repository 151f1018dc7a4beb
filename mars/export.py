"""Export a trained reward model as a folder that `from_pretrained` loads (RewardBench, TRL PPO)."""
from __future__ import annotations

import json
import os

import torch


def load_weights(module, ckpt_path: str) -> None:
    """Load a Lightning checkpoint's weights into `module` (same architecture)."""
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False)["state_dict"]
    module.load_state_dict(state, strict=False)


def export_reward_model(module, out_dir: str, extra: dict | None = None) -> str:
    """model.safetensors + config (num_labels=1, pad_token_id) + tokenizer + mars_export.json."""
    os.makedirs(out_dir, exist_ok=True)
    module.model.save_pretrained(out_dir)
    module.tokenizer.save_pretrained(out_dir)
    cfg = module.backbone_cfg
    with open(os.path.join(out_dir, "mars_export.json"), "w") as f:
        json.dump({"max_length": cfg.max_length, "min_prompt_tokens": cfg.min_prompt_tokens,
                   "chat_template": cfg.chat_template, "base_model": cfg.name_or_path, **(extra or {})},
                  f, indent=2)
    return out_dir
