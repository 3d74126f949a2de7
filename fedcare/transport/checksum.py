"""The payload checksum of a message: XXH3-128 of its tensor bytes, as 32 hex digits.

It catches corruption and framing bugs end to end: a chunk lost, repeated or cut short anywhere
between a sender's encoder and a receiver's decoder. It is not what keeps a model from being
tampered with: on the wire TLS (AES-GCM) authenticates every byte, and a site could compute a
matching checksum for any bytes it liked, so a cryptographic hash would add no protection here,
only cost. Measured on the 2-core benchmark machine: XXH3-128 11.6 GB/s, SHA-256 1.5 GB/s; with
SHA-256 the 2.5 GB hashed per 25 M x 8 round cost as much CPU as a third of the round.
"""

from __future__ import annotations

from collections.abc import Iterable

import xxhash

ALGORITHM = "xxh3_128"


def new() -> xxhash.xxh3_128:
    """An incremental checksum: ``update(buffer)`` as bytes arrive, then ``hexdigest()``."""
    return xxhash.xxh3_128()


def of(buffers: Iterable[bytes | memoryview]) -> str:
    """The checksum of ``buffers`` taken one after the other."""
    h = new()
    for buffer in buffers:
        h.update(buffer)
    return h.hexdigest()
