"""Seeds that a rerun, another process or another batch reproduces."""
from __future__ import annotations

import hashlib


def stable_seed(*parts) -> int:
    """A 31-bit seed from the parts' text (Python's hash() changes between processes)."""
    digest = hashlib.blake2b("\x00".join(map(str, parts)).encode("utf-8"), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF
