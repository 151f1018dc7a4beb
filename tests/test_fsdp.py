"""FSDP2 on two CPU processes (trainer=fsdp_sim: ModelParallelStrategy + fully_shard, gloo), the
code path of trainer=fsdp on GPUs: exact metrics, D^t exactness, the prediction pass under
sharding, sharded checkpoints, resume and the export, with prefix-shared batches."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from tests.conftest import score
from tests.test_ddp import run_single, run_train

pytestmark = pytest.mark.slow

DECODER = ["backbone=tiny_llama", "+backbone.config_overrides.initializer_range=0.3"]
LOOP = ["allocator=mars", "augmenter=eda", "loop.budget=40", "loop.warmup_epochs=1", "trainer.max_epochs=2",
        "callbacks=audit", "optim.lr=1e-3", "data.prefix_sharing=true"]  # rounds and resume with shared prefixes


def test_sharded_metrics_and_export_equal_single_process(tmp_path):
    from mars.data.demo import demo_splits
    from mars.model.export import load_for_eval

    frozen = [*DECODER, "augmenter=none", "allocator=none", "optim.lr=0", "trainer.max_epochs=1", "export=true"]
    single = run_single(tmp_path / "single", "trainer=cpu", *frozen)
    # prefix-shared batches under the sharded model: the same exact metrics as unshared padded ones
    sharded = run_train(tmp_path / "fsdp", "trainer=fsdp_sim", *frozen, "data.prefix_sharing=true")
    for key in ("val/acc", "val/auc", "test/acc", "test/auc", "test/ece"):
        assert sharded[key] == pytest.approx(single[key], abs=1e-6), key
    for key in ("val/margin_mean", "val/snr", "test/margin_mean", "test/reward_std"):
        assert sharded[key] == pytest.approx(single[key], rel=1e-4, abs=1e-6), key
    assert (tmp_path / "fsdp" / "checkpoints" / "last.ckpt").is_dir()  # a sharded checkpoint
    pairs = demo_splits(40, 10, 30, seed=0)["test"]
    ours, theirs = (score(load_for_eval(str(tmp_path / run / "export")), pairs) for run in ("single", "fsdp"))
    np.testing.assert_allclose(theirs[0], ours[0], atol=1e-5)  # the full weights were gathered
    assert np.std(ours[0] - ours[1]) > 1e-4


def test_sharded_rounds_iterate_d_t_and_resume_exactly(tmp_path):
    straight = tmp_path / "straight"
    metrics = run_train(straight, "trainer=fsdp_sim", *DECODER, *LOOP)
    for epoch, size in ((0, 96), (1, 136)):
        r0, r1 = (json.loads((straight / "audit" / f"epoch{epoch}_rank{r}.json").read_text()) for r in (0, 1))
        assert r0["train_set"] == r1["train_set"] and len(r0["train_set"]) == size
        assert Counter(r0["seen"] + r1["seen"]) == Counter(r0["train_set"])  # each pair once across ranks
    report = json.loads((straight / "rounds" / "round_01.json").read_text())
    assert len(report["margins"]) == 96 and all(m != 0.0 for m in report["margins"])

    killed = tmp_path / "killed"
    with pytest.raises(AssertionError, match="simulated crash"):
        run_train(killed, "trainer=fsdp_sim", *DECODER, *LOOP, "+callbacks.crash._target_=tests.helpers.CrashAtEpoch",
                  "+callbacks.crash.epoch=1")
    resumed = run_train(killed, "trainer=fsdp_sim", *DECODER, *LOOP, f"ckpt_path={killed}/checkpoints/last.ckpt")
    final = lambda run: json.loads((run / "audit" / "epoch1_rank0.json").read_text())["train_set"]  # noqa: E731
    assert final(killed) == final(straight)
    for key in ("val/acc", "test/acc", "test/margin_mean"):
        assert resumed[key] == pytest.approx(metrics[key], abs=1e-5), key
