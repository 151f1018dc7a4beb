"""Generation with local transformers models: llm_rewrite's `backend: local`, paraphrase (a
seq2seq paraphraser or a chat model) and the local best-of-N policy.

Batches are left-padded, one `generate` call each, with the global RNG (training's) left
untouched. Sampling draws each row with its own generator (`sampling`), so that a row's answer
does not depend on the other rows of its batch: a rerun, another batch size or other company in
the batch gives the same answers.
"""
from __future__ import annotations

from typing import Hashable, NamedTuple, Optional, Sequence

import torch

from mars.generation.embedded import resolve


def resolve_device(device: str) -> str:
    """"auto": cuda where available, else cpu; anything else as given."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


class Generated(NamedTuple):
    text: str
    tokens: int  # new tokens, up to and including the end-of-sequence token
    finished: bool  # False: stopped at the token limit


def load(name: str, device: str):
    """A causal LM: (tokenizer with left padding, model in eval mode); embedded names resolved."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"  # generation continues from the last column
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path).to(device).eval()
    return tokenizer, model


def load_seq2seq(name: str, device: str):
    """An encoder-decoder model: (tokenizer, model in eval mode)."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    path = resolve(name)
    return (AutoTokenizer.from_pretrained(path),
            AutoModelForSeq2SeqLM.from_pretrained(path).to(device).eval())


def is_seq2seq(name: str) -> bool:
    from transformers import AutoConfig

    return bool(getattr(AutoConfig.from_pretrained(resolve(name)), "is_encoder_decoder", False))


def encode_chat(tokenizer, messages: list[dict]) -> list[int]:
    """The token ids of a chat ready for the answer; the last (user) turn's plain text when the
    tokenizer has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return tokenizer(messages[-1]["content"])["input_ids"]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


class RowSampler:
    """A logits processor that samples each row with its own generator (temperature, then top-k,
    then top-p, as transformers' sampling) and keeps only that token, so that greedy decoding
    emits it: row j's draws never depend on the other rows of its batch."""

    def __init__(self, generators: list[torch.Generator], temperature: float, top_k: int = 50,
                 top_p: float = 1.0):
        self.generators, self.temperature = generators, temperature
        self.top_k, self.top_p = top_k, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float() / self.temperature
        if 0 < self.top_k < scores.shape[-1]:
            kth = scores.topk(self.top_k, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        if self.top_p < 1.0:  # nucleus: the smallest top set with mass >= top_p
            sorted_p, order = probs.sort(dim=-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p >= self.top_p
            probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
        tokens = torch.cat([torch.multinomial(p, 1, generator=g)
                            for p, g in zip(probs, self.generators)])
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, tokens[:, None], 0.0)


def sampling(temperature: float, seeds: list[int], device, top_k: int = 50,
             top_p: float = 1.0) -> dict:
    """`generate` keyword arguments: greedy for temperature 0, else one generator per row
    (`top_k` 0: no top-k cut)."""
    if temperature <= 0:
        return {"do_sample": False}
    from transformers import LogitsProcessorList

    generators = [torch.Generator(device).manual_seed(s) for s in seeds]
    return {"do_sample": False,
            "logits_processor": LogitsProcessorList([RowSampler(generators, temperature, top_k,
                                                                top_p)])}


def batches(lengths: Sequence[int], batch_size: int,
            groups: Optional[Sequence[Hashable]] = None) -> list[list[int]]:
    """Indices sorted by (group, length), cut into batches of at most `batch_size` rows of one
    group each: similar lengths share a batch, so there is little padding."""
    group = groups if groups is not None else [0] * len(lengths)
    out: list[list[int]] = []
    for j in sorted(range(len(lengths)), key=lambda j: (group[j], lengths[j], j)):
        if out and len(out[-1]) < batch_size and group[out[-1][0]] == group[j]:
            out[-1].append(j)
        else:
            out.append([j])
    return out


def _eos_ids(tokenizer, model) -> set[int]:
    ids = {tokenizer.eos_token_id}
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    return {i for i in ids if i is not None}


@torch.inference_mode()
def generate(tokenizer, model, prompts: list[list[int]], max_new_tokens: int, seed: int,
             num_return_sequences: int = 1, **decoding) -> list[list[Generated]]:
    """`num_return_sequences` answers per prompt, from one left-padded `generate` call."""
    batch = tokenizer.pad({"input_ids": prompts}, padding=True, return_tensors="pt")
    device = model.device
    width = batch["input_ids"].shape[1]
    pad = tokenizer.pad_token_id
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        ids = model.generate(input_ids=batch["input_ids"].to(device),
                             attention_mask=batch["attention_mask"].to(device),
                             max_new_tokens=max_new_tokens, pad_token_id=pad,
                             num_return_sequences=num_return_sequences, **decoding)
    eos = _eos_ids(tokenizer, model)
    out: list[Generated] = []
    for row in ids[:, width:].tolist():
        end = next((k for k, t in enumerate(row) if t in eos), None)
        body = row if end is None else row[:end]
        out.append(Generated(tokenizer.decode(body, skip_special_tokens=True),
                             len(row) if end is None else end + 1, end is not None))
    k = num_return_sequences
    return [out[i * k:(i + 1) * k] for i in range(len(prompts))]
