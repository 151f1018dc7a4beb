"""The policy of a best-of-N evaluation: N sampled answers per prompt, cached on disk.

Two backends, one small class each: `LocalPolicy` (a transformers causal LM with a chat template,
e.g. "smollm2", the embedded SmolLM2-135M-Instruct) and `EndpointPolicy` (any OpenAI-compatible
chat endpoint, e.g. a vLLM server). Sample i of a prompt depends only on the policy's settings
(`identity()`), the prompt and i: the local backend draws each row of a left-padded batch with its
own generator seeded by (seed, prompt, i), the endpoint sends that seed with the request. So a
rerun, a larger N or a resumed run reuses every sample already drawn.

Samples are stored in SQLite (`mars.augmenters.cache.VariantCache`, `cache_path`) under the
settings, the prompt and the sample index, committed batch by batch: a killed run keeps what it
sampled. A request that still fails after the endpoint's retries is not stored; the run stops
after sampling everything else (rerun to fill in the gaps): a best-of-N set never silently has
fewer candidates.
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import replace
from typing import Optional, Sequence

import torch

from mars.augmenters.base import _digest, resolve_device, stable_seed
from mars.augmenters.cache import VariantCache
from mars.data.candidates import CandidateSet
from mars.data.format import hh_messages
from mars.evaluation.endpoint import Endpoint

log = logging.getLogger(__name__)

ROLE = "policy"  # the cache's role column: policy samples


class Policy:
    """`sample(prompts)` → `n` answers per prompt; members implement `_generate(jobs)`.

    `jobs` are (prompt, sample index) pairs; `_generate` returns one answer each (None: failed),
    committing through `_store` as it goes. `stats`: generated, cache_hits, failures, tokens.
    """

    _identity_fields: tuple[str, ...] = ()
    commit_every = 64  # samples per committed batch (endpoint)

    def __init__(self, n: int = 4, system_prompt: Optional[str] = None, cache_path: Optional[str] = None,
                 seed: int = 0):
        if n < 1:
            raise ValueError(f"policy.n={n}: need at least one sample per prompt")
        self.n, self.system_prompt, self.seed = n, system_prompt, seed
        self._cache = VariantCache(cache_path)
        self._stats: Counter = Counter()

    def identity(self) -> dict:
        """The settings that determine the samples (the cache key; not `n`, never a secret)."""
        cls = type(self)
        return {"policy": f"{cls.__module__}.{cls.__qualname__}", "system_prompt": self.system_prompt,
                "seed": self.seed, **{f: getattr(self, f) for f in self._identity_fields}}

    @property
    def stats(self) -> dict[str, int]:
        return {"generated": 0, "cache_hits": 0, "failures": 0, "tokens": 0, **self._stats}

    def messages(self, prompt: str) -> list[dict]:
        """The chat of a prompt: an HH-RLHF dialogue turn by turn, anything else one user turn."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + hh_messages(prompt)

    def sample_seed(self, prompt: str, index: int) -> int:
        return stable_seed(self.seed, prompt, index)

    def _ident(self) -> str:
        return _digest(json.dumps(self.identity(), sort_keys=True))

    def _store(self, done: Sequence[tuple[tuple[str, int], str]]) -> None:
        self._cache.put(self._ident(), [(ROLE, f"{_digest(p)}:{i}", 1, [text]) for (p, i), text in done])

    def sample(self, prompts: Sequence[str]) -> list[list[str]]:
        """`n` answers per prompt, in sample order: from the cache, the rest generated."""
        ident, found, todo, distinct = self._ident(), {}, [], list(dict.fromkeys(prompts))
        for p in distinct:  # a repeated prompt is sampled once
            for i in range(self.n):
                cached = self._cache.get(ident, ROLE, f"{_digest(p)}:{i}", 1, final=False)
                if cached is None:
                    todo.append((p, i))
                else:
                    found[(p, i)] = cached[0]
        self._stats["cache_hits"] += len(found)
        if todo:
            start = time.monotonic()
            answers = self._generate(todo)
            for job, text in zip(todo, answers):
                if text is not None:
                    found[job] = text
            new = sum(a is not None for a in answers)
            self._stats["generated"] += new
            self._stats["failures"] += len(todo) - new
            log.info("%s: sampled %d answers in %.1f s (%d from the cache)", type(self).__name__, new,
                     time.monotonic() - start, len(found) - new)
        missing = [job for job in todo if job not in found]
        if missing:
            raise RuntimeError(f"{len(missing)} of {len(distinct) * self.n} samples failed after the retries (the "
                               f"{len(found)} others are cached): rerun to sample the missing ones")
        return [[found[(p, i)] for i in range(self.n)] for p in prompts]

    def candidate_sets(self, sets: Sequence[CandidateSet]) -> list[CandidateSet]:
        """The sets with the policy's samples as candidates (no scores yet: a judge adds them)."""
        samples = self.sample([s.prompt for s in sets])
        return [replace(s, candidates=c, scores=None) for s, c in zip(sets, samples)]

    def _generate(self, jobs: list[tuple[str, int]]) -> list[Optional[str]]:
        raise NotImplementedError


class _RowSampler:
    """A logits processor that samples each row with its own generator and keeps only that token,
    so greedy decoding emits it: row j's draws never depend on the other rows of the batch."""

    def __init__(self, generators: list[torch.Generator], temperature: float, top_p: float):
        self.generators, self.temperature, self.top_p = generators, temperature, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:  # nucleus: the smallest top set with mass ≥ top_p
            sorted_p, order = probs.sort(dim=-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p >= self.top_p
            probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
        tokens = torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, self.generators)])
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, tokens[:, None], 0.0)


class LocalPolicy(Policy):
    """A transformers causal LM (`model`: a folder, a Hub name, or "smollm2"), through its chat template.

    Jobs are sorted by prompt length and generated `batch_size` rows per left-padded `generate`
    call, for at most `max_new_tokens` new tokens each; `temperature` 0 is greedy (all samples equal).
    """

    _identity_fields = ("model", "temperature", "top_p", "max_new_tokens")

    def __init__(self, model: str = "smollm2", n: int = 4, temperature: float = 0.7, top_p: float = 1.0,
                 max_new_tokens: int = 256, system_prompt: Optional[str] = None, batch_size: int = 16,
                 device: str = "auto", cache_path: Optional[str] = None, seed: int = 0):
        super().__init__(n, system_prompt, cache_path, seed)
        self.model, self.temperature, self.top_p, self.max_new_tokens = model, temperature, top_p, max_new_tokens
        self.batch_size, self.device = batch_size, resolve_device(device)
        self._loaded = None

    def _encode(self, tokenizer, prompt: str) -> list[int]:
        messages = self.messages(prompt)
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"policy model {self.model!r} has no chat template: give a chat (instruct) model")
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def _generate(self, jobs: list[tuple[str, int]]) -> list[Optional[str]]:
        from transformers import LogitsProcessorList

        from mars.augmenters import local_lm  # the batched left-padded generate of llm_rewrite's local backend

        if self._loaded is None:
            self._loaded = local_lm.load(self.model, self.device)
        tokenizer, model = self._loaded
        ids = {p: self._encode(tokenizer, p) for p, _ in jobs}
        order = sorted(range(len(jobs)), key=lambda j: (len(ids[jobs[j][0]]), j))
        out: list[Optional[str]] = [None] * len(jobs)
        for b in range(0, len(order), self.batch_size):
            chunk = order[b:b + self.batch_size]
            decoding: dict = {"do_sample": False}
            if self.temperature > 0:
                generators = [torch.Generator(model.device).manual_seed(self.sample_seed(*jobs[j])) for j in chunk]
                decoding["logits_processor"] = LogitsProcessorList([_RowSampler(generators, self.temperature,
                                                                                self.top_p)])
            answers = local_lm.generate(tokenizer, model, [ids[jobs[j][0]] for j in chunk], self.max_new_tokens,
                                        seed=0, **decoding)
            for j, (answer,) in zip(chunk, answers):
                out[j] = answer.text.strip()
                self._stats["tokens"] += answer.tokens
            self._store([(jobs[j], out[j]) for j in chunk])
            log.info("LocalPolicy: %d/%d samples", min(b + self.batch_size, len(order)), len(order))
        return out


class EndpointPolicy(Policy):
    """An OpenAI-compatible chat endpoint (`model`: the served name); each sample seeded by (seed,
    prompt, index). Answers cut at `max_new_tokens` are kept (they are the policy's answers)."""

    _identity_fields = ("model", "temperature", "max_new_tokens")  # the served name names the model

    def __init__(self, model: str, base_url: str = "http://localhost:8000/v1", api_key_env: str = "OPENAI_API_KEY",
                 n: int = 4, temperature: float = 0.7, max_new_tokens: int = 512, system_prompt: Optional[str] = None,
                 max_concurrency: int = 8, timeout: float = 120.0, max_retries: int = 5, backoff: float = 1.0,
                 cache_path: Optional[str] = None, seed: int = 0):
        super().__init__(n, system_prompt, cache_path, seed)
        self.model, self.base_url, self.temperature, self.max_new_tokens = model, base_url, temperature, max_new_tokens
        self.endpoint = Endpoint(model, base_url, api_key_env, max_new_tokens, max_concurrency, timeout,
                                 max_retries, backoff)

    def _generate(self, jobs: list[tuple[str, int]]) -> list[Optional[str]]:
        out: list[Optional[str]] = []
        for b in range(0, len(jobs), self.commit_every):
            chunk = jobs[b:b + self.commit_every]
            replies = self.endpoint.complete([(self.messages(p), self.temperature, self.sample_seed(p, i))
                                              for p, i in chunk])
            texts = [None if r.text is None else r.text.strip() for r in replies]
            self._stats["tokens"] += sum(r.tokens for r in replies)
            self._stats["retries"] += sum(r.retries for r in replies)
            self._store([(job, t) for job, t in zip(chunk, texts) if t is not None])
            out += texts
        return out
