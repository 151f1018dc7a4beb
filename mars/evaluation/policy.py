"""The policy of a best-of-N evaluation: N sampled answers per prompt, cached on disk.

Two backends, one small class each: `LocalPolicy` (a transformers causal LM with a chat template,
e.g. "smollm2", the embedded SmolLM2-135M-Instruct) and `EndpointPolicy` (any OpenAI-compatible
chat endpoint, e.g. a vLLM server). Sample i of a prompt depends only on the policy's settings
(`identity()`), the prompt and i: the local backend draws each row of a left-padded batch with its
own generator seeded by (seed, prompt, i), the endpoint sends that seed with the request. So a
rerun, a larger N or a resumed run reuses every sample already drawn.

Samples are stored in SQLite (`mars.generation.cache.VariantCache`, `cache_path`) under the
settings, the prompt and the sample index, committed batch by batch: a killed run keeps what it
sampled. A request that still fails after the endpoint's retries is not stored; the run stops
after sampling everything else (rerun to fill in the gaps): a best-of-N set never silently has
fewer candidates.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import replace
from typing import Optional, Sequence

from mars.data.candidates import CandidateSet
from mars.data.format import hh_messages
from mars.generation import local
from mars.generation.cache import digest
from mars.generation.cached import CachedGenerator
from mars.generation.endpoint import ChatEndpoint
from mars.generation.local import resolve_device
from mars.generation.seeding import stable_seed

log = logging.getLogger(__name__)

ROLE = "policy"  # the cache's role column: policy samples


class Policy(CachedGenerator):
    """`sample(prompts)` → `n` answers per prompt; members implement `_generate(jobs)`.

    `jobs` are (prompt, sample index) pairs; `_generate` returns one answer each (None: failed),
    committing through `_store` as it goes. `stats`: generated, cache_hits, failures, tokens.
    The identity (the cache key) holds the settings that determine the samples: not `n`.
    """

    kind = "policy"
    _role = ROLE
    _identity_fields: tuple[str, ...] = ("system_prompt", "seed")  # members add theirs
    _counters = ("generated", "cache_hits", "failures", "tokens")
    commit_every = 64  # samples per committed batch (endpoint)

    def __init__(self, n: int = 4, system_prompt: Optional[str] = None, cache_path: Optional[str] = None,
                 seed: int = 0):
        if n < 1:
            raise ValueError(f"policy.n={n}: need at least one sample per prompt")
        super().__init__(cache_path, seed)
        self.n, self.system_prompt = n, system_prompt

    def messages(self, prompt: str) -> list[dict]:
        """The chat of a prompt: an HH-RLHF dialogue turn by turn, anything else one user turn."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + hh_messages(prompt)

    def sample_seed(self, prompt: str, index: int) -> int:
        return stable_seed(self.seed, prompt, index)

    def _key(self, job: tuple[str, int]) -> str:
        prompt, index = job
        return f"{digest(prompt)}:{index}"

    def sample(self, prompts: Sequence[str]) -> list[list[str]]:
        """`n` answers per prompt, in sample order: from the cache, the rest generated."""
        distinct = list(dict.fromkeys(prompts))  # a repeated prompt is sampled once
        found, todo = self._cached((p, i) for p in distinct for i in range(self.n))
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


class LocalPolicy(Policy):
    """A transformers causal LM (`model`: a folder, a Hub name, or "smollm2"), through its chat template.

    Jobs are sorted by prompt length and generated `batch_size` rows per left-padded `generate`
    call, for at most `max_new_tokens` new tokens each; `temperature` 0 is greedy (all samples equal).
    """

    _identity_fields = Policy._identity_fields + ("model", "temperature", "top_p", "max_new_tokens")

    def __init__(self, model: str = "smollm2", n: int = 4, temperature: float = 0.7, top_p: float = 1.0,
                 max_new_tokens: int = 256, system_prompt: Optional[str] = None, batch_size: int = 16,
                 device: str = "auto", cache_path: Optional[str] = None, seed: int = 0):
        super().__init__(n, system_prompt, cache_path, seed)
        self.model, self.temperature, self.top_p, self.max_new_tokens = model, temperature, top_p, max_new_tokens
        self.batch_size, self.device = batch_size, resolve_device(device)
        self._loaded = None

    def identity(self) -> dict:
        """A local folder's weights files (names, sizes, modification times) are part of it: a
        model trained on into the same folder is a new policy, not a cache hit."""
        if not os.path.isdir(self.model):
            return super().identity()
        files = sorted(f for f in os.listdir(self.model) if f.endswith((".safetensors", ".bin")))
        stamp = [(f, os.stat(os.path.join(self.model, f)).st_size, os.stat(os.path.join(self.model, f)).st_mtime_ns)
                 for f in files]
        return {**super().identity(), "weights": digest(json.dumps(stamp))}

    def _generate(self, jobs: list[tuple[str, int]]) -> list[Optional[str]]:
        if self._loaded is None:
            self._loaded = local.load(self.model, self.device)
        tokenizer, model = self._loaded
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"policy model {self.model!r} has no chat template: give a chat (instruct) model")
        ids = {p: local.encode_chat(tokenizer, self.messages(p)) for p, _ in jobs}
        out: list[Optional[str]] = [None] * len(jobs)
        done = 0
        for chunk in local.batches([len(ids[p]) for p, _ in jobs], self.batch_size):
            # no top-k cut (top_k 0): the policy samples its whole distribution, top_p aside
            decoding = local.sampling(self.temperature, [self.sample_seed(*jobs[j]) for j in chunk], model.device,
                                      top_k=0, top_p=self.top_p)
            answers = local.generate(tokenizer, model, [ids[jobs[j][0]] for j in chunk], self.max_new_tokens,
                                     seed=0, **decoding)
            for j, (answer,) in zip(chunk, answers):
                out[j] = answer.text.strip()
                self._stats["tokens"] += answer.tokens
            self._store([(jobs[j], out[j]) for j in chunk])
            done += len(chunk)
            log.info("LocalPolicy: %d/%d samples", done, len(jobs))
        return out


class EndpointPolicy(Policy):
    """An OpenAI-compatible chat endpoint (`model`: the served name); each sample seeded by (seed,
    prompt, index). Answers cut at `max_new_tokens` are kept (they are the policy's answers)."""

    # the served name names the model
    _identity_fields = Policy._identity_fields + ("model", "temperature", "max_new_tokens")

    def __init__(self, model: str, base_url: str = "http://localhost:8000/v1", api_key_env: str = "OPENAI_API_KEY",
                 n: int = 4, temperature: float = 0.7, max_new_tokens: int = 512, system_prompt: Optional[str] = None,
                 max_concurrency: int = 8, timeout: float = 120.0, max_retries: int = 5, backoff: float = 1.0,
                 cache_path: Optional[str] = None, seed: int = 0):
        super().__init__(n, system_prompt, cache_path, seed)
        self.model, self.temperature, self.max_new_tokens = model, temperature, max_new_tokens
        self.endpoint = ChatEndpoint(model, base_url, api_key_env, max_new_tokens, max_concurrency, timeout,
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
