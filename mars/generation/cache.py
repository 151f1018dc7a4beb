"""Generated texts on disk (augmenter variants, policy samples, judge verdicts): an SQLite file
that a rerun, a resumed run or a sweep reads back, keyed by digests of settings and texts."""
from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Iterable, Optional

_SCHEMA = """
CREATE TABLE IF NOT EXISTS variants (
    ident TEXT, role TEXT, key TEXT, idx INTEGER, text TEXT,
    PRIMARY KEY (ident, role, key, idx)) WITHOUT ROWID;
-- how many variants were asked for: a shorter list from a deterministic member is final
CREATE TABLE IF NOT EXISTS requests (
    ident TEXT, role TEXT, key TEXT, asked INTEGER,
    PRIMARY KEY (ident, role, key)) WITHOUT ROWID;
"""


def digest(text: str) -> str:
    """The cache's key of a text: 32 hex digits (existing caches hold these; never change them)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


class VariantCache:
    """Variants keyed by (identity hash, role, text hash, variant index); `path=None`: in memory.

    WAL mode and one transaction per batch: a killed process keeps every committed batch and the
    file stays consistent. Readers in other processes (DDP ranks) never block; writers take turns,
    waiting up to `timeout` seconds for the lock.
    """

    def __init__(self, path: Optional[str] = None, timeout: float = 120.0):
        self.path = path
        self.timeout = timeout
        self._conn: Optional[sqlite3.Connection] = None

    def __getstate__(self) -> dict:  # a connection does not cross processes: reopen there
        return {**self.__dict__, "_conn": None}

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            if self.path:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path or ":memory:", timeout=self.timeout,
                                         isolation_level=None)  # transactions are explicit
            if self.path:
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(_SCHEMA)
        return self._conn

    def get(self, ident: str, role: str, key: str, n: int, final: bool) -> Optional[list[str]]:
        """The stored variants if they answer a request for `n`, else None (generate them).

        Fewer than `n` answer it too when `final` and at least `n` were asked for before (a
        deterministic generator would find no more).
        """
        where = (ident, role, key)
        texts = [t for (t,) in self.conn.execute(
            "SELECT text FROM variants WHERE ident=? AND role=? AND key=? ORDER BY idx", where)]
        if len(texts) >= n:
            return texts
        row = self.conn.execute(
            "SELECT asked FROM requests WHERE ident=? AND role=? AND key=?", where).fetchone()
        return texts if final and row is not None and row[0] >= n else None

    def put(self, ident: str, entries: Iterable[tuple[str, str, int, list[str]]]) -> None:
        """Store (role, key, asked, variants) entries, replacing older ones, in one transaction."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for role, key, asked, variants in entries:
                where = (ident, role, key)
                conn.execute("DELETE FROM variants WHERE ident=? AND role=? AND key=?", where)
                conn.executemany("INSERT INTO variants VALUES (?, ?, ?, ?, ?)",
                                 [(*where, i, v) for i, v in enumerate(variants)])
                conn.execute("INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?)", (*where, asked))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
