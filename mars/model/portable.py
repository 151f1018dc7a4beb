"""An export folder that transformers 4 reads as transformers 5 wrote it, so the evaluators that
pin 4.x (RewardBench 0.1.4: transformers 4.51) load it and score what mars scored.

transformers 5 renamed or regrouped a few fields that 4.x still reads under their old names; each
is written under both, with the same value:
- the rotary base and scaling: `rope_parameters` (5) and `rope_theta` / `rope_scaling` (4, which
  otherwise falls back to its default base 10000 and silently changes a decoder's rewards);
- the weights' dtype: `dtype` (5) and `torch_dtype` (4);
- the tokenizer class: `TokenizersBackend` (5 only) is `PreTrainedTokenizerFast` in both;
- the chat template: `chat_template.jinja` (5) and the `chat_template` entry of
  tokenizer_config.json (4);
- a decoder's model inputs: no `token_type_ids`, which Llama and Qwen refuse.
"""
from __future__ import annotations

import json
import os

# The oldest transformers release an export was checked against (bench/export_compat.py).
OLDEST_CHECKED = "4.51.0"
# What a loading machine recorded in tokenizer_config.json: not the tokenizer's, and not portable.
LOAD_STATE = ("is_local", "local_files_only")


def _update(path: str, change) -> None:
    with open(path) as f:
        data = json.load(f)
    change(data)
    with open(path, "w") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")


def portable_config(config: dict) -> None:
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:  # one set for every layer (not per layer type)
        config.setdefault("rope_theta", rope["rope_theta"])
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        config.setdefault("rope_scaling", None if scaling.get("rope_type", "default") == "default" else scaling)
    if "dtype" in config:
        config.setdefault("torch_dtype", config["dtype"])


def portable_tokenizer_config(tokenizer_config: dict, chat_template: str | None, decoder: bool) -> None:
    if tokenizer_config.get("tokenizer_class") == "TokenizersBackend":
        tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if chat_template is not None:
        tokenizer_config.setdefault("chat_template", chat_template)
    if decoder:
        tokenizer_config["model_input_names"] = ["input_ids", "attention_mask"]
    for key in LOAD_STATE:
        tokenizer_config.pop(key, None)


def make_portable(out_dir: str, decoder: bool) -> None:
    """Rewrite the saved config.json and tokenizer_config.json of `out_dir` in the form both
    transformers 4 and 5 read."""
    _update(os.path.join(out_dir, "config.json"), portable_config)
    template_file = os.path.join(out_dir, "chat_template.jinja")
    template = open(template_file).read() if os.path.exists(template_file) else None
    _update(os.path.join(out_dir, "tokenizer_config.json"),
            lambda c: portable_tokenizer_config(c, template, decoder))
