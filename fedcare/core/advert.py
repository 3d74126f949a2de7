"""Key advertisements: what a site signs when it sends a round's public keys, and how the
server relays the signed advertisements to the site's peers.

Secure aggregation and homomorphic aggregation exchange fresh X25519 public keys every round
through the server. A site signs, with its own certificate's key
(:class:`~fedcare.core.identity.SiteIdentity`), the :func:`statement` of exactly what those keys
are for: the task kind that advertised them (the protocol), the job, the round, the round's
session id, the site and the keys. A peer rebuilds the statement from its own view of the round
and the keys it was relayed, and verifies the signature before it encrypts anything under them;
keys swapped, moved to another site, or replayed from another job, round, session or protocol
no longer match.

An advertisement travels as one uint8 tensor (:func:`as_tensor`), several of them to one site as
``(bytes, lengths)`` tensors (:func:`pack`, :func:`unpack`).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

#: The most an advertisement (certificate and signature) may take.
MAX_ADVERT_BYTES = 8192
_TAG = b"fedcare key advertisement v1"


def statement(kind: str, job_id: str, round_num: int, session: str, site_id: str,
              keys: Sequence[bytes]) -> bytes:
    """The bytes a site signs for the public ``keys`` it advertises in one round.

    Every field is length-prefixed, so no two different advertisements share a statement.
    """
    fields = [_TAG, kind.encode(), job_id.encode(), str(round_num).encode(),
              session.encode(), site_id.encode(), *keys]
    return b"".join(struct.pack(">I", len(f)) + f for f in fields)


def as_tensor(advert: bytes) -> np.ndarray:
    return np.frombuffer(advert, np.uint8).copy()


def from_tensor(value: object) -> bytes | None:
    """An advertisement's bytes from a reply's tensor; None if it is not one."""
    array = np.asarray(value)
    if array.dtype != np.uint8 or array.ndim != 1 or not 0 < array.size <= MAX_ADVERT_BYTES:
        return None
    return array.tobytes()


def pack(adverts: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Advertisements as (uint8 bytes, int64 lengths) tensors, in order."""
    lengths = np.array([len(a) for a in adverts], np.int64)
    return np.frombuffer(b"".join(adverts), np.uint8).copy(), lengths


def unpack(data: object, lengths: object, count: int) -> list[bytes]:
    """The ``count`` advertisements :func:`pack` packed; ValueError if the tensors are not
    that."""
    data, lengths = np.asarray(data), np.asarray(lengths)
    if (data.dtype != np.uint8 or data.ndim != 1 or lengths.dtype != np.int64
            or lengths.shape != (count,) or (lengths <= 0).any()
            or (lengths > MAX_ADVERT_BYTES).any() or int(lengths.sum()) != data.size):
        raise ValueError(f"the peers' signed key advertisements are missing or malformed "
                         f"(expected {count})")
    raw = data.tobytes()
    ends = np.cumsum(lengths)
    return [raw[int(e - n):int(e)] for e, n in zip(ends, lengths, strict=True)]
