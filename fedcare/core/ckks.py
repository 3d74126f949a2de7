"""CKKS homomorphic encryption (TenSEAL), behind a small typed wrapper.

The only module of fedcare that imports TenSEAL (an optional dependency, in the ``privacy``
extra). A :class:`CkksKeys` holds a TenSEAL context: a *private* one (with the secret key, at
the sites) encrypts and decrypts; a *public* one (no secret key, at the server) can only load
ciphertexts and add them. A vector is encrypted in chunks of :attr:`CkksKeys.slots` values
(``poly_modulus_degree / 2``), each serialized on its own; :func:`pack` and :func:`unpack` put
a list of serialized chunks into one uint8 tensor and an int64 tensor of their lengths, the
form they travel in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedcare.core.errors import ConfigError

#: poly_modulus_degree -> the largest total coefficient-modulus bits SEAL allows at 128-bit
#: security (SEAL's CoeffModulus::MaxBitCount).
MAX_MODULUS_BITS = {4096: 109, 8192: 218, 16384: 438, 32768: 881}


def _tenseal() -> Any:
    try:
        # no type stubs; mypy's ignore_missing_imports covers it, and this module types it
        import tenseal
    except ImportError:
        raise ConfigError("homomorphic encryption needs TenSEAL: pip install "
                          "'fedcare[privacy]' (tenseal==0.3.18)") from None
    return tenseal


def check_parameters(poly_modulus_degree: int, scale_bits: int,
                     coeff_mod_bit_sizes: Sequence[int]) -> None:
    """ConfigError (one line) unless these make a valid CKKS context for summing."""
    def whole(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not whole(poly_modulus_degree) or poly_modulus_degree not in MAX_MODULUS_BITS:
        raise ConfigError(f"homomorphic aggregation: poly_modulus_degree must be one of "
                          f"{sorted(MAX_MODULUS_BITS)}, got {poly_modulus_degree!r}")
    if not whole(scale_bits) or not 20 <= scale_bits <= 60:
        raise ConfigError(f"homomorphic aggregation: scale_bits must be an integer in "
                          f"[20, 60], got {scale_bits!r}")
    sizes = list(coeff_mod_bit_sizes)
    if len(sizes) < 2 or not all(whole(b) and 20 <= b <= 60 for b in sizes):
        raise ConfigError(f"homomorphic aggregation: coeff_mod_bit_sizes must be at least two "
                          f"integers in [20, 60], got {tuple(sizes)!r}")
    if sum(sizes) > MAX_MODULUS_BITS[poly_modulus_degree]:
        raise ConfigError(f"homomorphic aggregation: coeff_mod_bit_sizes add up to "
                          f"{sum(sizes)} bits, more than the "
                          f"{MAX_MODULUS_BITS[poly_modulus_degree]} allowed with "
                          f"poly_modulus_degree={poly_modulus_degree}")
    if sizes[0] <= scale_bits:
        raise ConfigError(f"homomorphic aggregation: the first coefficient modulus "
                          f"({sizes[0]} bits) must exceed scale_bits={scale_bits}")


class CkksKeys:
    """A CKKS context: private (encrypts, decrypts, adds) or public (adds only)."""

    def __init__(self, context: Any) -> None:
        self._context = context

    @classmethod
    def generate(cls, poly_modulus_degree: int = 8192, scale_bits: int = 40,
                 coeff_mod_bit_sizes: Sequence[int] = (60, 60)) -> CkksKeys:
        """A fresh context with a new secret key."""
        check_parameters(poly_modulus_degree, scale_bits, coeff_mod_bit_sizes)
        ts = _tenseal()
        context = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree,
                             coeff_mod_bit_sizes=list(coeff_mod_bit_sizes))
        context.global_scale = 2.0 ** scale_bits
        return cls(context)

    @classmethod
    def load(cls, data: bytes) -> CkksKeys:
        """A context from :meth:`secret_bytes` or :meth:`public_bytes`; ValueError if ``data``
        is not one."""
        ts = _tenseal()
        try:
            return cls(ts.context_from(data))
        except Exception as exc:
            raise ValueError(f"not a serialized CKKS context ({type(exc).__name__})") from None

    @property
    def is_private(self) -> bool:
        """Whether this context holds the secret key."""
        return bool(self._context.is_private())

    @property
    def largest_sum(self) -> float:
        """The magnitude below which a decrypted value (a sum of encrypted ones) is right:
        ``2**(data modulus bits - scale bits - 1)``; beyond it the sum wraps around."""
        data_bits = self._context.seal_context().data.first_context_data(
            ).total_coeff_modulus_bit_count()
        return float(2.0 ** (data_bits - 1)) / float(self._context.global_scale)

    @property
    def slots(self) -> int:
        """Values per ciphertext: half the polynomial modulus degree."""
        parameters = self._context.seal_context().data.key_context_data().parms()
        return int(parameters.poly_modulus_degree()) // 2

    def secret_bytes(self) -> bytes:
        """The context with its secret key (for the sites only)."""
        if not self.is_private:
            raise ValueError("this CKKS context holds no secret key")
        return bytes(self._context.serialize(save_public_key=True, save_secret_key=True,
                                             save_galois_keys=False, save_relin_keys=False))

    def public_bytes(self) -> bytes:
        """The context without its secret key (what the server may hold)."""
        return bytes(self._context.serialize(save_public_key=True, save_secret_key=False,
                                             save_galois_keys=False, save_relin_keys=False))

    def encrypt(self, values: np.ndarray) -> list[bytes]:
        """``values`` (flat) as serialized ciphertexts of :attr:`slots` values each."""
        ts = _tenseal()
        flat = np.asarray(values, np.float64).reshape(-1)
        step = self.slots
        return [bytes(ts.ckks_vector(self._context, flat[i:i + step].tolist()).serialize())
                for i in range(0, flat.size, step)]

    def add(self, total: list[Any] | None, chunks: Sequence[bytes]) -> list[Any]:
        """``total`` plus the serialized ciphertexts ``chunks``, chunk by chunk (``total`` None:
        the chunks themselves); works with a public context. ValueError on a malformed or
        mismatched chunk."""
        ts = _tenseal()
        if total is not None and len(total) != len(chunks):
            raise ValueError(f"{len(chunks)} ciphertexts, expected {len(total)}")
        out = []
        for index, chunk in enumerate(chunks):
            try:
                vector = ts.ckks_vector_from(self._context, chunk)
            except Exception as exc:
                raise ValueError(f"ciphertext {index} does not load "
                                 f"({type(exc).__name__})") from None
            if total is not None:
                if vector.size() != total[index].size():
                    raise ValueError(f"ciphertext {index} holds {vector.size()} values, "
                                     f"expected {total[index].size()}")
                vector = total[index] + vector
            out.append(vector)
        return out

    @staticmethod
    def serialize(vectors: Sequence[Any]) -> list[bytes]:
        return [bytes(v.serialize()) for v in vectors]

    def decrypt(self, chunks: Sequence[bytes]) -> np.ndarray:
        """The float64 values of serialized ciphertexts, concatenated; needs the secret key
        (ValueError without it)."""
        if not self.is_private:
            raise ValueError("cannot decrypt: this CKKS context holds no secret key")
        ts = _tenseal()
        parts = [np.asarray(ts.ckks_vector_from(self._context, c).decrypt(), np.float64)
                 for c in chunks]
        return np.concatenate(parts) if parts else np.zeros(0)


def pack(chunks: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Serialized chunks as (uint8 bytes, int64 lengths) tensors."""
    lengths = np.array([len(c) for c in chunks], np.int64)
    return np.frombuffer(b"".join(chunks), np.uint8).copy(), lengths


def unpack(data: np.ndarray, lengths: np.ndarray) -> list[bytes]:
    """The chunks :func:`pack` packed; ValueError if the tensors do not fit together."""
    data, lengths = np.asarray(data), np.asarray(lengths)
    if (data.dtype != np.uint8 or data.ndim != 1 or lengths.dtype != np.int64
            or lengths.ndim != 1 or (lengths <= 0).any() or int(lengths.sum()) != data.size):
        raise ValueError("malformed ciphertext tensors")
    raw = data.tobytes()
    ends = np.cumsum(lengths)
    return [raw[int(e - n):int(e)] for e, n in zip(ends, lengths, strict=True)]


def num_chunks(size: int, slots: int) -> int:
    return math.ceil(size / slots)
