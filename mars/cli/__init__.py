"""Entry points as functions: train, evaluate (train.py and eval.py are thin Hydra shells)."""
