"""Evaluation: pairwise metrics with intervals, best-of-N win-rates, RewardBench 1/2 scoring, and
best-of-N over your own prompts (a policy samples, the reward model picks, a judge scores)."""
