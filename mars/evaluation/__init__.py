"""Evaluation: pairwise metrics with intervals, best-of-N win-rates, RewardBench 1/2 scoring."""
