"""One policy aligned with one reward model through TRL (GRPO or RLOO), resumable, saved as a
`from_pretrained` folder.

Layout of a policy's folder: `checkpoints/checkpoint-<step>` (TRL's, every `rl.save_steps`; a rerun
resumes from the last one), `steps.jsonl` (every logged step: rewards of each function, KL,
completion length, ...), `adapter/` (the LoRA adapter alone) and `policy/` (the policy with the
adapter merged, with its tokenizer: what `from_pretrained`, vLLM or eval.py's policy= load). A
folder with `policy/` is finished and is not trained again.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

import torch
from omegaconf import OmegaConf

from mars.align.reward import RawReward, RewardFunction
from mars.config import ConfigError
from mars.data.format import hh_messages
from mars.generation.embedded import resolve

log = logging.getLogger(__name__)

ALGORITHMS = ("grpo", "rloo")


def trl_classes(algorithm: str):
    """(config class, trainer class) of `algorithm` in the installed TRL."""
    import trl

    if algorithm == "ppo":
        raise ConfigError(f"rl.algorithm=ppo: TRL {trl.__version__} has no PPOTrainer (TRL dropped PPO with its "
                          "value model); use rl.algorithm=rloo (REINFORCE leave-one-out, PPO's clipped policy "
                          "update without the critic) or rl.algorithm=grpo")
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"rl.algorithm={algorithm!r} is not one of {list(ALGORITHMS)}")
    return (trl.GRPOConfig, trl.GRPOTrainer) if algorithm == "grpo" else (trl.RLOOConfig, trl.RLOOTrainer)


def load_policy_tokenizer(policy: str):
    """The starting policy's tokenizer; a policy without a chat template is a ConfigError."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve(policy))
    except OSError as e:
        raise ConfigError(f"start_policy={policy}: not a model folder or reachable Hub model ({e})") from None
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"start_policy={policy} has no chat template: alignment answers chats; give a chat (instruct) "
                          "model, e.g. start_policy=smollm2")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def prompt_tokens(tokenizer, messages: list[dict]) -> int:
    """Tokens of a chat rendered for generation, as TRL renders it."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_prompt(tokenizer, prompt: str, max_tokens: int) -> tuple[list[dict], bool]:
    """The prompt's chat within `max_tokens` (rendered for generation): the oldest turns go first,
    then the start of the last turn; (messages, whether anything was cut)."""
    messages, cut = hh_messages(prompt), False
    while len(messages) > 2 and prompt_tokens(tokenizer, messages) > max_tokens:
        messages, cut = messages[2:], True  # one exchange; the chat still opens with the user
    over = prompt_tokens(tokenizer, messages) - max_tokens
    if over > 0:
        ids = tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"]
        messages[-1] = {**messages[-1], "content": tokenizer.decode(ids[min(over, len(ids) - 1):])}
        cut = True
    return messages, cut


def prompt_dataset(tokenizer, prompts: list[str], max_tokens: int):
    """TRL's conversational prompts with mars's own prompt text beside them (`mars_prompt`)."""
    from datasets import Dataset

    rows, cut = [], 0
    for p in prompts:
        messages, was_cut = fit_prompt(tokenizer, p, max_tokens)
        rows.append({"prompt": messages, "mars_prompt": p})
        cut += was_cut
    if cut:
        log.info("%d of %d training prompts cut to rl.max_prompt_tokens=%d (oldest turns first)", cut, len(rows),
                 max_tokens)
    return Dataset.from_list(rows), cut


def step_log_callback(path: Path):
    from transformers import TrainerCallback

    class StepLog(TrainerCallback):
        """Every logged step as a line of `path`; on resume, lines past the checkpoint are dropped."""

        def on_train_begin(self, args, state, control, **kwargs):
            if path.exists():
                kept = [line for line in path.read_text().splitlines()
                        if json.loads(line)["step"] <= state.global_step]
                path.write_text("".join(line + "\n" for line in kept))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs and state.is_world_process_zero:
                with open(path, "a") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    return StepLog()


def lora_config(lora):
    from peft import LoraConfig

    if lora is None:
        return None
    modules = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=modules,
                      task_type="CAUSAL_LM")


def device() -> str:
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"


def train_policy(folder: Path, policy: str, reward: RewardFunction, gold: Optional[RewardFunction],
                 prompts: list[str], rl, lora, seed: int, report_to: list[str]) -> Path:
    """The aligned policy's folder (`folder/policy`), trained unless it is there already."""
    final = folder / "policy"
    if (final / "config.json").exists():
        log.info("%s: already aligned (%s)", folder.name, final)
        return final
    from transformers.trainer_utils import get_last_checkpoint

    config_class, trainer_class = trl_classes(rl.algorithm)
    tokenizer = load_policy_tokenizer(policy)
    dataset, _ = prompt_dataset(tokenizer, prompts, rl.max_prompt_tokens)
    funcs, weights = [reward], [1.0]
    if reward.normalize or reward.clip is not None:
        funcs, weights = funcs + [RawReward(reward)], weights + [0.0]
    if gold is not None:  # logged beside the proxy, never trained on
        funcs, weights = funcs + [gold], weights + [0.0]
    checkpoints = folder / "checkpoints"
    settings = dict(
        output_dir=str(checkpoints), max_steps=rl.max_steps, learning_rate=rl.learning_rate,
        per_device_train_batch_size=rl.prompts_per_step * rl.completions_per_prompt,
        gradient_accumulation_steps=rl.gradient_accumulation_steps, num_generations=rl.completions_per_prompt,
        max_completion_length=rl.max_new_tokens, temperature=rl.temperature, top_p=rl.top_p, beta=rl.beta,
        reward_weights=weights, logging_steps=1, save_steps=rl.save_steps, save_total_limit=2, seed=seed,
        data_seed=seed, report_to=report_to, run_name=folder.name, bf16=rl.bf16, use_cpu=device() == "cpu")
    extra = OmegaConf.to_container(rl.trl, resolve=True) if rl.trl is not None else {}
    args = config_class(**{**settings, **extra})  # rl.trl has the last word
    model = resolve(policy)
    trainer = trainer_class(model=model, reward_funcs=funcs, args=args, train_dataset=dataset,
                            processing_class=tokenizer, peft_config=lora_config(lora),
                            callbacks=[step_log_callback(folder / "steps.jsonl")])
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if last:
        log.info("%s: resuming from %s", folder.name, last)
    trainer.train(resume_from_checkpoint=last)
    if lora is not None:
        trainer.save_model(str(folder / "adapter"))  # every rank takes part; the main one writes
    if trainer.is_world_process_zero():
        merged = trainer.model.merge_and_unload() if lora is not None else trainer.model
        merged.save_pretrained(str(final))
        tokenizer.save_pretrained(str(final))
    return final
