"""The cryptography of secure aggregation, all of it from the ``cryptography`` package.

* Key agreement: X25519. Each site makes two fresh key pairs per round, one to agree the
  pairwise mask seeds with its neighbours and one to agree the keys that encrypt the Shamir
  shares it sends them through the server.
* Key derivation: HKDF-SHA256 of the X25519 shared secret, bound to the round's session and the
  pair of sites (so a seed is never reused across rounds, pairs or purposes).
* Share encryption: ChaCha20-Poly1305 (AEAD) with a random nonce; the associated data names the
  session, sender and recipient, so the server cannot replay or swap ciphertexts unnoticed.
* Mask expansion: the ChaCha20 key stream of a 32-byte seed, read as little-endian uint32 (a
  PRG: indistinguishable from uniform without the seed). Expanded block by block, so neither a
  site nor the server ever holds a whole mask.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
_NONCE_BYTES = 12
#: What encryption adds to a plaintext: the nonce and the Poly1305 tag.
SEAL_OVERHEAD = _NONCE_BYTES + 16
#: uint32 elements of mask expanded at a time (1 MiB).
MASK_BLOCK = 1 << 18
_ZEROS = bytes(4 * MASK_BLOCK)


def new_private_key() -> bytes:
    """A fresh X25519 private key (raw 32 bytes)."""
    return X25519PrivateKey.generate().private_bytes_raw()


def public_key(private: bytes) -> bytes:
    """The raw X25519 public key of ``private``."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def agree(private: bytes, peer_public: bytes, purpose: str, session: str,
          pair: tuple[str, str]) -> bytes:
    """A 32-byte key both ends of ``pair`` derive alike (the pair is put in order).

    Raises:
        ValueError: ``peer_public`` is not a valid X25519 public key.
    """
    shared = X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(peer_public))
    first, second = sorted(pair)
    info = "\x1f".join(("fedcare secagg", purpose, session, first, second)).encode()
    return HKDF(hashes.SHA256(), KEY_BYTES, salt=None, info=info).derive(shared)


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """nonce || ChaCha20-Poly1305(plaintext), authenticated with ``associated``."""
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated)


def unseal(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    """The plaintext :func:`seal` sealed; ValueError if anything was changed or swapped."""
    try:
        return ChaCha20Poly1305(key).decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:],
                                             associated)
    except InvalidTag:
        raise ValueError("a ciphertext failed authentication") from None


def mask_blocks(seed: bytes, sizes: Sequence[int]) -> Iterator[tuple[int, int, np.ndarray]]:
    """The mask of ``seed`` over tensors of ``sizes`` elements, one after the other, as
    ``(tensor index, start, uint32 values)`` blocks of at most :data:`MASK_BLOCK` elements.

    The values are valid until the next block is asked for (one buffer is reused).
    """
    stream = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    buffer = bytearray(4 * min(MASK_BLOCK, max(sizes, default=0)))
    zeros = memoryview(_ZEROS)
    for index, size in enumerate(sizes):
        for start in range(0, size, MASK_BLOCK):
            count = min(MASK_BLOCK, size - start)
            stream.update_into(zeros[:4 * count], buffer)  # key stream = 0 XOR key stream
            yield index, start, np.frombuffer(buffer, "<u4", count)


def apply_mask(targets: Sequence[np.ndarray], seed: bytes, subtract: bool = False) -> None:
    """targets += mask(seed) (``subtract``: -=), mod 2**32, in place; ``targets`` are flat
    uint32 arrays, the mask runs over them in order."""
    operation = np.subtract if subtract else np.add
    for index, start, block in mask_blocks(seed, [t.size for t in targets]):
        view = targets[index][start:start + block.size]
        operation(view, block, out=view)
