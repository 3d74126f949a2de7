"""Shamir secret sharing (Shamir 1979) of 32-byte secrets over the prime field GF(2**521 - 1).

A secret is the constant term of a random polynomial of degree ``threshold - 1``; holder ``x``
gets the polynomial's value at ``x``. Any ``threshold`` shares give the secret back by Lagrange
interpolation at 0; fewer say nothing about it (every secret is equally likely). Secure
aggregation shares each site's self-mask seed and masking private key this way among its
neighbours, so the server can remove the masks of a site that drops out, or of one that
stays, with the help of ``threshold`` others, but never both for one site.

The prime is the Mersenne prime 2**521 - 1, larger than any 32-byte secret; shares are 66
bytes, big-endian. Coefficients come from the operating system's CSPRNG (:mod:`secrets`).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

PRIME = 2**521 - 1
SECRET_BYTES = 32
SHARE_BYTES = 66


def split(secret: bytes, holders: Sequence[int], threshold: int) -> dict[int, bytes]:
    """Shares of ``secret`` for each holder (a non-zero x coordinate, distinct).

    Raises:
        ValueError: a wrong secret size, a threshold outside 1..len(holders), or a bad holder.
    """
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a secret is {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= len(holders):
        raise ValueError(f"threshold must be in 1..{len(holders)} (the holders), got "
                         f"{threshold}")
    if len(set(holders)) != len(holders) or not all(0 < x < PRIME for x in holders):
        raise ValueError(f"holders must be distinct non-zero field elements, got {holders}")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = {}
    for x in holders:
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        shares[x] = y.to_bytes(SHARE_BYTES, "big")
    return shares


def combine(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares (holder x -> share).

    Raises:
        ValueError: fewer than ``threshold`` shares, a malformed share, or shares that do not
            come from one polynomial of a 32-byte secret (detected when the result is too
            large, which a wrong share makes all but certain).
    """
    if len(shares) < threshold:
        raise ValueError(f"{len(shares)} share(s), {threshold} needed")
    points = sorted(shares.items())[:threshold]
    for x, share in points:
        if len(share) != SHARE_BYTES or not 0 < x < PRIME:
            raise ValueError(f"malformed share for holder {x}")
    ys = [int.from_bytes(share, "big") for _, share in points]
    if any(y >= PRIME for y in ys):
        raise ValueError("a share is not a field element")
    xs = [x for x, _ in points]
    secret = 0
    for i, (xi, yi) in enumerate(zip(xs, ys, strict=True)):
        numerator, denominator = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                numerator = numerator * xj % PRIME
                denominator = denominator * (xj - xi) % PRIME
        secret = (secret + yi * numerator * pow(denominator, -1, PRIME)) % PRIME
    if secret.bit_length() > 8 * SECRET_BYTES:
        raise ValueError("the shares do not reconstruct a secret (a share is wrong)")
    return secret.to_bytes(SECRET_BYTES, "big")
