"""Judges of best-of-N candidates: each candidate's score is its judged win probability against a
baseline answer, as AlpacaEval-BoN's scores are (so `best_of_n`, the report and the plots apply).

The baseline (`baseline`) is the prompt's reference answer (`reference`), the policy's first sample
(`first`: candidate 0, which then scores 0.5 against itself), or `auto`: the reference where the
prompt has one, else the first sample.

- `GoldRewardJudge`: a stronger reward model standing in for human preference, the gold-RM protocol
  of reward-overoptimisation studies (Gao et al. 2022). Win = 1 if the gold reward of the candidate
  is above the baseline's, 0.5 if equal, else 0. The gold rewards go into each set's `meta`
  (`gold_rewards`, `gold_baseline`), so eval.py also reports the mean gold reward of the picks.
- `ChatJudge`: an OpenAI-compatible chat model asked which of two answers is better (A or B).
  Position bias is handled by asking both orders (`order=both`, the default): the score is the mean
  of the two verdicts. `order=fixed` asks once, the candidate always as A (half the requests, and
  the judge's position bias stays in the scores). An answer that names neither A nor B counts 0.5
  and is counted (`invalid`). Verdicts are cached in SQLite under the judge's settings and the texts
  compared; identical texts score 0.5 without a request.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import replace
from typing import Optional, Sequence

import numpy as np

from mars.data.candidates import CandidateSet
from mars.evaluation.models import load_scorer
from mars.generation.cache import digest
from mars.generation.cached import CachedGenerator
from mars.generation.endpoint import ChatEndpoint

log = logging.getLogger(__name__)

BASELINES = ("auto", "reference", "first")

PAIRWISE_TEMPLATE = """\
You are comparing two responses to the same instruction. Choose the response that follows the \
instruction better: more helpful, accurate, relevant and clear. The order of the responses and \
their length must not influence your choice.

# Instruction
{prompt}

# Response A
{a}

# Response B
{b}

Which response is better? Reply with a single letter: A or B."""

# the letter, after any lead-in words ("The better response is B"); "Both ..." names neither
_VERDICT = re.compile(r"^\W*(?:(?i:the|final|better|best|response|output|answer|verdict|is|one)\W*)*([AB])\b")


def parse_verdict(text: Optional[str]) -> Optional[str]:
    """"A" or "B" from a judge's answer ("B", "[[A]]", "**B**", "Response B is better"), else None."""
    m = _VERDICT.match(text or "")
    return m.group(1).upper() if m else None


class Judge:
    """`judged(sets)` → the sets with `scores` (win probability of each candidate vs the baseline)."""

    def __init__(self, baseline: str = "auto"):
        if baseline not in BASELINES:
            raise ValueError(f"judge.baseline={baseline!r} is not one of {list(BASELINES)}")
        self.baseline = baseline
        self._stats: Counter = Counter()

    @property
    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    def baseline_of(self, s: CandidateSet) -> Optional[str]:
        """The reference answer the candidates are judged against; None: candidate 0 is."""
        if self.baseline == "reference" or (self.baseline == "auto" and s.reference is not None):
            if s.reference is None:
                raise ValueError(f"set {s.id!r} has no reference answer (judge.baseline=reference)")
            return s.reference
        return None

    def judged(self, sets: Sequence[CandidateSet]) -> list[CandidateSet]:
        raise NotImplementedError

    def describe(self) -> dict:
        raise NotImplementedError


class GoldRewardJudge(Judge):
    """Win probability from a gold reward model (`model`: an export, a `.ckpt` or a Hub name)."""

    def __init__(self, model: str, baseline: str = "auto", batch_size: int = 64, max_length: Optional[int] = None):
        super().__init__(baseline)
        self.model, self.batch_size, self.max_length = model, batch_size, max_length

    def describe(self) -> dict:
        return {"judge": "gold reward model", "model": self.model, "baseline": self.baseline,
                "win": "gold reward above the baseline's; equal 0.5"}

    def judged(self, sets: Sequence[CandidateSet]) -> list[CandidateSet]:
        refs = [self.baseline_of(s) for s in sets]
        rows = [(s.prompt, c) for s in sets for c in s.candidates]
        rows += [(s.prompt, r) for s, r in zip(sets, refs) if r is not None]
        rewards = load_scorer(self.model, self.max_length, self.batch_size).responses(rows)
        out, k, j = [], 0, sum(len(s.candidates) for s in sets)
        for s, ref in zip(sets, refs):
            g = rewards[k:k + len(s.candidates)]
            k += len(s.candidates)
            if ref is None:
                base = g[0]
            else:
                base, j = rewards[j], j + 1
            scores = np.where(g > base, 1.0, np.where(g == base, 0.5, 0.0))
            out.append(replace(s, scores=scores.tolist(), meta={**s.meta, "gold_rewards": g.tolist(),
                                                                "gold_baseline": float(base)}))
        self._stats["scored"] += len(rows)
        return out


class ChatJudge(Judge, CachedGenerator):
    """Pairwise verdicts of an OpenAI-compatible chat model; `template` has {prompt}, {a} and {b}."""

    kind = _role = "judge"
    _identity_fields = ("model", "template", "system_prompt", "temperature", "max_tokens", "seed")

    def __init__(self, model: str, base_url: str = "http://localhost:8000/v1", api_key_env: str = "OPENAI_API_KEY",
                 baseline: str = "auto", order: str = "both", template: Optional[str] = None,
                 system_prompt: Optional[str] = None, temperature: float = 0.0, max_tokens: int = 16,
                 max_concurrency: int = 8, timeout: float = 120.0, max_retries: int = 5, backoff: float = 1.0,
                 cache_path: Optional[str] = None, seed: int = 0):
        Judge.__init__(self, baseline)
        CachedGenerator.__init__(self, cache_path, seed)
        if order not in ("both", "fixed"):
            raise ValueError(f"judge.order={order!r} is not one of ['both', 'fixed']")
        self.model, self.order, self.template = model, order, template or PAIRWISE_TEMPLATE
        self.system_prompt, self.temperature, self.max_tokens = system_prompt, temperature, max_tokens
        self.endpoint = ChatEndpoint(model, base_url, api_key_env, max_tokens, max_concurrency, timeout,
                                     max_retries, backoff)

    def identity(self) -> dict:
        return {**super().identity(), "judge": "chat"}  # not the class path: existing caches keep hitting

    def _key(self, comparison: tuple[str, str, str]) -> str:
        return digest("\x00".join(comparison))

    def describe(self) -> dict:
        return {**self.identity(), "baseline": self.baseline, "order": self.order,
                "win": "mean over the orders asked of 1 (candidate preferred), 0 (baseline), 0.5 (no verdict)"}

    def _messages(self, prompt: str, a: str, b: str) -> list[dict]:
        messages = [{"role": "user", "content": self.template.format(prompt=prompt, a=a, b=b)}]
        return ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + messages

    def verdicts(self, comparisons: Sequence[tuple[str, str, str]]) -> dict[tuple[str, str, str], Optional[str]]:
        """"A", "B" or None (no verdict) for each distinct (prompt, A, B); cached, the rest asked."""
        answers, todo = self._cached(dict.fromkeys(comparisons))
        failed = 0
        for b in range(0, len(todo), 64):  # committed batch by batch
            chunk = todo[b:b + 64]
            replies = self.endpoint.complete([(self._messages(*c), self.temperature, self.seed) for c in chunk])
            done = [(c, r.text) for c, r in zip(chunk, replies) if r.text is not None]
            self._store(done)
            answers.update(done)
            failed += len(chunk) - len(done)
            self._stats["requests"] += len(chunk)
            self._stats["retries"] += sum(r.retries for r in replies)
        if failed:
            raise RuntimeError(f"{failed} of {len(todo)} judge requests failed after the retries (the others are "
                               "cached): rerun to ask the missing ones")
        verdicts = {c: parse_verdict(t) for c, t in answers.items()}
        self._stats["invalid"] += sum(v is None for v in verdicts.values())
        for c, v in verdicts.items():
            if v is None:
                log.warning("ChatJudge: no verdict (A or B) in %r", answers[c][:200])
        return verdicts

    def judged(self, sets: Sequence[CandidateSet]) -> list[CandidateSet]:
        plans = []  # per set, per candidate: [(comparison, the letter that means the candidate won)]
        for s in sets:
            ref = self.baseline_of(s)
            base = s.candidates[0] if ref is None else ref
            plans.append([[] if c == base else [((s.prompt, c, base), "A")]
                          + ([((s.prompt, base, c), "B")] if self.order == "both" else [])
                          for c in s.candidates])
        verdicts = self.verdicts([cmp for plan in plans for asks in plan for cmp, _ in asks])
        out = []
        for s, plan in zip(sets, plans):
            scores = [float(np.mean([0.5 if verdicts[cmp] is None else float(verdicts[cmp] == win)
                                     for cmp, win in asks])) if asks else 0.5 for asks in plan]
            out.append(replace(s, scores=scores))
        return out
