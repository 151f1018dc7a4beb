"""An OpenAI-compatible chat endpoint for the policy and the judge (vLLM, Ollama, llama.cpp, hosted).

Requests go through llm_rewrite's retrying helper (`LLMRewriteAugmenter._chat_http`: 408/429 with
Retry-After, 5xx, timeouts, connection errors and malformed answers retried with exponential
backoff; other 4xx not retried; the key never logged), called on this object, which carries the
attributes it reads. The key is read from the variable named by `api_key_env` per batch and is
never stored, logged or part of an identity.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, Optional, Sequence

import httpx

from mars.augmenters.llm_rewrite import LLMRewriteAugmenter


class Reply(NamedTuple):
    text: Optional[str]  # None: no answer after the retries
    retries: int
    tokens: int
    cut: bool  # stopped at max_tokens (finish_reason "length")


class Endpoint:
    """`complete([(messages, temperature, seed), ...])` → one `Reply` each, `max_concurrency` in flight."""

    def __init__(self, model: str, base_url: str = "http://localhost:8000/v1", api_key_env: str = "OPENAI_API_KEY",
                 max_tokens: int = 1024, max_concurrency: int = 8, timeout: float = 120.0, max_retries: int = 5,
                 backoff: float = 1.0):
        self.model, self.base_url, self.api_key_env = model, base_url.rstrip("/"), api_key_env
        self.max_tokens, self.max_concurrency, self.timeout = max_tokens, max_concurrency, timeout
        self.max_retries, self.backoff = max_retries, backoff

    def complete(self, jobs: Sequence[tuple[list[dict], float, int]]) -> list[Reply]:
        if not jobs:
            return []
        key = os.environ.get(self.api_key_env, "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        with (httpx.Client(base_url=self.base_url, headers=headers, timeout=self.timeout) as client,
              ThreadPoolExecutor(self.max_concurrency) as pool):
            outcomes = list(pool.map(lambda job: LLMRewriteAugmenter._chat_http(self, client, *job), jobs))
        return [Reply(None if o.failure == "error" else o.text, o.retries, o.tokens, o.failure == "truncated")
                for o in outcomes]
