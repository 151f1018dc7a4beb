"""bench/gpu.py, the GPU benchmark, run here as its CPU self-test the way a device machine runs it:
Hydra and omegaconf not importable, no data folder (the HH lengths then come from bench/hh_lengths.json)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from tests.conftest import require_data

ROOT = Path(__file__).resolve().parents[1]
MODES = ("padded", "packed", "prefix_shared")
# the script as `python bench/gpu.py` runs it, with what a device machine lacks hidden
DEVICE_LIKE = ("import runpy, sys; sys.modules.update(dict.fromkeys(['hydra', 'omegaconf'], None)); "
               "sys.path.insert(0, 'bench'); sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


@pytest.fixture(scope="module")
def self_test(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "gpu.json"
    env = {**os.environ, "MARS_DATA_DIR": str(out.parent / "no-data"), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-c", DEVICE_LIKE, "bench/gpu.py", "--self-test", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def runs(result: dict, kind: str, framework: str = "mars") -> dict[str, dict]:
    return {r["mode"]: r for r in result["runs"] if r["pass"] == kind and r["framework"] == framework}


@pytest.mark.slow
def test_every_mode_is_measured_and_what_cannot_run_here_is_named(self_test):
    result, stdout = self_test
    assert not result["errors"] and result["data"]["source"].startswith("hh_lengths.json")
    for kind in ("train", "predict"):
        measured = runs(result, kind)
        assert set(measured) == set(MODES)
        for r in measured.values():
            assert r["seconds"] > 0 and r["pairs_per_s"] > 0 and r["useful_tokens_per_s"] > 0
            assert r["mfu"] > 0 and r["mfu_prefix_once"] > 0
    assert all(r["step_s"] > 0 and r["timed_steps"] == 2 for r in runs(result, "train").values())
    skipped = {(s["attention"], s["mode"]) for s in result["skipped"]}
    assert {("flex_attention", m) for m in MODES} | {("flash_attention_2", m) for m in MODES} <= skipped
    assert f"## mars on {result['card']}" in stdout and "| train (mars) | sdpa | prefix_shared |" in stdout


@pytest.mark.slow
def test_prefix_sharing_counts_the_same_useful_tokens_on_the_same_pairs(self_test):
    result, _ = self_test
    for kind in ("train", "predict"):
        padded, packed, shared = (runs(result, kind)[m] for m in MODES)
        assert padded["pairs"] == packed["pairs"] == shared["pairs"]
        assert padded["useful_tokens"] == packed["useful_tokens"] == shared["useful_tokens"]
        assert padded["model_flops"] == packed["model_flops"] == shared["model_flops"]
        # the prefix once: fewer tokens run and FLOPs needed; padding only in padded batches
        assert shared["tokens_run"] < shared["useful_tokens"]
        assert shared["model_flops_prefix_once"] < shared["model_flops"]
        assert padded["slots"] > padded["tokens_run"] and packed["slots"] == packed["tokens_run"]
    # fp32 on the same weights and pairs: the three batch kinds give the same losses
    losses = [(r["loss_first"], r["loss_last"]) for r in runs(result, "train").values()]
    assert losses == [pytest.approx(losses[0], rel=1e-4)] * 3


@pytest.mark.slow
def test_trl_runs_the_same_padded_batches_where_it_imports(self_test):
    result, _ = self_test
    if importlib.util.find_spec("trl") is None:
        assert ("sdpa", "padded") in {(s["attention"], s["mode"]) for s in result["skipped"]}
        return
    (trl,) = [r for r in result["runs"] if r["framework"].startswith("trl")]
    mars = runs(result, "train")["padded"]
    assert trl["batch_order"] == "mars's batches, in order" and trl["pairs_per_s"] > 0 and trl["mfu"] > 0
    assert (trl["useful_tokens"], trl["slots"]) == (mars["useful_tokens"], mars["slots"])


def test_the_length_table_is_what_the_formatter_makes_of_the_shared_pairs(monkeypatch):
    require_data()
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    with mock.patch.dict(os.environ):  # bench's defaults (TRANSFORMERS_VERBOSITY=error) stay out of later tests
        spec.loader.exec_module(gpu)
    try:
        live = gpu.hh_lengths(8)
    except FileNotFoundError as e:  # the embedded SmolLM2 is not installed
        pytest.skip(str(e))
    table = json.loads(gpu.LENGTHS.read_text())
    assert {k: table[k] for k in ("max_length", "min_prompt_tokens")} == gpu.preset()
    assert [tuple(row) for row in table["pairs"][:8]] == live
