"""Rewrites by an instruction-following model: an OpenAI-compatible endpoint or a local chat model.

The endpoint is any server with ``POST {base_url}/chat/completions`` (vLLM, Ollama, llama.cpp, a
hosted API). The key is read from the environment variable named by `api_key_env` when a batch
starts; it is never stored on the object, logged or part of `identity()`.
"""
from __future__ import annotations

import logging
import os
import string
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Mapping, NamedTuple, Optional, Sequence, Union

import httpx
import torch

from mars.augmenters.base import (Augmenter, VariantRequest, distinct_variants, resolve_device,
                                  stable_seed)

log = logging.getLogger(__name__)

CHOSEN_TEMPLATE = """\
Rewrite the response below in your own words. Keep its meaning, facts and format, and keep it at \
least as good as it is: it must stay clearly better than the alternative response shown after it. \
Reply with the rewritten response only.

Conversation:
{prompt}

Response to rewrite:
{text}

Alternative (worse) response, for reference only:
{other}"""

REJECTED_TEMPLATE = """\
Rewrite the response below in your own words. Keep its meaning, content and shortcomings: it must \
not become better than the alternative response shown after it. Reply with the rewritten response \
only.

Conversation:
{prompt}

Response to rewrite:
{text}

Alternative (better) response, for reference only:
{other}"""

PROMPT_TEMPLATE = """\
Rephrase the user request below without changing what it asks for. Reply with the rephrased \
request only.

{text}"""

# Openings of a refusal; a text that itself opens this way (a safe chosen response) may keep one.
REFUSALS = ("i can't", "i cannot", "i can not", "i'm sorry", "i am sorry", "sorry, but",
            "as an ai", "i'm unable", "i am unable", "i won't", "i will not")


class _Outcome(NamedTuple):
    text: Optional[str]
    failure: Optional[str]  # error | empty | copy | refusal | echo | too_long
    retries: int = 0


def _retry_after(response: httpx.Response) -> float:
    try:
        return float(response.headers.get("retry-after", 0))
    except ValueError:  # an HTTP date: fall back to the exponential backoff
        return 0.0


def _is_refusal(text: str) -> bool:
    return text.strip().lower().startswith(REFUSALS)


class LLMRewriteAugmenter(Augmenter):
    """Each variant is one chat completion of the role's template, seeded by (seed, variant index).

    Templates are ``str.format`` strings with fields ``{text}``, ``{prompt}`` and ``{other}``
    (``None``: the built-in one). `temperature` is a number or a mapping role → number.
    Answers that are empty, a copy, a refusal, an echo of the context or the instruction, or longer
    than `max_length_ratio` × the input are dropped and counted (`failures_<reason>`). HTTP 429
    (honouring Retry-After), 5xx, timeouts, connection errors and malformed answers are retried
    with exponential backoff; a request that still fails is a shortfall, retried on the next call.
    `backend: local` runs the same chat through a transformers causal LM (`model` is its path).
    """

    uses_context = True
    retry_shortfall = True
    _identity_fields = ("backend", "model", "temperature", "max_tokens", "system_prompt",
                        "chosen_template", "rejected_template", "prompt_template",
                        "max_length_ratio", "seed")

    def __init__(self, model: str, base_url: str = "http://localhost:8000/v1",
                 api_key_env: str = "OPENAI_API_KEY", backend: str = "http",
                 temperature: Union[float, Mapping[str, float]] = 0.7, max_tokens: int = 1024,
                 system_prompt: Optional[str] = None, chosen_template: Optional[str] = None,
                 rejected_template: Optional[str] = None, prompt_template: Optional[str] = None,
                 max_length_ratio: float = 3.0, max_concurrency: int = 8, timeout: float = 120.0,
                 max_retries: int = 5, backoff: float = 1.0, device: str = "auto",
                 cache_path: Optional[str] = None, seed: int = 0):
        super().__init__(cache_path, seed)
        if backend not in ("http", "local"):
            raise ValueError(f"llm_rewrite backend={backend!r} is not one of ['http', 'local']")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.backend = backend
        self.temperature = (temperature if isinstance(temperature, (int, float))
                            else dict(temperature))  # a Hydra DictConfig → JSON for identity()
        self.max_tokens = max_tokens
        self.system_prompt = system_prompt
        self.chosen_template = chosen_template or CHOSEN_TEMPLATE
        self.rejected_template = rejected_template or REJECTED_TEMPLATE
        self.prompt_template = prompt_template or PROMPT_TEMPLATE
        self.max_length_ratio = max_length_ratio
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.device = resolve_device(device)
        self._local_model = None

    def _generate(self, requests: Sequence[VariantRequest]) -> list[list[str]]:
        jobs = [(req, i) for req in requests for i in range(req.n)]
        if self.backend == "local":
            outcomes = [self._rewrite(None, req, i) for req, i in jobs]
        else:
            key = os.environ.get(self.api_key_env, "")
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            with (httpx.Client(base_url=self.base_url, headers=headers, timeout=self.timeout)
                  as client, ThreadPoolExecutor(self.max_concurrency) as pool):
                outcomes = list(pool.map(lambda job: self._rewrite(client, *job), jobs))
        out, k = [], 0
        for req in requests:
            texts = []
            for outcome in outcomes[k:k + req.n]:
                self._stats["retries"] += outcome.retries
                if outcome.failure:
                    self._stats["failures"] += 1
                    self._stats[f"failures_{outcome.failure}"] += 1
                else:
                    texts.append(outcome.text)
            out.append(distinct_variants(req.text, texts))
            k += req.n
        return out

    def _rewrite(self, client: Optional[httpx.Client], req: VariantRequest, index: int) -> _Outcome:
        template = getattr(self, f"{req.role}_template")
        messages = [{"role": "user",
                     "content": template.format(text=req.text, prompt=req.prompt, other=req.other)}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        temperature = (self.temperature[req.role] if isinstance(self.temperature, dict)
                       else self.temperature)
        seed = stable_seed(self.seed, index)
        if client is None:
            outcome = _Outcome(self._chat_local(messages, temperature, seed), None)
        else:
            outcome = self._chat_http(client, messages, temperature, seed)
        if outcome.failure:
            return outcome
        return outcome._replace(failure=self._invalid(outcome.text, req, template))

    def _invalid(self, text: str, req: VariantRequest, template: str) -> Optional[str]:
        """Why an answer is not a usable variant of `req.text`, or None."""
        text = text.strip()
        instruction = next(string.Formatter().parse(template))[0].strip().split("\n")[0]
        if not text:
            return "empty"
        if text == req.text.strip():
            return "copy"
        if _is_refusal(text) and not _is_refusal(req.text):
            return "refusal"
        if text in (req.prompt.strip(), req.other.strip()) or (instruction and instruction in text):
            return "echo"
        if len(text) > self.max_length_ratio * len(req.text):
            return "too_long"
        return None

    def _chat_http(self, client: httpx.Client, messages: list[dict], temperature: float,
                   seed: int) -> _Outcome:
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
                    wait = max(wait, _retry_after(response))
                elif response.status_code >= 400:  # a bad request or key: retrying will not help
                    key = os.environ.get(self.api_key_env)
                    body = response.text.replace(key, "***") if key else response.text
                    log.warning("llm_rewrite: HTTP %d from %s/chat/completions: %s",
                                response.status_code, self.base_url, body[:300])
                    return _Outcome(None, "error", attempt)
                else:
                    try:
                        content = response.json()["choices"][0]["message"]["content"]
                        return _Outcome(content or "", None, attempt)
                    except (ValueError, KeyError, IndexError, TypeError):
                        problem = "malformed answer"
            if attempt < self.max_retries:
                log.warning("llm_rewrite: %s from %s; retry %d/%d in %.1f s", problem,
                            self.base_url, attempt + 1, self.max_retries, wait)
                time.sleep(wait)
        log.warning("llm_rewrite: giving up after %d retries (%s)", self.max_retries, problem)
        return _Outcome(None, "error", self.max_retries)

    @torch.inference_mode()
    def _chat_local(self, messages: list[dict], temperature: float, seed: int) -> str:
        if self._local_model is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer  # only this backend
            tokenizer = AutoTokenizer.from_pretrained(self.model)
            model = AutoModelForCausalLM.from_pretrained(self.model).to(self.device).eval()
            self._local_model = tokenizer, model
        tokenizer, model = self._local_model
        enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True,
                                            return_tensors="pt").to(self.device)
        sampling = ({"do_sample": True, "temperature": temperature} if temperature > 0
                    else {"do_sample": False})
        pad = tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id
        # the variant's own seed, without disturbing the global RNG that training relies on
        with torch.random.fork_rng(devices=[self.device] if self.device.startswith("cuda") else []):
            torch.manual_seed(seed)
            ids = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                 max_new_tokens=self.max_tokens, pad_token_id=pad, **sampling)
        return tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
