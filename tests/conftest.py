"""Shared fixtures: the real Hydra config, composed and shrunk for CPU tests."""
from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

# Under pytest-xdist (`make test`: -n auto) the workers share the cores: each takes its share of
# threads, before torch is imported, and the processes its tests start inherit it. torch's default
# of every core per process oversubscribes them (several times slower here).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

import pytest
from omegaconf import DictConfig

from mars.cli.runtime import compose_run_config, place_run

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")

DATA_DIR = Path(os.environ.get("MARS_DATA_DIR", ROOT.parent / "shared" / "data"))


def require_data() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(f"MARS_DATA_DIR not set or missing: {DATA_DIR} (real-data tests need ../shared/data)")
    return DATA_DIR


@functools.lru_cache(maxsize=None)
def _composed(name: str, overrides: tuple[str, ...]) -> DictConfig:
    return compose_run_config(name, list(overrides), ROOT / "unplaced", DATA_DIR)


def compose_config(name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """The real config, composed once per overrides in a session (Hydra's compose is a good part of
    a small test's time); each caller gets its own copy, its paths under `output_dir`."""
    return place_run(copy.deepcopy(_composed(name, tuple(overrides))), output_dir, DATA_DIR)


TINY = ["backbone=tiny", "augmenter=none", "allocator=none", "data.train_size=96", "data.val_size=32", "data.test_size=32",
        "data.batch_size=8", "trainer.max_epochs=2", "callbacks.model_summary=null", "optim.lr=1e-3"]


@pytest.fixture
def tiny_cfg(tmp_path) -> DictConfig:
    """The real train config with a tiny random backbone on a small demo set."""
    return compose_config("train", TINY, tmp_path)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


def score(module, pairs, batch_size: int = 16):
    """(r⁺, r⁻, truncated pairs) of `pairs` through the one scorer, as eval.py scores them."""
    from mars.data.format import PairFormatter
    from mars.model.scoring import Scorer

    cfg = module.backbone_cfg
    formatter = PairFormatter.of(module.tokenizer, cfg)
    scores = Scorer(formatter, module.tokenizer.pad_token_id, module.model, batch_size).pairs(pairs)
    return scores.r_chosen, scores.r_rejected, formatter.truncated
