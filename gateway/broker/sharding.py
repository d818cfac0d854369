"""Which Redis shard, and which pub/sub connection of it, owns a channel.

Every process of every node must route a channel to the same shard, so the hash is computed
from the channel's UTF-8 bytes with BLAKE2b (Python's own ``hash()`` is salted per process).
Jump consistent hash then maps it to a shard: growing from N to N+1 shards moves only ~1/(N+1)
of the channels, the minimum any scheme can achieve.
"""

from __future__ import annotations

import hashlib

__all__ = ["channel_hashes", "jump_hash", "shard_index"]

_MASK64 = (1 << 64) - 1
# The 64-bit LCG multiplier of Lamping & Veach's jump consistent hash (arXiv:1406.2294).
_JUMP_MULTIPLIER = 2862933555777941757


def channel_hashes(channel: str) -> tuple[int, int]:
    """Two independent 64-bit hashes of ``channel``: one picks the shard, the other the
    pub/sub connection inside it (independent, so connections of a shard fill evenly)."""
    digest = hashlib.blake2b(channel.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")


def jump_hash(key: int, buckets: int) -> int:
    """Jump consistent hash: a bucket in ``[0, buckets)`` for the 64-bit ``key``."""
    if buckets <= 0:
        raise ValueError("buckets must be positive")
    key &= _MASK64
    bucket, candidate = -1, 0
    while candidate < buckets:
        bucket = candidate
        key = (key * _JUMP_MULTIPLIER + 1) & _MASK64
        candidate = int((bucket + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return bucket


def shard_index(channel: str, n: int) -> int:
    """The shard (``0 <= i < n``) holding ``channel``; identical in every process."""
    if n == 1:
        return 0
    return jump_hash(channel_hashes(channel)[0], n)
