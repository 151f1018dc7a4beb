"""The quality gate of model-made variants: validation rules, similarity to the source, length.

Every model-based augmenter (llm_rewrite over HTTP or local, paraphrase, and so semantic's
rewriter and inner member) passes its candidates through one `QualityGate` before they are cached:

- cleaning: a chat model's preamble line ("Here's a rewritten version:") or label ("Rewritten
  response:") and quotes around the whole answer are removed (counted as ``cleaned``);
- rules, in this order: ``error`` (no answer), ``empty``, ``copy`` (unchanged), ``refusal`` (a
  refusal of a text that is none), ``echo`` (the prompt, the other response, or the instruction's
  first line repeated), ``too_long`` (over `max_length_ratio` × the source's characters),
  ``meta`` (talk about the response instead of one: "the rewritten response", "the original
  answer", "this response" where the source has no such words), ``too_short`` (under
  `min_length_ratio` × the source's characters: a summary, not a rewrite), ``truncated`` (the
  generator stopped at its token limit, where the member says so);
- ``low_similarity``: cosine similarity of the sentence embeddings of variant and source below
  `min_similarity` (a variant that drifted off-topic never becomes a training pair);
- ``closer_to_other``: with the similarity gate on (`min_similarity` > 0) and the pair's other
  response in the request (llm_rewrite, whose model sees it), a variant at least as similar to
  that other response as to its source (the model rewrote the wrong one: the label may swap).

Each rejection is counted as ``failures`` and ``failures_<reason>`` in the member's `stats` (logged
per round as ``augment_*``), every candidate as ``candidates``. Set `trace` to a list to record
every candidate with its similarity, length ratio and verdict (bench/augmenters.py does).
"""
from __future__ import annotations

import re
import string
from typing import NamedTuple, Optional, Sequence

import torch

from mars.augmenters.base import VariantRequest
from mars.generation.embedded import resolve

# Openings of a refusal; a text that itself opens this way (a safe chosen response) may keep one.
REFUSALS = ("i can't", "i cannot", "i can not", "i'm sorry", "i am sorry", "sorry, but",
            "as an ai", "i'm unable", "i am unable", "i won't", "i will not")
REASONS = ("error", "empty", "copy", "refusal", "echo", "too_long", "meta", "too_short",
           "truncated", "low_similarity", "closer_to_other")
# A rewrite that talks about the response (a small model's habit) rather than being one.
META = ("rewritten response", "rewritten version", "rewritten text", "rewritten answer",
        "original response", "original answer", "original text", "alternative response",
        "previous response", "paraphrased version", "paraphrased text", "this response",
        "the response above", "the given response", "the given text")


_PREAMBLE = re.compile(  # "Sure! Here's the rewritten response:\n", "Rewritten response: "
    r"^\s*(?:(?:sure|certainly|of course|okay|ok)\b[^\n:]{0,20}?[,.!]?\s*)?"
    r"(?:(?:here(?:'s|\u2019s| is| are)|below is)\b[^\n]{0,60}?(?:rewrit|paraphras|rephras|"
    r"revis|version|response|text|request)[^\n]{0,60}?:[ \t]*\n+"
    r"|(?:the\s+)?(?:rewritten|paraphrased|rephrased|revised)\s+(?:version|response|text|"
    r"request|answer|paraphrase)[^\n:]{0,40}:\s*)", re.I)
_QUOTES = {'"': '"', "\u201c": "\u201d", "'": "'"}


def clean(text: str, source: str = "") -> str:
    """`text` without a chat preamble or label line and without quotes wrapping all of it
    (unless `source` is itself wrapped so)."""
    text, src = text.strip(), source.strip()
    stripped = _PREAMBLE.sub("", text, count=1).strip()
    if stripped and not _PREAMBLE.match(src):  # a source opening so keeps the opening
        text = stripped
    if len(text) > 1 and _QUOTES.get(text[0]) == text[-1] and not (src[:1] == text[0]
                                                                   and src[-1:] == text[-1]):
        text = text[1:-1].strip()
    return text


def is_refusal(text: str) -> bool:
    return text.strip().lower().replace("\u2019", "'").startswith(REFUSALS)


def instruction_of(template: str) -> str:
    """The first line of a template's literal opening (what an echo of the instruction repeats)."""
    return next(string.Formatter().parse(template), ("",))[0].strip().split("\n")[0]


class Verdict(NamedTuple):
    text: Optional[str]  # the cleaned candidate
    reason: Optional[str]  # None: accepted


class Candidate(NamedTuple):
    """A generator's answer for `request`; `failure`: already known (``error``, ``truncated``)."""

    request: VariantRequest
    text: Optional[str]
    failure: Optional[str] = None
    instruction: str = ""  # the instruction's first line, for the echo rule


def rule_violation(text: str, req: VariantRequest, instruction: str = "",
                   max_length_ratio: float = 3.0, min_length_ratio: float = 0.0) -> Optional[str]:
    """Why `text` is not a usable variant of `req.text` by the rules (no model), or None."""
    text = text.strip()
    if not text:
        return "empty"
    if text == req.text.strip():
        return "copy"
    if is_refusal(text) and not is_refusal(req.text):
        return "refusal"
    if text in (req.prompt.strip(), req.other.strip()) or (instruction and instruction in text):
        return "echo"
    if len(text) > max_length_ratio * len(req.text):
        return "too_long"
    lower, source = text.lower(), req.text.lower()
    if any(m in lower and m not in source for m in META):
        return "meta"
    if len(text) < min_length_ratio * len(req.text.strip()):
        return "too_short"
    return None


class Embedder:
    """Normalised sentence embeddings, loaded on first use. `model`: "minilm" (the embedded
    all-MiniLM-L6-v2), a sentence-transformers name or a folder."""

    def __init__(self, model: str = "minilm", device: str = "cpu", batch_size: int = 32):
        self.model = model
        self.device = device
        self.batch_size = batch_size
        self._encoder = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_encoder": None}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        if self._encoder is None:
            from sentence_transformers import SentenceTransformer  # only when similarity is used

            self._encoder = SentenceTransformer(resolve(self.model), device=self.device)
        if not texts:
            return torch.zeros(0, 0)
        return self._encoder.encode(texts, batch_size=self.batch_size, convert_to_tensor=True,
                                    normalize_embeddings=True, show_progress_bar=False).float().cpu()

    def similarity(self, sources: Sequence[str], texts: Sequence[str]) -> list[float]:
        """Cosine similarity of each text to its source (each distinct text embedded once)."""
        distinct = list(dict.fromkeys([*sources, *texts]))
        if not texts:
            return []
        emb = self(distinct)
        row = {t: i for i, t in enumerate(distinct)}
        a = emb[[row[s] for s in sources]]
        b = emb[[row[t] for t in texts]]
        return (a * b).sum(-1).clamp(-1, 1).tolist()


class QualityGate:
    """Rules, then (when `min_similarity` > 0 or `trace` is a list) similarity to the source."""

    def __init__(self, min_similarity: float = 0.0, max_length_ratio: float = 3.0,
                 embedder: str = "minilm", device: str = "cpu", min_length_ratio: float = 0.0):
        if not -1.0 <= min_similarity <= 1.0:
            raise ValueError(f"min_similarity={min_similarity} is not a cosine in [-1, 1]")
        self.min_similarity = min_similarity
        self.max_length_ratio = max_length_ratio
        self.min_length_ratio = min_length_ratio
        self.embedder = Embedder(embedder, device)
        self.trace: Optional[list[dict]] = None  # a list: every candidate judged is appended

    def judge(self, candidates: Sequence[Candidate], stats) -> list[Verdict]:
        """Each candidate cleaned, with its rejection reason (None: accepted); counted in `stats`."""
        texts = [None if c.text is None else clean(c.text, c.request.text) for c in candidates]
        stats["cleaned"] += sum(t is not None and t != c.text.strip()
                                for c, t in zip(candidates, texts))
        reasons = [c.failure or ("error" if t is None else rule_violation(
            t, c.request, c.instruction, self.max_length_ratio, self.min_length_ratio))
            for c, t in zip(candidates, texts)]
        measure = self.trace is not None
        sims: list[Optional[float]] = [None] * len(candidates)
        todo = [i for i, t in enumerate(texts) if t
                and (measure or (self.min_similarity > 0 and reasons[i] is None))]
        if todo:
            values = self.embedder.similarity([candidates[i].request.text for i in todo],
                                              [texts[i] for i in todo])
            for i, s in zip(todo, values):
                sims[i] = s
                if reasons[i] is None and self.min_similarity > 0 and s < self.min_similarity:
                    reasons[i] = "low_similarity"
        # a rewrite that reads more like the pair's other response than like its source may have
        # swapped the pair's label: only where the generator saw that response (llm_rewrite)
        towards = [i for i in todo if candidates[i].request.other.strip()
                   and (measure or (self.min_similarity > 0 and reasons[i] is None))]
        sims_other: list[Optional[float]] = [None] * len(candidates)
        if towards:
            values = self.embedder.similarity([candidates[i].request.other for i in towards],
                                              [texts[i] for i in towards])
            for i, s in zip(towards, values):
                sims_other[i] = s
                if reasons[i] is None and self.min_similarity > 0 and s >= sims[i]:
                    reasons[i] = "closer_to_other"
        stats["candidates"] += len(candidates)
        for c, text, reason, sim, sim_other in zip(candidates, texts, reasons, sims, sims_other):
            if reason:
                stats["failures"] += 1
                stats[f"failures_{reason}"] += 1
            if measure:
                self.trace.append({"role": c.request.role, "source": c.request.text,
                                   "prompt": c.request.prompt, "variant": text or "",
                                   "raw": c.text, "similarity": sim,
                                   "similarity_to_other": sim_other,
                                   "length_ratio": len(text or "") / max(1, len(c.request.text)),
                                   "reason": reason})
        return [Verdict(t, r) for t, r in zip(texts, reasons)]
