"""Two CPU processes (trainer=ddp_sim, gloo) launched the way users launch GPU runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DATA_DIR, ROOT, compose_config

pytestmark = pytest.mark.slow

BASE = ["backbone=tiny", "data.train_size=96", "data.val_size=40", "data.test_size=40", "data.batch_size=8",
        "callbacks.model_summary=null", "export=false", "logger=csv"]


def run_train(run_dir: Path, *overrides: str) -> dict:
    env = {**os.environ, "MARS_DATA_DIR": str(DATA_DIR), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "train.py", *BASE, *overrides, f"hydra.run.dir={run_dir}",
           f"paths.cache_dir={run_dir}/cache"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((run_dir / "metrics.json").read_text())


def run_single(run_dir: Path, *overrides: str) -> dict:
    """The one-process reference, in this process (a process start less): the same config."""
    from mars.cli.train import train

    train(compose_config("train", [*BASE, *overrides], run_dir))
    return json.loads((run_dir / "metrics.json").read_text())


def test_ddp_rounds_equal_single_process_each_pair_once_without_shared_disk(tmp_path):
    """MARS rounds under DDP against one process. lr = 0: both hold the same (seeded) weights, so
    only the reduction can differ: the same exact metrics, every shard's margins gathered into the
    same rounds and D^t, both ranks on that D^t with each pair once across ranks. Each rank has its
    own augmentation cache (nodes without a shared filesystem): rank 0 generates every variant
    once and broadcasts them."""
    import sqlite3

    rounds = ["allocator=mars", "augmenter=eda", "loop.budget=40", "loop.warmup_epochs=1", "trainer.max_epochs=3",
              "callbacks=audit", "optim.lr=0", "+backbone.config_overrides.initializer_range=0.5"]  # rewards well above float noise
    alone = tmp_path / "single"
    single = run_single(alone, "trainer=cpu", *rounds)
    run = tmp_path / "ddp"
    ddp = run_train(run, "trainer=ddp_sim", *rounds,
                    f"augmenter.cache_path={run}/node${{oc.env:LOCAL_RANK,0}}/augment.sqlite")
    for key in ("val/acc", "val/ties", "val/auc", "val/ece", "test/acc", "test/auc", "test/ece"):
        assert ddp[key] == pytest.approx(single[key], abs=1e-6), key
    for key in ("val/margin_mean", "val/margin_std", "val/snr", "test/margin_mean", "test/snr", "test/reward_std"):
        assert ddp[key] == pytest.approx(single[key], rel=1e-4, abs=1e-7), key
    for epoch, size in ((0, 96), (1, 136), (2, 176)):
        r0, r1 = (json.loads((run / "audit" / f"epoch{epoch}_rank{r}.json").read_text()) for r in (0, 1))
        reference = json.loads((alone / "audit" / f"epoch{epoch}_rank0.json").read_text())
        assert r0["train_set"] == r1["train_set"] == reference["train_set"] and len(r0["train_set"]) == size
        assert not set(r0["seen"]) & set(r1["seen"])
        assert Counter(r0["seen"] + r1["seen"]) == Counter(r0["train_set"])
    for t in (1, 2):
        report, reference = (json.loads((d / "rounds" / f"round_{t:02d}.json").read_text()) for d in (run, alone))
        assert len(report["margins"]) == 96 and sum(report["allocation"]) == 40
        np.testing.assert_allclose(report["margins"], reference["margins"], rtol=1e-4, atol=1e-6)  # every shard's
        assert report["allocation"] == reference["allocation"]
    assert len(list(run.glob("*.log"))) == 2 and not list(run.parent.glob("*/.hydra/../*/.hydra"))
    assert not list(run.glob("**/.hydra_rank*")) and not (ROOT / "outputs").exists()
    with sqlite3.connect(run / "node0" / "augment.sqlite") as db:
        (stored,) = db.execute("select count(*) from variants").fetchone()
    assert stored > 0
    assert not (run / "node1" / "augment.sqlite").exists()  # rank 1 generated nothing and read nothing
