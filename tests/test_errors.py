"""A user's mistake (data, config, path, model folder) is one clear message on stderr and exit
status 2, without a traceback; HYDRA_FULL_ERROR=1 still shows the whole trace."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mars.cli.runtime import user_error
from mars.config import ConfigError
from mars.data.records import DataFormatError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["backbone=tiny", "augmenter=none", "allocator=none", "logger=csv", "trainer.max_epochs=1"]


def run(tmp_path, *overrides, full: bool = False):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HYDRA_FULL_ERROR": "1" if full else "0"}
    return subprocess.run([sys.executable, "train.py", *TINY, *overrides, f"hydra.run.dir={tmp_path}"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_too_many_held_out_pairs_is_one_message_and_status_2(tmp_path):
    import json

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "yes", "rejected": "no"}) + "\n"
                            for i in range(20)))
    done = run(tmp_path, "data=local", f"data.path={path}")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "error: data.test_size=200 + data.val_size=200 = 400 held-out pairs" in done.stderr
    assert "pairs.jsonl has only 20" in done.stderr and "Traceback" not in done.stderr + done.stdout


def test_the_whole_trace_on_request(tmp_path):
    done = run(tmp_path, "data.source=imdb", full=True)
    assert done.returncode != 0 and "Traceback" in done.stderr and "data.source='imdb' is not one of" in done.stderr


@pytest.mark.parametrize("error,user", [(ConfigError("x"), True), (DataFormatError("x"), True),
                                        (FileNotFoundError("x"), True), (ValueError("x"), False),
                                        (RuntimeError("x"), False)])
def test_only_user_errors_lose_their_traceback(error, user):
    assert user_error(error) == user
