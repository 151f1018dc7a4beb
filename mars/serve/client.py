"""A client of `python -m mars.serve` for RL trainers: TRL's reward function form.

    from mars.serve.client import RemoteReward
    trainer = GRPOTrainer(model=..., reward_funcs=RemoteReward("http://127.0.0.1:8000/score"), ...)

Prompts and completions go in the structured form, so the server renders them with the reward
model's own chat template (the rewards mars measured). A conversation (a list of messages) is
passed as its turns; a failing server is retried with backoff, then the error is raised.
"""
from __future__ import annotations

import os
import time
from typing import Optional, Sequence

import httpx

from mars.serve.protocol import as_prompt


def prompt_text(prompt) -> str:
    """A TRL prompt: a string, or a list of chat messages."""
    return prompt if isinstance(prompt, str) else as_prompt(prompt)


def as_text(completion) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


class RemoteReward:
    __name__ = "mars_remote_reward"  # TRL names each reward function in its logs

    def __init__(self, url: str, token_env: Optional[str] = None, timeout: float = 60.0, retries: int = 3,
                 backoff: float = 1.0):
        self.url, self.timeout, self.retries, self.backoff = url, timeout, retries, backoff
        token = os.environ.get(token_env) if token_env else None
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def __call__(self, prompts: Sequence, completions: Sequence, **kwargs) -> list[float]:
        items = [{"prompt": prompt_text(p), "response": as_text(c)} for p, c in zip(prompts, completions)]
        return self.post({"items": items})["rewards"]

    def post(self, body: dict) -> dict:
        for attempt in range(self.retries + 1):
            try:
                response = httpx.post(self.url, json=body, headers=self.headers, timeout=self.timeout)
                if response.status_code < 500:
                    response.raise_for_status()  # a 4xx names the bad field: retrying cannot help
                    return response.json()
                error = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.TransportError as e:
                error = f"{type(e).__name__}: {e}"
            if attempt < self.retries:
                time.sleep(self.backoff * 2 ** attempt)
        raise RuntimeError(f"the reward server at {self.url} failed {self.retries + 1} times; last: {error}")
