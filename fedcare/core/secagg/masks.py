"""Pairwise and self masks: what a site adds to its encoded update, and what the server removes.

Site ``u`` uploads ``y_u = x_u + PRG(b_u) + sum_v s(u, v) PRG(k_uv) mod 2**32`` over its
neighbours ``v`` in ``U2``, with ``s(u, v) = +1`` when ``u`` sorts before ``v`` and ``-1``
otherwise, and ``k_uv`` the seed both derive from X25519 of their masking keys. Summed over
``U3`` the pair masks of two summed sites cancel; the server removes ``PRG(b_u)`` of every
summed site and the pair masks between summed sites and dropped ones, from reconstructed
secrets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from fedcare.core.secagg.crypto import agree, apply_mask

_PURPOSE = "mask"


def pair_seed(private: bytes, peer_public: bytes, session: str, me: str, peer: str) -> bytes:
    """The seed of the mask between ``me`` and ``peer`` (the same at both ends)."""
    return agree(private, peer_public, _PURPOSE, session, (me, peer))


def add_masks(targets: Sequence[np.ndarray], me: str, self_seed: bytes,
              pairs: Iterable[tuple[str, bytes]]) -> None:
    """Mask encoded ``targets`` (flat uint32) in place: the self mask, and for each
    ``(peer, seed)`` the pair mask with the sign of :func:`pair_sign`."""
    apply_mask(targets, self_seed)
    for peer, seed in pairs:
        apply_mask(targets, seed, subtract=pair_sign(me, peer) < 0)


def remove_masks(targets: Sequence[np.ndarray], self_seeds: Iterable[bytes],
                 dropped_pairs: Iterable[tuple[str, str, bytes]]) -> None:
    """Unmask a modular sum in place: subtract each summed site's self mask, and each pair
    mask ``(summed site, dropped site, seed)`` the summed site added."""
    for seed in self_seeds:
        apply_mask(targets, seed, subtract=True)
    for summed, dropped, seed in dropped_pairs:
        apply_mask(targets, seed, subtract=pair_sign(summed, dropped) > 0)


def pair_sign(me: str, peer: str) -> int:
    if me == peer:
        raise ValueError(f"a site has no pair mask with itself ({me})")
    return 1 if me < peer else -1
