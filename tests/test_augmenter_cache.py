"""The variant cache: reruns read it back, a killed process keeps its finished batches, and
different settings never share entries."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from mars.augmenters.base import Augmenter, VariantRequest
from mars.augmenters.eda import EDAAugmenter


class Numbered(Augmenter):
    """Variant i of `text` is "text #i (tag)"; records what it was asked to generate."""

    _identity_fields = ("tag", "seed")

    def __init__(self, tag: str = "a", delay: float = 0.0, short: int = 0,
                 cache_path: str | None = None, seed: int = 0):
        super().__init__(cache_path, seed)
        self.tag, self.delay, self.short = tag, delay, short
        self.asked: list[VariantRequest] = []

    def _generate(self, requests):
        time.sleep(self.delay)
        self.asked += requests
        return [[f"{r.text} #{i} ({self.tag}{r.other})" for i in range(r.n - self.short)]
                for r in requests]


def reqs(k: int, n: int = 3, other: str = "") -> list[VariantRequest]:
    return [VariantRequest(f"text {i}", "chosen", "p", other, n) for i in range(k)]


def test_rerun_reads_the_cache(tmp_path):
    db = str(tmp_path / "cache.sqlite")
    first = Numbered(cache_path=db)
    out = first.augment(reqs(5))
    assert len(first.asked) == 5 and first.stats["generated"] == 15

    second = Numbered(cache_path=db)
    assert second.augment(reqs(5)) == out
    assert second.asked == [] and second.stats["cache_hits"] == 15
    assert second.augment(reqs(5, n=2)) == [v[:2] for v in out]  # fewer: a prefix, no call
    assert second.asked == []
    second.augment(reqs(5, n=4))  # more than stored: generated again
    assert len(second.asked) == 5


def test_one_generation_per_distinct_text_in_a_batch():
    aug = Numbered()
    out = aug.augment(reqs(2, n=2) + reqs(2, n=3))
    assert len(aug.asked) == 2 and [r.n for r in aug.asked] == [3, 3]
    assert out[0] == out[2][:2] and len(out[2]) == 3


def test_shortfall_is_final_unless_the_member_retries():
    aug = Numbered(short=1)
    assert [len(v) for v in aug.augment(reqs(3))] == [2, 2, 2]
    assert aug.stats["shortfall"] == 3
    aug.augment(reqs(3))
    assert len(aug.asked) == 3  # deterministic: the short lists answer the same request

    class Flaky(Numbered):
        retry_shortfall = True  # as llm_rewrite: a failure may be transient

    flaky = Flaky(short=1)
    flaky.augment(reqs(3))
    flaky.augment(reqs(3))
    assert len(flaky.asked) == 6 and flaky.stats["shortfall"] == 6


def test_different_settings_never_share(tmp_path):
    db = str(tmp_path / "cache.sqlite")
    a, b, c = Numbered("a", cache_path=db), Numbered("b", cache_path=db), Numbered("a", seed=1,
                                                                                   cache_path=db)
    outs = [aug.augment(reqs(2)) for aug in (a, b, c)]
    assert all(len(aug.asked) == 2 for aug in (a, b, c))
    assert outs[0] != outs[1]

    class WithContext(Numbered):
        uses_context = True

    ctx = WithContext(cache_path=db)
    ctx.augment(reqs(2, other="x"))
    ctx.augment(reqs(2, other="y"))  # another pair around the same text: a different key
    assert len(ctx.asked) == 4
    ctx.augment(reqs(2, other="x"))
    assert len(ctx.asked) == 4

    long = [VariantRequest(" ".join(f"word{i}" for i in range(30)), "rejected", n=3)]
    eda = [EDAAugmenter(alpha=x, cache_path=db).augment(long) for x in (0.1, 0.5)]
    assert eda[0] != eda[1]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(DISTINCT ident) FROM requests").fetchone()[0] == 6


KILLED = """
import sys
sys.path.insert(0, {tests!r})
from test_augmenter_cache import Numbered, reqs
Numbered(delay=0.1, cache_path={db!r}).augment(reqs(400))
"""


def test_killed_process_keeps_finished_batches(tmp_path):
    db = str(tmp_path / "cache.sqlite")
    script = KILLED.format(tests=str(Path(__file__).parent), db=db)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parents[1])
    try:
        deadline = time.monotonic() + 60
        done = 0
        while done < 64 and time.monotonic() < deadline:  # read while the other process writes
            time.sleep(0.05)
            if os.path.exists(db):
                try:
                    with sqlite3.connect(db, timeout=5) as conn:
                        done = conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
                except sqlite3.OperationalError:  # the schema is being created
                    pass
        assert done >= 64, "the subprocess committed nothing in time"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        kept = conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
        rows = conn.execute("SELECT COUNT(*) FROM variants").fetchone()[0]
    assert 64 <= kept < 400 and rows == 3 * kept
    assert kept % Numbered.commit_every == 0  # whole batches only

    resumed = Numbered(cache_path=db)
    out = resumed.augment(reqs(400))
    assert len(resumed.asked) == 400 - kept and resumed.stats["cache_hits"] == 3 * kept
    assert out == Numbered().augment(reqs(400))
