"""The steps of one homomorphically encrypted (CKKS) FedAvg round, as task kinds and settings.

Per round, with ``U1 ⊇ U2`` the sites still taking part:

1. ``he.train``: a site trains, passes the update through its outbound filters, keeps it, and
   answers with a fresh X25519 public key signed with its certificate's key
   (:mod:`fedcare.core.advert`), its sample count and training metrics (``U1``).
2. ``he.keygen``: the elected site (the first of ``U1``) checks the other sites' signed keys
   against its own CA (:class:`~fedcare.core.identity.SiteIdentity`; one that fails makes it
   refuse, sealing nothing), makes a fresh CKKS context and answers with its public part (no
   secret key) and, for each other site of ``U1``, the secret context sealed for it (X25519 +
   HKDF + ChaCha20-Poly1305, bound to the session and the pair).
3. ``he.encrypt``: each site of ``U1`` gets its sealed secret context and the elected site's
   signed key, which it checks before it unseals anything (the elected site keeps its own),
   and uploads ``n_k * (update - global)`` encrypted, in ciphertexts of
   ``poly_modulus_degree / 2`` values. The server adds them with the public context (``U2``).
4. ``he.decrypt``: one or more sites of ``U2`` get the summed ciphertexts and ``N``, the sum of
   the ``n_k`` of ``U2``, decrypt, and answer with the mean update; the server checks that the
   answers agree and adds the mean to the global model.
"""

from __future__ import annotations

import json

TRAIN = "he.train"
KEYGEN = "he.keygen"
ENCRYPT = "he.encrypt"
DECRYPT = "he.decrypt"
KINDS = (TRAIN, KEYGEN, ENCRYPT, DECRYPT)

#: Config names.
SESSION = "he.session"            # all: the round's id
SITES = "he.sites"                # keygen: the other sites of U1, in the order of PEER_KEYS
ELECTED = "he.elected"            # encrypt: the site whose context is used
POLY_DEGREE = "he.poly_modulus_degree"   # keygen
SCALE_BITS = "he.scale_bits"             # keygen
COEFF_MOD = "he.coeff_mod_bit_sizes"     # keygen: a JSON list of ints
TOTAL = "he.total_samples"        # decrypt: N
NUM_SITES = "he.num_sites"        # encrypt: the sites asked to encrypt (|U1|)

#: Tensor names.
PUBLIC_KEY = "he.x25519_public_key"   # train reply: uint8[32]
ADVERT = "he.advert"                  # train reply: uint8, the key's signed advertisement
PEER_KEYS = "he.peer_keys"            # keygen task: uint8[other sites, 32]
PEER_ADVERTS = "he.peer_adverts"      # keygen task: the other sites' advertisements, packed
PEER_ADVERT_LENGTHS = "he.peer_advert_lengths"  # keygen task: their int64 lengths
PUBLIC_CONTEXT = "he.public_context"  # keygen reply: uint8 (no secret key)
SEALED = "he.sealed_contexts"         # keygen reply: uint8[other sites, L]; encrypt: uint8[L]
ELECTED_KEY = "he.elected_public_key"  # encrypt task (not to the elected site): uint8[32]
ELECTED_ADVERT = "he.elected_advert"  # encrypt task (not to the elected site): its advert
CIPHERTEXTS = "he.ciphertexts"        # encrypt reply / decrypt task: uint8 (packed)
LENGTHS = "he.ciphertext_lengths"     # their int64 lengths
MEAN = "he.mean_update"               # decrypt reply: float64, flat, in the model's order

PURPOSE = "he context"


def associated(session: str, sender: str, recipient: str) -> bytes:
    """Binds a sealed context to its round, sender and recipient."""
    return "\x1f".join(("fedcare he context", session, sender, recipient)).encode()


def int_list(raw: object, name: str) -> list[int]:
    """A JSON list of integers from a setting; ValueError if it is not one."""
    value = json.loads(raw) if isinstance(raw, str) else None
    if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"homomorphic aggregation: setting {name!r} is not a list of integers")
    return value
