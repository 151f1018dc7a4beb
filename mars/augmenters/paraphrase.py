"""Paraphrasing, the paper's augmenter: distinct beam-search paraphrases of each text, by a
seq2seq paraphraser (the paper's) or, when none is at hand, a local chat model ("smollm2")."""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Optional, Sequence

import torch

from mars.augmenters.base import Augmenter, VariantRequest, distinct_variants
from mars.augmenters.quality import Candidate, QualityGate, instruction_of
from mars.generation import local
from mars.generation.local import resolve_device
from mars.generation.seeding import stable_seed

log = logging.getLogger(__name__)

CHAT_INSTRUCTION = """\
Paraphrase the text below: say the same thing in different words, keeping its meaning, facts, \
tone and format. Reply with the paraphrase only.

{text}"""


class ParaphraseAugmenter(Augmenter):
    """`template` (default ``"paraphrase: {text}"``) through a seq2seq model, by beam search.

    A decoder-only chat model (`model: smollm2`, or any causal LM folder) gets `instruction`
    (``None``: the built-in one) as its user turn instead, with the text clipped to
    `max_input_tokens`, and the same beam search over left-padded batches.
    Beam search is deterministic, so the seed does not enter the cache key: a seed sweep reuses the
    paraphrases. Up to `num_return_sequences` distinct variants per text (copies of the input and
    repeats removed) that pass the quality gate (mars/augmenters/quality.py: empty, copy,
    refusal, an echo of the instruction, over `max_length_ratio` or under `min_length_ratio` ×
    the input's characters, talk about the text rather than a paraphrase of it, and,
    with `min_similarity` > 0, similarity to the input); a paraphrase cut at the token limit is
    kept, as in the paper, and counted as `clipped`. All are cached, so asking for fewer first and
    more later costs nothing. The model loads on first use.
    """

    _identity_fields = ("model", "template", "instruction", "num_beams", "num_return_sequences",
                        "no_repeat_ngram_size", "max_new_tokens", "max_new_tokens_prompt",
                        "max_input_tokens", "max_length_ratio", "min_length_ratio",
                        "min_similarity", "similarity_model")

    def __init__(self, model: str = "humarin/chatgpt_paraphraser_on_T5_base",
                 template: str = "paraphrase: {text}", num_beams: int = 5,
                 num_return_sequences: int = 5, no_repeat_ngram_size: int = 3,
                 max_new_tokens: int = 192, max_new_tokens_prompt: int = 128,
                 max_input_tokens: int = 256, batch_size: int = 8,
                 instruction: Optional[str] = None, max_length_ratio: float = 3.0,
                 min_length_ratio: float = 0.3, min_similarity: float = 0.5,
                 similarity_model: str = "minilm",
                 device: str = "auto", cache_path: Optional[str] = None, seed: int = 0):
        super().__init__(cache_path, seed)
        self.model = model
        self.template = template
        self.num_beams = num_beams
        self.num_return_sequences = num_return_sequences
        self.no_repeat_ngram_size = no_repeat_ngram_size
        self.max_new_tokens = max_new_tokens
        self.max_new_tokens_prompt = max_new_tokens_prompt
        self.max_input_tokens = max_input_tokens
        self.batch_size = batch_size
        self.instruction = instruction or CHAT_INSTRUCTION
        self.max_length_ratio = max_length_ratio
        self.min_length_ratio = min_length_ratio
        self.min_similarity = min_similarity
        self.similarity_model = similarity_model
        self.device = resolve_device(device)
        self.gate = QualityGate(min_similarity, max_length_ratio, similarity_model, self.device,
                                min_length_ratio)
        self._tokenizer = self._model = None
        self._chat = False  # a decoder-only chat model rather than a seq2seq paraphraser

    def _load(self) -> None:
        if self._model is None:
            if local.is_seq2seq(self.model):
                self._tokenizer, self._model = local.load_seq2seq(self.model, self.device)
            else:
                self._tokenizer, self._model = local.load(self.model, self.device)
                self._chat = True

    def _generate(self, requests: Sequence[VariantRequest]) -> list[list[str]]:
        self._load()
        by_budget: dict[int, list[int]] = {}  # prompts get a shorter generation budget
        for i, req in enumerate(requests):
            budget = self.max_new_tokens_prompt if req.role == "prompt" else self.max_new_tokens
            by_budget.setdefault(budget, []).append(i)
        out: list[list[str]] = [[] for _ in requests]
        start = last_log = time.monotonic()
        done, tokens_before = 0, self._stats["tokens"]
        for budget, idx in by_budget.items():
            idx.sort(key=lambda i: len(requests[i].text))  # similar lengths per batch: less padding
            for b in range(0, len(idx), self.batch_size):
                chunk = idx[b:b + self.batch_size]
                texts = [requests[i].text for i in chunk]
                paraphrases = (self._paraphrase_chat(texts, budget) if self._chat
                               else self._paraphrase(texts, budget))
                instruction = instruction_of(self.instruction if self._chat else self.template)
                for i, candidates in zip(chunk, paraphrases):
                    req = replace(requests[i], prompt="", other="")  # context-free: not in the key
                    verdicts = self.gate.judge([Candidate(req, c, None, instruction)
                                                for c in candidates], self._stats)
                    kept = [v.text for v in verdicts if v.reason is None]
                    out[i] = distinct_variants(req.text, kept)
                    self._stats["duplicates"] += len(kept) - len(out[i])
                done, now = done + len(chunk), time.monotonic()
                if now - last_log >= self.log_every or done == len(requests):
                    elapsed = max(now - start, 1e-9)
                    log.info("paraphrase (%s): %d/%d texts, %.1f tokens/s, %.2f texts/s",
                             self.model, done, len(requests),
                             (self._stats["tokens"] - tokens_before) / elapsed, done / elapsed)
                    last_log = now
        return out

    def _paraphrase_chat(self, texts: list[str], max_new_tokens: int) -> list[list[str]]:
        tok = self._tokenizer
        prompts = []
        for t in texts:
            ids = tok(t, add_special_tokens=False)["input_ids"]
            clipped = tok.decode(ids[:self.max_input_tokens]) if len(ids) > self.max_input_tokens else t
            content = self.instruction.format(text=clipped)
            prompts.append(local.encode_chat(tok, [{"role": "user", "content": content}]))
        answers = local.generate(tok, self._model, prompts, max_new_tokens,
                                 stable_seed(self.seed, *texts),  # beam search: unused
                                 num_return_sequences=self.num_return_sequences,
                                 num_beams=self.num_beams, do_sample=False,
                                 no_repeat_ngram_size=self.no_repeat_ngram_size)
        for beams in answers:
            self._stats["tokens"] += sum(a.tokens for a in beams)
            self._stats["clipped"] += sum(not a.finished for a in beams)
        return [[a.text for a in beams] for beams in answers]

    @torch.inference_mode()
    def _paraphrase(self, texts: list[str], max_new_tokens: int) -> list[list[str]]:
        enc = self._tokenizer([self.template.format(text=t) for t in texts], truncation=True,
                              max_length=self.max_input_tokens, padding=True, return_tensors="pt",
                              return_token_type_ids=False).to(self.device)  # T5 takes none
        ids = self._model.generate(**enc, num_beams=self.num_beams, do_sample=False,
                                   num_return_sequences=self.num_return_sequences,
                                   no_repeat_ngram_size=self.no_repeat_ngram_size,
                                   max_new_tokens=max_new_tokens)
        decoded = self._tokenizer.batch_decode(ids, skip_special_tokens=True)
        self._stats["tokens"] += int((ids[:, 1:] != self._tokenizer.pad_token_id).sum())
        k = self.num_return_sequences
        return [decoded[i * k:(i + 1) * k] for i in range(len(texts))]
