"""The judged outcome of an alignment run: every policy answers the held-out prompts, and a judge
compares the answers pairwise.

Answers are seeded and cached in SQLite (`mars.evaluation.policy.LocalPolicy`, one answer a prompt,
greedy by default), so a rerun judges without generating again. Each matchup (every aligned policy
against the starting one, and every two aligned policies) is a set of one candidate (A's answer)
against a reference (B's answer), judged by the `judge` group: a gold reward model (1 if A's gold
reward is higher, 0.5 if equal) or a chat judge asked in both orders (position bias cancels). A
prompt's score is A's win probability; win/tie/lose count the prompts above, at and below 0.5, and
the win-rate (ties half) has a bootstrap interval over prompts.
"""
from __future__ import annotations

from itertools import combinations
from typing import Sequence

import numpy as np

from mars.data.candidates import CandidateSet
from mars.evaluation.best_of_n import mean_interval
from mars.evaluation.policy import LocalPolicy

START = "start"  # the starting policy's name in matchups and reports


def answer(policies: dict[str, str], prompts: Sequence[str], answers, seed: int) -> dict[str, list[str]]:
    """Each policy's answer to each prompt (`answers`: the config's sampling settings)."""
    out = {}
    for name, model in policies.items():
        policy = LocalPolicy(model=model, n=1, temperature=answers.temperature, top_p=answers.top_p,
                             max_new_tokens=answers.max_new_tokens, batch_size=answers.batch_size,
                             cache_path=answers.cache_path, seed=seed)
        out[name] = [s[0] for s in policy.sample(list(prompts))]
    return out


def matchups(names: Sequence[str]) -> list[tuple[str, str]]:
    """(A, B): every aligned policy against the start, then every two aligned policies."""
    return [(n, START) for n in names] + list(combinations(names, 2))


def judge_matchups(judge, prompts: Sequence[str], ids: Sequence[str], answers: dict[str, list[str]],
                   pairs: Sequence[tuple[str, str]]) -> tuple[dict[tuple[str, str], np.ndarray], dict[str, np.ndarray]]:
    """({(A, B): A's win probability per prompt}, {policy: gold reward per prompt} where the judge
    is a gold reward model), in one judge call."""
    sets = [CandidateSet(id=f"{a}|{b}|{i}", prompt=p, candidates=[answers[a][k]], reference=answers[b][k])
            for a, b in pairs for k, (i, p) in enumerate(zip(ids, prompts))]
    judged = judge.judged(sets)
    n = len(prompts)
    scores, gold = {}, {}
    for m, (a, b) in enumerate(pairs):
        block = judged[m * n:(m + 1) * n]
        scores[(a, b)] = np.array([s.scores[0] for s in block])
        if all("gold_rewards" in s.meta for s in block):
            gold.setdefault(a, np.array([s.meta["gold_rewards"][0] for s in block]))
            gold.setdefault(b, np.array([s.meta["gold_baseline"] for s in block]))
    return scores, gold


def outcome(scores: np.ndarray, n_boot: int, ci: float, seed: int) -> dict:
    """Win/tie/lose counts and the win-rate (ties half) with its bootstrap interval."""
    return {"prompts": len(scores), "win": int((scores > 0.5).sum()), "tie": int((scores == 0.5).sum()),
            "lose": int((scores < 0.5).sum()), "win_rate": mean_interval(scores, n_boot, ci, seed)}
