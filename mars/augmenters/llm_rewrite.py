"""Rewrites by an instruction-following model: an OpenAI-compatible endpoint or a local chat model.

The endpoint is any server with ``POST {base_url}/chat/completions`` (vLLM, Ollama, llama.cpp, a
hosted API), reached through mars/generation/endpoint.py. The key is read from the environment
variable named by `api_key_env` when a batch starts; it is never stored on the object, logged or
part of `identity()`.
`backend: local` generates with a transformers causal LM (`model`: a folder, a Hub name, or
"smollm2", the embedded SmolLM2-135M-Instruct), `batch_size` prompts per `generate` call.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Mapping, NamedTuple, Optional, Sequence, Union

from mars.augmenters.base import Augmenter, VariantRequest, distinct_variants
from mars.augmenters.quality import REFUSALS, Candidate, QualityGate, instruction_of
from mars.generation import local
from mars.generation.endpoint import ChatEndpoint
from mars.generation.local import resolve_device
from mars.generation.seeding import stable_seed

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

__all__ = ["LLMRewriteAugmenter", "REFUSALS", "CHOSEN_TEMPLATE", "REJECTED_TEMPLATE",
           "PROMPT_TEMPLATE"]


class _Outcome(NamedTuple):
    text: Optional[str]
    failure: Optional[str]  # error | truncated (the rules are the gate's, mars/augmenters/quality.py)
    retries: int = 0
    tokens: int = 0  # generated tokens, where known


class LLMRewriteAugmenter(Augmenter):
    """Each variant is one chat completion of the role's template.

    Templates are ``str.format`` strings with fields ``{text}``, ``{prompt}`` and ``{other}``
    (``None``: the built-in one). `temperature` is a number or a mapping role → number.
    Every answer goes through the quality gate (mars/augmenters/quality.py): empty, a copy, a
    refusal, an echo of the context or the instruction, longer than `max_length_ratio` × the
    input, talk about the response rather than one, shorter than `min_length_ratio` × the input,
    cut off at the token limit, or (with `min_similarity` > 0) less similar to the input
    than `min_similarity` by `similarity_model` embeddings: dropped and counted
    (`failures_<reason>`). HTTP 429 (honouring Retry-After), 5xx, timeouts, connection errors and
    malformed answers are retried with exponential backoff; a request that still fails is a
    shortfall, retried on the next call. Over HTTP each variant is seeded by (seed, its index).

    `backend: local` runs the same chat through a transformers causal LM: prompts sorted by length,
    `batch_size` per left-padded `generate` call, sampling (temperature, top-k 50) with a generator
    per variant seeded by (seed, role, text and context, variant index), so a variant does not
    depend on the rest of its batch and a rerun samples the same variants. A batch stops at
    `max_tokens` new tokens, or earlier at `max_length_ratio` × its longest input's tokens (an
    answer that long would be rejected as too long anyway).
    """

    uses_context = True
    retry_shortfall = True
    _identity_fields = ("backend", "model", "temperature", "max_tokens", "system_prompt",
                        "chosen_template", "rejected_template", "prompt_template",
                        "max_length_ratio", "min_length_ratio", "min_similarity",
                        "similarity_model", "seed")

    def __init__(self, model: str, base_url: str = "http://localhost:8000/v1",
                 api_key_env: str = "OPENAI_API_KEY", backend: str = "http",
                 temperature: Union[float, Mapping[str, float]] = 0.7, max_tokens: int = 1024,
                 system_prompt: Optional[str] = None, chosen_template: Optional[str] = None,
                 rejected_template: Optional[str] = None, prompt_template: Optional[str] = None,
                 max_length_ratio: float = 3.0, max_concurrency: int = 8, timeout: float = 120.0,
                 max_retries: int = 5, backoff: float = 1.0, batch_size: int = 16,
                 min_length_ratio: float = 0.3, min_similarity: float = 0.5,
                 similarity_model: str = "minilm",
                 device: str = "auto", cache_path: Optional[str] = None, seed: int = 0):
        super().__init__(cache_path, seed)
        if backend not in ("http", "local"):
            raise ValueError(f"llm_rewrite backend={backend!r} is not one of ['http', 'local']")
        self.model = model
        self.backend = backend
        self.temperature = (temperature if isinstance(temperature, (int, float))
                            else dict(temperature))  # a Hydra DictConfig → JSON for identity()
        self.max_tokens = max_tokens
        self.system_prompt = system_prompt
        self.chosen_template = chosen_template or CHOSEN_TEMPLATE
        self.rejected_template = rejected_template or REJECTED_TEMPLATE
        self.prompt_template = prompt_template or PROMPT_TEMPLATE
        self.max_length_ratio = max_length_ratio
        self.endpoint = ChatEndpoint(model, base_url, api_key_env, max_tokens, max_concurrency,
                                     timeout, max_retries, backoff)
        self.batch_size = batch_size
        self.min_length_ratio = min_length_ratio
        self.min_similarity = min_similarity
        self.similarity_model = similarity_model
        self.device = resolve_device(device)
        self.gate = QualityGate(min_similarity, max_length_ratio, similarity_model, self.device,
                                min_length_ratio)
        self._local_model = None

    def _generate(self, requests: Sequence[VariantRequest]) -> list[list[str]]:
        jobs = [(req, i) for req in requests for i in range(req.n)]
        if self.backend == "local":
            outcomes = self._generate_local(jobs)
        else:
            replies = self.endpoint.complete([(self._messages(req), self._temperature(req),
                                               stable_seed(self.seed, i)) for req, i in jobs])
            outcomes = [_Outcome(r.text, "error" if r.text is None else "truncated" if r.cut
                                 else None, r.retries, r.tokens) for r in replies]
        candidates = [Candidate(req, o.text, o.failure, instruction_of(self._template(req)))
                      for (req, _), o in zip(jobs, outcomes)]
        verdicts = self.gate.judge(candidates, self._stats)
        self._stats["retries"] += sum(o.retries for o in outcomes)
        self._stats["tokens"] += sum(o.tokens for o in outcomes)
        out, k = [], 0
        for req in requests:
            texts = [v.text for v in verdicts[k:k + req.n] if v.reason is None]
            out.append(distinct_variants(req.text, texts))
            self._stats["duplicates"] += len(texts) - len(out[-1])
            k += req.n
        return out

    def _template(self, req: VariantRequest) -> str:
        return getattr(self, f"{req.role}_template")

    def _temperature(self, req: VariantRequest) -> float:
        return (self.temperature[req.role] if isinstance(self.temperature, dict)
                else self.temperature)

    def _messages(self, req: VariantRequest) -> list[dict]:
        content = self._template(req).format(text=req.text, prompt=req.prompt, other=req.other)
        messages = [{"role": "user", "content": content}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages

    def _generate_local(self, jobs: list[tuple[VariantRequest, int]]) -> list[_Outcome]:
        """Batched: jobs grouped by temperature, sorted by prompt length, `batch_size` per call."""
        if self._local_model is None:
            self._local_model = local.load(self.model, self.device)
        tokenizer, model = self._local_model
        prompts = [local.encode_chat(tokenizer, self._messages(req)) for req, _ in jobs]
        sizes = [len(tokenizer(req.text, add_special_tokens=False)["input_ids"]) for req, _ in jobs]
        temperatures = [self._temperature(req) for req, _ in jobs]
        outcomes: list[Optional[_Outcome]] = [None] * len(jobs)
        start = last_log = time.monotonic()
        done = tokens = 0
        for chunk in local.batches(list(map(len, prompts)), self.batch_size, temperatures):
            temperature = temperatures[chunk[0]]
            limit = min(self.max_tokens,
                        math.ceil(self.max_length_ratio * max(sizes[j] for j in chunk)) + 16)
            seeds = [stable_seed(self.seed, jobs[j][0].role, self._text_key(jobs[j][0]), jobs[j][1])
                     for j in chunk]  # a variant's own seed: independent of its batch
            answers = local.generate(tokenizer, model, [prompts[j] for j in chunk], limit, 0,
                                     **local.sampling(temperature, seeds, model.device))
            for j, (answer,) in zip(chunk, answers):
                failure = None
                if not answer.finished:  # cut off: too long for its input, or at max_tokens
                    failure = ("too_long" if answer.tokens > self.max_length_ratio * sizes[j]
                               else "truncated")
                outcomes[j] = _Outcome(answer.text, failure, 0, answer.tokens)
                tokens += answer.tokens
            done, now = done + len(chunk), time.monotonic()
            if now - last_log >= self.log_every or done == len(jobs):
                log.info("llm_rewrite (local %s): %d/%d answers, %.1f tokens/s, %.2f answers/s",
                         self.model, done, len(jobs), tokens / max(now - start, 1e-9),
                         done / max(now - start, 1e-9))
                last_log = now
        return outcomes
