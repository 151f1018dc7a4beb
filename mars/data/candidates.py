"""Best-of-N candidate sets: one prompt, N candidate responses, optionally a judge's score for each.

A reward model is evaluated on these by picking one candidate per prompt (`mars.evaluation.best_of_n`)
or by ranking the correct candidates above the incorrect ones (`mars.evaluation.rewardbench`), so the
record keeps all N responses of a prompt together instead of splitting them into pairs.

Four readers, all returning `CandidateSet`s (`limit=K` keeps the first K):

- `load_alpacaeval_bon`: RewardBench's AlpacaEval best-of-N file, one instruction a line:
  ``{"id", "instruction", "reference", "candidates": [{"output", "preference", ...}], ...}``;
  `preference` ∈ [1, 2] is the judge's weighted verdict against `reference`, so a candidate's score is
  its judged win probability ``preference − 1``.
- `load_rewardbench2`: RewardBench 2 (``allenai/reward-bench-2`` or a local copy with its columns
  ``id, prompt, chosen: list, rejected: list, num_correct, subset, ...``). Candidates are
  ``chosen + rejected`` in that order, scored 1.0 (correct) and 0.0 (incorrect).
- `load_candidates`: your own best-of-N set, a .jsonl(.gz), .json or .parquet file with one prompt a
  record: ``{"prompt": str, "candidates": [str, ...]}`` and optionally ``"id"`` (default: the record
  number), ``"scores": [float, ...]`` (one per candidate, higher is better, e.g. a judge's win
  probability; needed for win-rates) and ``"reference": str``; other fields go to `meta`.
- `load_prompts`: prompts alone, ``{"prompt": str}`` and optionally ``"id"`` and ``"reference"``,
  for a policy to answer (`mars.evaluation.policy`); their sets have no candidates yet.

Bad records raise `DataFormatError` naming the file and line (``path:line: ...``) or the Hub row.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional

from mars.data.records import DataFormatError
from mars.data.sources import read_rows


@dataclass(frozen=True)
class CandidateSet:
    """A prompt and its N candidates; `scores[i]` is the ground-truth quality of `candidates[i]`.

    `scores` is None where no judge scored the candidates (a reward model can still pick, but no
    win-rate can be computed); `meta` carries source extras (RewardBench 2: `subset`, `num_correct`).
    """

    id: str
    prompt: str
    candidates: list[str]
    scores: Optional[list[float]] = None
    reference: Optional[str] = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def _str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"field '{name}' must be a string, got {type(value).__name__}")
    return value


def _list(value: Any, name: str) -> list:
    if not isinstance(value, list) or not value:
        raise ValueError(f"field '{name}' must be a non-empty list")
    return value


def _score(value: Any, name: str) -> float:
    # bool is an int: a true/false column is a labelling mistake, not a score
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"field '{name}' must be a finite number, got {value!r}")
    return float(value)


def _sets(rows: Iterable[tuple[str, Any]], parse, limit: Optional[int]) -> list[CandidateSet]:
    """Parse each `(location, row)`; stop reading after `limit` records; name the location on error."""
    out = []
    for n, (location, row) in enumerate(itertools.islice(rows, limit)):
        try:
            if not isinstance(row, dict):
                raise ValueError(f"record is {type(row).__name__}, not an object")
            out.append(parse(n, row))
        except ValueError as e:
            raise DataFormatError(f"{location}: {e}") from None
    return out


def _alpacaeval(n: int, row: dict) -> CandidateSet:
    outputs, scores = [], []
    for i, cand in enumerate(_list(row.get("candidates"), "candidates")):
        if not isinstance(cand, dict):
            raise ValueError(f"candidates[{i}] is not an object")
        outputs.append(_str(cand.get("output"), f"candidates[{i}].output"))
        pref = _score(cand.get("preference"), f"candidates[{i}].preference")
        if not 1.0 <= pref <= 2.0:
            raise ValueError(f"candidates[{i}].preference={pref} is outside [1, 2]")
        scores.append(pref - 1.0)
    reference = row.get("reference")
    meta = {k: v for k, v in row.items() if k not in ("id", "instruction", "reference", "candidates")}
    return CandidateSet(id=str(row.get("id", n)), prompt=_str(row.get("instruction"), "instruction"),
                        candidates=outputs, scores=scores,
                        reference=None if reference is None else _str(reference, "reference"), meta=meta)


def _rewardbench2(n: int, row: dict) -> CandidateSet:
    chosen = [_str(c, "chosen[]") for c in _list(row.get("chosen"), "chosen")]
    rejected = [_str(r, "rejected[]") for r in _list(row.get("rejected"), "rejected")]
    _str(row.get("subset"), "subset")  # scores are reported per subset: it is required
    # The official scorer takes the first num_correct candidates as correct: it must match `chosen`.
    if row.get("num_correct", len(chosen)) != len(chosen):
        raise ValueError(f"num_correct={row['num_correct']} but chosen has {len(chosen)} responses")
    meta = {k: v for k, v in row.items() if k not in ("id", "prompt", "chosen", "rejected")}
    meta["num_correct"] = len(chosen)
    return CandidateSet(id=str(row.get("id", n)), prompt=_str(row.get("prompt"), "prompt"),
                        candidates=chosen + rejected, scores=[1.0] * len(chosen) + [0.0] * len(rejected),
                        meta=meta)


def _own(n: int, row: dict) -> CandidateSet:
    if "candidates" not in row:
        raise ValueError("no field 'candidates' (a file of prompts alone needs a policy to sample them: "
                         "eval.py data=prompts policy=... judge=...)")
    candidates = [_str(c, "candidates[]") for c in _list(row.get("candidates"), "candidates")]
    scores = row.get("scores")
    if scores is not None:
        scores = [_score(s, "scores[]") for s in _list(scores, "scores")]
        if len(scores) != len(candidates):
            raise ValueError(f"{len(scores)} scores for {len(candidates)} candidates")
    reference = row.get("reference")
    meta = {k: v for k, v in row.items() if k not in ("id", "prompt", "candidates", "scores", "reference")}
    return CandidateSet(id=str(row.get("id", n)), prompt=_str(row.get("prompt"), "prompt"),
                        candidates=candidates, scores=scores,
                        reference=None if reference is None else _str(reference, "reference"), meta=meta)


def _prompt(n: int, row: dict) -> CandidateSet:
    reference = row.get("reference")
    meta = {k: v for k, v in row.items() if k not in ("id", "prompt", "candidates", "scores", "reference")}
    return CandidateSet(id=str(row.get("id", n)), prompt=_str(row.get("prompt"), "prompt"), candidates=[],
                        reference=None if reference is None else _str(reference, "reference"), meta=meta)


def load_alpacaeval_bon(path: str, limit: Optional[int] = None) -> list[CandidateSet]:
    """The AlpacaEval best-of-N instructions of `path`, scores = judged win probability vs the reference."""
    return _sets(read_rows(path), _alpacaeval, limit)


def load_candidates(path: str, limit: Optional[int] = None) -> list[CandidateSet]:
    """Your own best-of-N set in the record format of the module docstring."""
    return _sets(read_rows(path), _own, limit)


def load_prompts(path: str, limit: Optional[int] = None) -> list[CandidateSet]:
    """Prompts for a policy to answer: `{"prompt"}` records, optionally `"id"` and `"reference"` (an
    answer to judge against); sets with no candidates yet (`candidates`/`scores` fields are ignored)."""
    return _sets(read_rows(path), _prompt, limit)


def _hub_rows(hub_name: str, split: str) -> Iterator[tuple[str, Any]]:
    import datasets  # heavy, and only the Hub path needs it

    rows = datasets.load_dataset(hub_name, split=split)
    return ((f"hub:{hub_name}[{split}]:row {i}", row) for i, row in enumerate(rows))


def load_rewardbench2(path: Optional[str] = None, hub_name: str = "allenai/reward-bench-2",
                      split: str = "test", limit: Optional[int] = None) -> list[CandidateSet]:
    """RewardBench 2 prompts from `path` (JSON, JSONL or Parquet with the Hub's columns), else the Hub."""
    rows = read_rows(path) if path is not None else _hub_rows(hub_name, split)
    return _sets(rows, _rewardbench2, limit)


def load_sets(cfg, prompts_only: bool = False) -> list[CandidateSet]:
    """The best-of-N sets of a data config (`data.source` one of mars.config.CANDIDATE_SOURCES);
    `prompts_only`: a `candidates` file may be prompts alone (a policy supplies the candidates)."""
    if cfg.source == "candidates" and prompts_only:
        return load_prompts(cfg.path, cfg.limit)
    if cfg.source == "alpacaeval_bon":
        return load_alpacaeval_bon(cfg.path, cfg.limit)
    if cfg.source == "rewardbench2":
        return load_rewardbench2(cfg.path, cfg.hub_name or "allenai/reward-bench-2", cfg.split, cfg.limit)
    return load_candidates(cfg.path, cfg.limit)
