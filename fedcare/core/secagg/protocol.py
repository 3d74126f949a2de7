"""The four steps of one secure-aggregation round, as task kinds and their settings.

Per round, with ``U1 ⊇ U2 ⊇ U3`` the sites still taking part after each step:

1. ``secagg.train``: a site trains, passes the update through its outbound filters, keeps it,
   and answers with two fresh X25519 public keys (for masks, for share encryption), signed with
   its certificate's key (:mod:`fedcare.core.advert`: job, round, session, site, keys), its
   sample count and training metrics. Answering sites are ``U1``; the server draws the
   neighbour graph over them and gives each site its weight ``n_k / N``.
2. ``secagg.share``: a site gets its neighbours' public keys and signed advertisements, checks
   every one against its own CA (:class:`~fedcare.core.identity.SiteIdentity`; one that fails
   makes it refuse the step, sending nothing), Shamir-shares (threshold ``t``) its self-mask
   seed and its masking private key among its neighbours and itself, and answers with each
   neighbour's shares encrypted for that neighbour. Answering sites are ``U2``.
3. ``secagg.masked``: a site gets the shares its neighbours in ``U2`` sent it, and uploads its
   fixed-point update plus its self mask and the pairwise masks with those neighbours, mod
   2**32. The server folds uploads into the modular sum as they arrive. Summed sites: ``U3``.
4. ``secagg.unmask``: each site of ``U3`` is told ``U3`` and ``U2 \\ U3``, and reveals its shares
   of the self-mask seeds of its neighbours in ``U3`` and of the masking keys of its neighbours
   in ``U2 \\ U3``, never both for one site. The server needs ``t`` shares of each secret.

The per-step settings travel in the task's config under the names below; lists of sites as
JSON arrays.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from fedcare.core.message import Scalar

TRAIN = "secagg.train"
SHARE = "secagg.share"
MASKED = "secagg.masked"
UNMASK = "secagg.unmask"
KINDS = (TRAIN, SHARE, MASKED, UNMASK)

#: Config names (every step carries SESSION; the others where noted).
SESSION = "secagg.session"        # all: the round's id, binds every key and ciphertext to it
SITES = "secagg.sites"            # share: U1 in order; a site's x coordinate is its place + 1
NEIGHBOURS = "secagg.neighbours"  # share: this site's neighbours (sorted)
THRESHOLD = "secagg.threshold"    # share: t
WEIGHT = "secagg.weight"          # share: n_k / N
CLIP = "secagg.clip"              # share: the fixed-point clipping bound
SENDERS = "secagg.senders"        # masked: the neighbours (in U2) whose shares are attached
SURVIVORS = "secagg.survivors"    # unmask: U3
DROPPED = "secagg.dropped"        # unmask: U2 \ U3

#: Tensor names of the key material.
MASK_KEY = "secagg.mask_public_key"
SHARE_KEY = "secagg.share_public_key"
ADVERT = "secagg.advert"              # train reply: uint8, the keys' signed advertisement
PEER_KEYS = "secagg.peer_keys"        # share task: [neighbour, (mask, share) key, 32] uint8
PEER_ADVERTS = "secagg.peer_adverts"  # share task: the neighbours' advertisements, packed
PEER_ADVERT_LENGTHS = "secagg.peer_advert_lengths"  # share task: their int64 lengths
SHARES = "secagg.shares"              # share reply / masked task: [peer, sealed] uint8
SELF_SEED_SHARES = "secagg.self_seed_shares"  # unmask reply: [survivor, share] uint8
MASK_KEY_SHARES = "secagg.mask_key_shares"    # unmask reply: [dropped, share] uint8
#: Metric a site reports in step 3: how many elements of its update were clipped.
CLIPPED = "secagg_clipped"


def site_list(config: Mapping[str, Scalar], name: str) -> list[str]:
    """A JSON list of site ids from a task's config; ValueError if it is not one."""
    raw = config.get(name)
    if not isinstance(raw, str):
        raise ValueError(f"secure aggregation: setting {name!r} is missing")
    value = json.loads(raw)
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ValueError(f"secure aggregation: setting {name!r} is not a list of site ids")
    if len(set(value)) != len(value):
        raise ValueError(f"secure aggregation: setting {name!r} repeats a site")
    return value


def as_setting(site_ids: Sequence[str]) -> str:
    return json.dumps(list(site_ids))


def share_associated(session: str, sender: str, recipient: str) -> bytes:
    """The associated data that binds an encrypted share to its round, sender and recipient."""
    return "\x1f".join(("fedcare secagg share", session, sender, recipient)).encode()
