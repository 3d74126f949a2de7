"""The site half of secure aggregation: one round's keys, shares and masked update.

A site signs its public keys with its certificate's key (:mod:`fedcare.core.advert`) and uses
a neighbour's keys only once its own :class:`~fedcare.core.identity.SiteIdentity` has verified
the neighbour's signature and certificate (:class:`~fedcare.core.errors.UntrustedKey`
otherwise: the site refuses the step and seals no share), so a server that substitutes keys
cannot read the shares it relays.

A site keeps, between the steps of a round (see :mod:`fedcare.core.secagg.protocol`), its
filtered update, its fresh private keys and self-mask seed, and the shares its neighbours sent
it; all of it is dropped when the round's unmasking step is answered or a new round starts.
A site refuses what would let the server learn its update: revealing a share of the masking
key of a site said to have dropped together with one of its self-mask seed (the survivor and
dropped lists must not meet), being called dropped after it sent its masked update, or
unmasking with fewer than ``t`` survivors.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from fedcare.core import advert
from fedcare.core.errors import PrivacyError
from fedcare.core.identity import SiteIdentity, required
from fedcare.core.message import Config, StatsResult, Task, TrainResult
from fedcare.core.secagg import protocol as p
from fedcare.core.secagg.crypto import KEY_BYTES, agree, new_private_key, public_key, seal, unseal
from fedcare.core.secagg.fixedpoint import DTYPE, FixedPoint
from fedcare.core.secagg.graph import share_holders
from fedcare.core.secagg.masks import add_masks, pair_seed
from fedcare.core.secagg.shamir import SHARE_BYTES, split
from fedcare.core.settings import setting_int, setting_str
from fedcare.core.weights import Weights
from fedcare.site.kept_update import KeptUpdate

_SHARE_PURPOSE = "share"


@dataclass
class _Round(KeptUpdate):
    mask_private: bytes = field(default_factory=new_private_key, repr=False)
    share_private: bytes = field(default_factory=new_private_key, repr=False)
    self_seed: bytes = field(default_factory=lambda: os.urandom(KEY_BYTES), repr=False)
    index: dict[str, int] = field(default_factory=dict)
    neighbours: list[str] = field(default_factory=list)
    mask_keys: dict[str, bytes] = field(default_factory=dict)
    share_keys: dict[str, bytes] = field(default_factory=dict)
    threshold: int = 0
    encoding: FixedPoint | None = None
    weight: float = 0.0
    own_shares: tuple[bytes, bytes] = (b"", b"")
    received: dict[str, tuple[bytes, bytes]] = field(default_factory=dict, repr=False)
    masked_sent: bool = False


class SecureAggregationSite:
    """Answers the secure-aggregation steps of one job at one site."""

    def __init__(self, site_id: str, identity: SiteIdentity | None = None,
                 noise_sites: int | None = None) -> None:
        """``identity``: this site's certificate and key, which sign its key advertisements
        and check its peers'. ``noise_sites``: this site adds its share of distributed-DP
        noise for sums of at least that many sites (:class:`fedcare.site.dp_noise.GaussianNoise`);
        it then takes part only in rounds with uniform weights and a threshold of at least that
        many."""
        self.site_id = site_id
        self.identity = identity
        self.noise_sites = noise_sites
        self._round: _Round | None = None

    def advertise(self, task: Task, trained: TrainResult) -> TrainResult:
        """Step 1, after training: keep the (filtered) update, answer with fresh public keys,
        signed."""
        identity = required(self.identity, self.site_id, "secure aggregation")
        if task.weights is None:
            raise ValueError("a secure training task without the global model")
        missing = [n for n in trained.weights if n not in task.weights]
        if missing:
            raise ValueError(f"secure aggregation averages model parameters only; {missing} "
                             "are not in the global model")
        state = _Round.kept(task, trained, _session(task.config), task.weights)
        self._round = state
        mask, share = public_key(state.mask_private), public_key(state.share_private)
        signed = identity.sign(_statement(state, self.site_id, mask, share))
        return TrainResult(Weights({p.MASK_KEY: np.frombuffer(mask, np.uint8).copy(),
                                    p.SHARE_KEY: np.frombuffer(share, np.uint8).copy(),
                                    p.ADVERT: advert.as_tensor(signed)}),
                           trained.num_samples, dict(trained.metrics))

    def share(self, task: Task) -> StatsResult:
        """Step 2: Shamir-share the self-mask seed and masking key among the neighbours and
        this site, each neighbour's shares encrypted for it, once every neighbour's keys are
        verified as signed by that neighbour for this round."""
        state = self._current(task)
        identity = required(self.identity, self.site_id, "secure aggregation")
        config = task.config
        sites = p.site_list(config, p.SITES)
        neighbours = p.site_list(config, p.NEIGHBOURS)
        if self.site_id not in sites or self.site_id in neighbours or not set(
                neighbours) <= set(sites):
            raise ValueError("secure aggregation: inconsistent site lists")
        threshold = _int(config, p.THRESHOLD)
        holders = sorted([self.site_id, *neighbours])
        if not 2 <= threshold <= len(holders):
            raise ValueError(f"secure aggregation: threshold t={threshold} with "
                             f"{len(holders)} share holders (this site and its neighbours)")
        keys = np.asarray(task.weights[p.PEER_KEYS] if task.weights else None)
        if keys.shape != (len(neighbours), 2, KEY_BYTES) or keys.dtype != np.uint8:
            raise ValueError("secure aggregation: peer keys do not match the neighbours")
        got = task.weights or Weights({})
        adverts = advert.unpack(got.get(p.PEER_ADVERTS), got.get(p.PEER_ADVERT_LENGTHS),
                                len(neighbours))
        identity.check_peers(
            {peer: (_statement(state, peer, keys[i, 0].tobytes(), keys[i, 1].tobytes()),
                    adverts[i]) for i, peer in enumerate(neighbours)},
            what="secure key sharing", job_id=state.job_id, round_num=state.round_num)
        state.index = {s: i + 1 for i, s in enumerate(sites)}
        state.neighbours = neighbours
        state.mask_keys = {s: keys[i, 0].tobytes() for i, s in enumerate(neighbours)}
        state.share_keys = {s: keys[i, 1].tobytes() for i, s in enumerate(neighbours)}
        state.threshold = threshold
        state.encoding = FixedPoint(_float(config, p.CLIP), len(sites))
        state.weight = _float(config, p.WEIGHT)
        if self.noise_sites is not None:
            _check_noise_shares(state.weight, len(sites), threshold, self.noise_sites)
        xs = [state.index[s] for s in holders]
        seed_shares = split(state.self_seed, xs, threshold)
        key_shares = split(state.mask_private, xs, threshold)
        me = state.index[self.site_id]
        state.own_shares = (seed_shares[me], key_shares[me])
        sealed = []
        for peer in neighbours:
            x = state.index[peer]
            key = agree(state.share_private, state.share_keys[peer], _SHARE_PURPOSE,
                        state.session, (self.site_id, peer))
            sealed.append(seal(key, seed_shares[x] + key_shares[x],
                               p.share_associated(state.session, self.site_id, peer)))
        rows = np.frombuffer(b"".join(sealed), np.uint8).reshape(len(neighbours), -1)
        return StatsResult(Weights({p.SHARES: rows.copy()}), 1)

    def masked(self, task: Task) -> TrainResult:
        """Step 3: keep the neighbours' shares; upload the masked fixed-point update."""
        state = self._current(task)
        if state.encoding is None:
            raise ValueError("secure aggregation: masked input asked before the key shares")
        senders = p.site_list(task.config, p.SENDERS)
        if not set(senders) <= set(state.neighbours):
            raise ValueError("secure aggregation: shares from sites that are not neighbours")
        rows = np.asarray(task.weights[p.SHARES] if task.weights else None)
        if rows.ndim != 2 or rows.shape[0] != len(senders) or rows.dtype != np.uint8:
            raise ValueError("secure aggregation: the shares do not match their senders")
        for peer, row in zip(senders, rows, strict=True):
            key = agree(state.share_private, state.share_keys[peer], _SHARE_PURPOSE,
                        state.session, (self.site_id, peer))
            plain = unseal(key, row.tobytes(),
                           p.share_associated(state.session, peer, self.site_id))
            if len(plain) != 2 * SHARE_BYTES:
                raise ValueError(f"secure aggregation: malformed shares from {peer}")
            state.received[peer] = (plain[:SHARE_BYTES], plain[SHARE_BYTES:])
        masked: dict[str, np.ndarray] = {}
        clipped = 0
        for name, value in state.update.items():
            out = np.empty(value.size, DTYPE)
            clipped += state.encoding.encode(value, state.weight, out, state.start[name])
            masked[name] = out
        flat = list(masked.values())
        pairs = [(peer, pair_seed(state.mask_private, state.mask_keys[peer], state.session,
                                  self.site_id, peer)) for peer in senders]
        add_masks(flat, self.site_id, state.self_seed, pairs)
        state.masked_sent = True
        shaped = {n: a.reshape(np.shape(state.update[n])) for n, a in masked.items()}
        return TrainResult(Weights.adopt(shaped), state.num_samples, {p.CLIPPED: clipped})

    def unmask(self, task: Task) -> StatsResult:
        """Step 4: reveal the shares the server needs, and forget the round."""
        state = self._current(task)
        survivors = p.site_list(task.config, p.SURVIVORS)
        dropped = p.site_list(task.config, p.DROPPED)
        if set(survivors) & set(dropped):
            raise ValueError("secure aggregation: refused: a site is both summed and dropped")
        if self.site_id not in survivors or not state.masked_sent:
            raise ValueError("secure aggregation: refused: this site's masked update was "
                             "sent, yet it is not among the summed sites")
        if len(survivors) < state.threshold:
            raise ValueError(f"secure aggregation: refused: {len(survivors)} summed sites, "
                             f"fewer than t={state.threshold}")
        holders = share_holders({self.site_id: state.neighbours}, self.site_id)
        seed_rows, key_rows = [], []
        for site in sorted(set(holders) & set(survivors)):
            seed_rows.append(state.own_shares[0] if site == self.site_id
                             else self._received(state, site)[0])
        for site in sorted(set(state.neighbours) & set(dropped)):
            key_rows.append(self._received(state, site)[1])
        self._round = None
        return StatsResult(Weights({p.SELF_SEED_SHARES: _rows(seed_rows),
                                    p.MASK_KEY_SHARES: _rows(key_rows)}), 1)

    def _current(self, task: Task) -> _Round:
        state = self._round
        if state is None or _session(task.config) != state.session:
            raise ValueError("secure aggregation: no round in progress for this session")
        return state

    @staticmethod
    def _received(state: _Round, site: str) -> tuple[bytes, bytes]:
        shares = state.received.get(site)
        if shares is None:
            raise ValueError(f"secure aggregation: this site holds no shares of {site}")
        return shares


def _statement(state: _Round, site: str, mask_key: bytes, share_key: bytes) -> bytes:
    """What ``site`` signed for its keys in this round, as this site saw the round."""
    return advert.statement(p.TRAIN, state.job_id, state.round_num, state.session, site,
                            [mask_key, share_key])


def _rows(rows: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(rows), np.uint8).reshape(len(rows), SHARE_BYTES).copy()


def _session(config: Config) -> str:
    return setting_str(config, p.SESSION, "secure aggregation")


def _int(config: Config, name: str) -> int:
    return setting_int(config, name, "secure aggregation")


def _float(config: Config, name: str) -> float:
    value = config.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"secure aggregation: setting {name!r} must be a number")
    return float(value)


def _check_noise_shares(weight: float, num_sites: int, threshold: int, noise_sites: int) -> None:
    """Refuse a round in which this site's share of distributed-DP noise would not protect it:
    unequal weights, or a sum of fewer sites than the noise was sized for."""
    if not math.isclose(weight, 1 / num_sites, rel_tol=1e-9):
        raise PrivacyError(f"secure aggregation: this site adds distributed-DP noise "
                           f"(gaussian_noise, secure_aggregation: true), which holds only "
                           f"with uniform weights; the round weighs it {weight:.6g}, not "
                           f"1/{num_sites} (use SecureAggregation(weighting='uniform'))")
    if threshold < noise_sites:
        raise PrivacyError(f"secure aggregation: threshold t={threshold} lets the server sum "
                           f"{threshold} sites, but this site's gaussian_noise is sized for "
                           f"sums of at least num_sites={noise_sites}: the noise would fall "
                           "short of what was accounted")
