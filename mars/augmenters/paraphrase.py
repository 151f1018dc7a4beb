"""Seq2seq paraphrasing, the paper's augmenter: distinct beam-search paraphrases of each text."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from mars.augmenters.base import Augmenter, VariantRequest, distinct_variants, resolve_device


class ParaphraseAugmenter(Augmenter):
    """`template` (default ``"paraphrase: {text}"``) through a seq2seq model, by beam search.

    Beam search is deterministic, so the seed does not enter the cache key: a seed sweep reuses the
    paraphrases. Up to `num_return_sequences` distinct variants per text (copies of the input and
    repeats removed); all are cached, so asking for fewer first and more later costs nothing.
    The model loads on first use.
    """

    _identity_fields = ("model", "template", "num_beams", "num_return_sequences",
                        "no_repeat_ngram_size", "max_new_tokens", "max_new_tokens_prompt",
                        "max_input_tokens")

    def __init__(self, model: str = "humarin/chatgpt_paraphraser_on_T5_base",
                 template: str = "paraphrase: {text}", num_beams: int = 5,
                 num_return_sequences: int = 5, no_repeat_ngram_size: int = 3,
                 max_new_tokens: int = 192, max_new_tokens_prompt: int = 128,
                 max_input_tokens: int = 256, batch_size: int = 8, device: str = "auto",
                 cache_path: Optional[str] = None, seed: int = 0):
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
        self.device = resolve_device(device)
        self._tokenizer = self._model = None

    def _load(self) -> None:
        if self._model is None:
            self._tokenizer = AutoTokenizer.from_pretrained(self.model)
            self._model = AutoModelForSeq2SeqLM.from_pretrained(self.model).to(self.device).eval()

    def _generate(self, requests: Sequence[VariantRequest]) -> list[list[str]]:
        self._load()
        by_budget: dict[int, list[int]] = {}  # prompts get a shorter generation budget
        for i, req in enumerate(requests):
            budget = self.max_new_tokens_prompt if req.role == "prompt" else self.max_new_tokens
            by_budget.setdefault(budget, []).append(i)
        out: list[list[str]] = [[] for _ in requests]
        for budget, idx in by_budget.items():
            idx.sort(key=lambda i: len(requests[i].text))  # similar lengths per batch: less padding
            for b in range(0, len(idx), self.batch_size):
                chunk = idx[b:b + self.batch_size]
                paraphrases = self._paraphrase([requests[i].text for i in chunk], budget)
                for i, candidates in zip(chunk, paraphrases):
                    out[i] = distinct_variants(requests[i].text, candidates)
        return out

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
        k = self.num_return_sequences
        return [decoded[i * k:(i + 1) * k] for i in range(len(texts))]
