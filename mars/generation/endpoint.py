"""The client of an OpenAI-compatible chat endpoint: any server with
``POST {base_url}/chat/completions`` (vLLM, Ollama, llama.cpp, a hosted API). llm_rewrite, the
endpoint policy and the chat judge all send their requests through it.

HTTP 408 and 429 (honouring Retry-After), 5xx, timeouts, connection errors and malformed answers
are retried with exponential backoff; any other 4xx (a bad request or key) is not, since retrying
will not help. The key is read from the environment variable named by `api_key_env` per batch:
it is never stored on the object, logged or part of an identity.
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, Optional, Sequence

import httpx

log = logging.getLogger(__name__)


class Reply(NamedTuple):
    text: Optional[str]  # None: no answer (failed after the retries, or refused with a 4xx)
    retries: int
    tokens: int = 0  # completion tokens, where the server reports them
    cut: bool = False  # stopped at max_tokens (finish_reason "length")


def retry_after(response: httpx.Response) -> float:
    """The seconds a response asks the client to wait (Retry-After), 0 where it names none."""
    try:
        return float(response.headers.get("retry-after", 0))
    except ValueError:  # an HTTP date: fall back to the exponential backoff
        return 0.0


class ChatEndpoint:
    """`complete([(messages, temperature, seed), ...])` → one `Reply` each, `max_concurrency` in
    flight. A request asks for at most `max_tokens` new tokens and times out after `timeout`
    seconds; attempt k failing waits `backoff` × 2^k seconds (longer if Retry-After says so), up to
    `max_retries` retries."""

    def __init__(self, model: str, base_url: str = "http://localhost:8000/v1",
                 api_key_env: str = "OPENAI_API_KEY", max_tokens: int = 1024,
                 max_concurrency: int = 8, timeout: float = 120.0, max_retries: int = 5,
                 backoff: float = 1.0):
        self.model, self.base_url, self.api_key_env = model, base_url.rstrip("/"), api_key_env
        self.max_tokens, self.max_concurrency, self.timeout = max_tokens, max_concurrency, timeout
        self.max_retries, self.backoff = max_retries, backoff

    def complete(self, jobs: Sequence[tuple[list[dict], float, int]]) -> list[Reply]:
        if not jobs:
            return []
        key = os.environ.get(self.api_key_env, "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        with (httpx.Client(base_url=self.base_url, headers=headers, timeout=self.timeout)
              as client, ThreadPoolExecutor(self.max_concurrency) as pool):
            return list(pool.map(lambda job: self._post(client, *job), jobs))

    def _post(self, client: httpx.Client, messages: list[dict], temperature: float,
              seed: int) -> Reply:
        payload = {"model": self.model, "messages": messages, "temperature": temperature,
                   "max_tokens": self.max_tokens, "seed": seed}
        for attempt in range(self.max_retries + 1):
            wait = self.backoff * 2 ** attempt
            try:
                response = client.post("/chat/completions", json=payload)
            except httpx.TimeoutException:
                problem = "timeout"
            except httpx.TransportError as e:
                problem = f"connection error ({type(e).__name__})"
            else:
                if response.status_code in (408, 429) or response.status_code >= 500:
                    problem = f"HTTP {response.status_code}"
                    wait = max(wait, retry_after(response))
                elif response.status_code >= 400:
                    key = os.environ.get(self.api_key_env)
                    body = response.text.replace(key, "***") if key else response.text
                    log.warning("%s: HTTP %d from %s/chat/completions: %s", self.model,
                                response.status_code, self.base_url, body[:300])
                    return Reply(None, attempt)
                else:
                    try:
                        body = response.json()
                        choice = body["choices"][0]
                        content = choice["message"]["content"]
                        tokens = int((body.get("usage") or {}).get("completion_tokens") or 0)
                        return Reply(content or "", attempt, tokens,
                                     choice.get("finish_reason") == "length")
                    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                        problem = "malformed answer"
            if attempt < self.max_retries:
                log.warning("%s: %s from %s; retry %d/%d in %.1f s", self.model, problem,
                            self.base_url, attempt + 1, self.max_retries, wait)
                time.sleep(wait)
        log.warning("%s: giving up after %d retries (%s)", self.model, self.max_retries, problem)
        return Reply(None, self.max_retries)
