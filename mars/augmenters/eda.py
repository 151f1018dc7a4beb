"""EDA (Wei & Zou, 2019): model-free word-level edits that keep a text's meaning and its label.

Each variant applies one operation (delete, swap, insert a word of the text itself, or replace a
word by a synonym from the small list below) to about `alpha` of the words. Whitespace between the
words (newlines, indentation) stays where it was; words are whitespace-separated runs of any script.
"""
from __future__ import annotations

import random
import re
from typing import Sequence

from mars.augmenters.base import Augmenter, VariantRequest, distinct_variants
from mars.generation.seeding import stable_seed

Tokens = list[tuple[str, str]]  # (word, the whitespace after it)

_SYNONYM_GROUPS = (
    "big large huge", "small little tiny", "fast quick rapid", "slow unhurried sluggish",
    "good fine great", "bad poor awful", "happy glad cheerful", "sad unhappy sorrowful",
    "easy simple effortless", "hard difficult tough", "important crucial essential",
    "begin start commence", "end finish conclude", "help assist aid", "show display reveal",
    "use utilize employ", "make create produce", "get obtain acquire", "buy purchase acquire",
    "need require want", "choose select pick", "keep retain preserve", "try attempt",
    "often frequently regularly", "maybe perhaps possibly", "also additionally too",
    "however nevertheless nonetheless", "therefore thus hence", "very really extremely",
    "about approximately roughly", "many numerous several", "idea notion concept",
    "problem issue difficulty", "answer reply response", "method approach technique",
    "way manner means", "example instance illustration", "result outcome consequence",
    "goal aim objective", "task job assignment", "place location spot", "quickly rapidly swiftly",
    "carefully cautiously attentively", "usually typically generally", "clear obvious evident",
    "correct right accurate", "wrong incorrect mistaken", "common frequent widespread",
    "enough sufficient adequate", "whole entire complete", "smart clever intelligent",
    "strange odd unusual", "safe secure protected", "buy purchase", "reply respond answer",
)
_SYNONYMS: dict[str, list[str]] = {}
for _group in _SYNONYM_GROUPS:
    for _word in _group.split():
        _SYNONYMS.setdefault(_word, []).extend(w for w in _group.split() if w != _word)

_AFFIXES = re.compile(r"(\W*)(.*?)(\W*)", re.S)  # punctuation around a word stays in place
_TRIES_PER_VARIANT = 10  # random edits can coincide (or undo each other): attempts per variant


def _delete(tokens: Tokens, rng: random.Random) -> None:
    if len(tokens) < 2:  # never empty a text
        return
    i = rng.randrange(len(tokens))
    if i > 0:  # the wider gap (a line break rather than a space) survives
        tokens[i - 1] = (tokens[i - 1][0], max(tokens[i - 1][1], tokens[i][1], key=len))
    del tokens[i]


def _swap(tokens: Tokens, rng: random.Random) -> None:
    i, j = rng.sample(range(len(tokens)), 2)
    (wi, si), (wj, sj) = tokens[i], tokens[j]
    tokens[i], tokens[j] = (wj, si), (wi, sj)


def _insert(tokens: Tokens, rng: random.Random) -> None:
    word = rng.choice(tokens)[0]
    word = _AFFIXES.fullmatch(word).group(2) or word
    tokens.insert(rng.randrange(len(tokens)), (word, " "))


def _synonym(tokens: Tokens, rng: random.Random) -> None:
    known = [i for i, (w, _) in enumerate(tokens)
             if _AFFIXES.fullmatch(w).group(2).lower() in _SYNONYMS]
    if not known:
        return
    i = rng.choice(known)
    pre, core, post = _AFFIXES.fullmatch(tokens[i][0]).groups()
    new = rng.choice(_SYNONYMS[core.lower()])
    if core[0].isupper():
        new = new[0].upper() + new[1:]
    tokens[i] = (pre + new + post, tokens[i][1])


_OPERATIONS = {"delete": _delete, "swap": _swap, "insert": _insert, "synonym": _synonym}


class EDAAugmenter(Augmenter):
    """Easy data augmentation: `alpha` of the words edited per variant, seeded per (text, attempt).

    Texts of one word only get synonyms (often none: a shortfall); empty texts get no variants.
    """

    _identity_fields = ("alpha", "operations", "seed")

    def __init__(self, alpha: float = 0.1,
                 operations: Sequence[str] = ("delete", "swap", "insert", "synonym"),
                 cache_path: str | None = None, seed: int = 0):
        super().__init__(cache_path, seed)
        unknown = set(operations) - set(_OPERATIONS)
        if unknown or not operations:
            raise ValueError(f"eda operations {sorted(unknown)} are not among {list(_OPERATIONS)}")
        self.alpha = alpha
        self.operations = list(operations)

    def _generate(self, requests: Sequence[VariantRequest]) -> list[list[str]]:
        return [self._variants(req) for req in requests]

    def _variants(self, req: VariantRequest) -> list[str]:
        tokens = re.findall(r"(\S+)(\s*)", req.text)
        ops = [op for op in self.operations if len(tokens) >= 2 or op == "synonym"]
        if not tokens or not ops:
            return []
        edits = max(1, round(self.alpha * len(tokens)))

        def edited(attempt: int) -> str:
            rng = random.Random(stable_seed(self.seed, req.text, attempt))
            out = list(tokens)
            op = _OPERATIONS[rng.choice(ops)]
            for _ in range(edits):
                op(out, rng)
            return "".join(w + s for w, s in out)

        attempts = range(_TRIES_PER_VARIANT * req.n)
        return distinct_variants(req.text, (edited(a) for a in attempts), req.n)
