"""The site half of homomorphic (CKKS) aggregation: one round's key exchange, encrypted update
and decryption of the sum (see :mod:`fedcare.core.he_protocol`).

A site keeps, between the steps of a round, its filtered update, the global model it started
from, a fresh X25519 private key and, once received, the round's secret CKKS context; all of
it is dropped when a new round starts or the site answers the decryption step. The secret
context reaches the other sites sealed for each of them, so the server, which relays it, only
ever holds the public context. A site signs its X25519 key with its certificate's key
(:mod:`fedcare.core.advert`), and uses another site's key only once its own
:class:`~fedcare.core.identity.SiteIdentity` has verified that site's signature and certificate:
the elected site before it seals the secret context for the others, the others before they
unseal it (:class:`~fedcare.core.errors.UntrustedKey` otherwise, naming the site; nothing is
sealed or encrypted), so a server that substitutes keys can neither read the secret context
nor have a site encrypt under a context of its own making.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from fedcare.core import advert
from fedcare.core import he_protocol as p
from fedcare.core.ckks import CkksKeys, pack, unpack
from fedcare.core.identity import SiteIdentity, required
from fedcare.core.message import Config, StatsResult, Task, TrainResult
from fedcare.core.secagg.crypto import KEY_BYTES, agree, new_private_key, public_key, seal, unseal
from fedcare.core.settings import setting_int, setting_str
from fedcare.core.weights import Weights
from fedcare.site.kept_update import KeptUpdate

_WHAT = "homomorphic aggregation"


@dataclass
class _Round(KeptUpdate):
    private: bytes = field(default_factory=new_private_key, repr=False)
    keys: CkksKeys | None = field(default=None, repr=False)


class HomomorphicSite:
    """Answers the homomorphic-aggregation steps of one job at one site."""

    def __init__(self, site_id: str, identity: SiteIdentity | None = None) -> None:
        self.site_id = site_id
        self.identity = identity
        self._round: _Round | None = None

    def advertise(self, task: Task, trained: TrainResult) -> TrainResult:
        """Step 1, after training: keep the (filtered) update, answer with a fresh public key,
        signed."""
        identity = required(self.identity, self.site_id, _WHAT)
        if task.weights is None:
            raise ValueError("a homomorphic training task without the global model")
        names = list(task.weights)
        if sorted(trained.weights) != sorted(names):
            raise ValueError("homomorphic aggregation sums every model parameter; the update "
                             f"has {sorted(trained.weights)}, the model {sorted(names)}")
        state = _Round.kept(task, trained, _session(task.config), task.weights)
        self._round = state
        key = public_key(state.private)
        signed = identity.sign(_statement(state, self.site_id, key))
        return TrainResult(Weights({p.PUBLIC_KEY: np.frombuffer(key, np.uint8).copy(),
                                    p.ADVERT: advert.as_tensor(signed)}),
                           trained.num_samples, dict(trained.metrics))

    def keygen(self, task: Task) -> StatsResult:
        """Step 2, at the elected site: a fresh CKKS context; its public part for the server,
        its secret part sealed for each other site whose key it verified."""
        state = self._current(task)
        identity = required(self.identity, self.site_id, _WHAT)
        config = task.config
        others = _site_list(config, p.SITES)
        if self.site_id in others:
            raise ValueError("homomorphic aggregation: this site is among its own recipients")
        peer_keys = np.asarray(task.weights[p.PEER_KEYS] if task.weights else None)
        if peer_keys.dtype != np.uint8 or peer_keys.shape != (len(others), KEY_BYTES):
            raise ValueError("homomorphic aggregation: peer keys do not match the sites")
        got = task.weights or Weights({})
        adverts = advert.unpack(got.get(p.PEER_ADVERTS), got.get(p.PEER_ADVERT_LENGTHS),
                                len(others))
        identity.check_peers(
            {peer: (_statement(state, peer, peer_keys[i].tobytes()), adverts[i])
             for i, peer in enumerate(others)},
            what="homomorphic key generation", job_id=state.job_id, round_num=state.round_num)
        keys = CkksKeys.generate(_int(config, p.POLY_DEGREE), _int(config, p.SCALE_BITS),
                                 p.int_list(config.get(p.COEFF_MOD), p.COEFF_MOD))
        secret = keys.secret_bytes()
        sealed = []
        for peer, peer_key in zip(others, peer_keys, strict=True):
            key = agree(state.private, peer_key.tobytes(), p.PURPOSE, state.session,
                        (self.site_id, peer))
            sealed.append(seal(key, secret, p.associated(state.session, self.site_id, peer)))
        state.keys = keys
        rows = (np.frombuffer(b"".join(sealed), np.uint8).reshape(len(others), -1).copy()
                if others else np.zeros((0, 1), np.uint8))
        public = np.frombuffer(keys.public_bytes(), np.uint8).copy()
        return StatsResult(Weights({p.PUBLIC_CONTEXT: public, p.SEALED: rows}), 1)

    def encrypt(self, task: Task) -> TrainResult:
        """Step 3: take the round's secret context (unsealed, unless this site made it) and
        upload ``n_k * (update - global)`` encrypted. The elected site's key is verified before
        anything is unsealed with it."""
        state = self._current(task)
        elected = task.config.get(p.ELECTED)
        if not isinstance(elected, str) or not elected:
            raise ValueError(f"homomorphic aggregation: setting {p.ELECTED!r} is missing")
        if elected != self.site_id:
            got = task.weights or Weights({})
            sealed = np.asarray(got.get(p.SEALED))
            their_key = np.asarray(got.get(p.ELECTED_KEY))
            if (sealed.dtype != np.uint8 or sealed.ndim != 1 or their_key.dtype != np.uint8
                    or their_key.shape != (KEY_BYTES,)):
                raise ValueError("homomorphic aggregation: no sealed context for this site")
            signed = advert.from_tensor(got.get(p.ELECTED_ADVERT))
            required(self.identity, self.site_id, _WHAT).check_peers(
                {elected: (_statement(state, elected, their_key.tobytes()), signed or b"")},
                what="homomorphic encrypted input", job_id=state.job_id,
                round_num=state.round_num)
            key = agree(state.private, their_key.tobytes(), p.PURPOSE, state.session,
                        (elected, self.site_id))
            keys = CkksKeys.load(unseal(key, sealed.tobytes(),
                                        p.associated(state.session, elected, self.site_id)))
            if not keys.is_private:
                raise ValueError("homomorphic aggregation: the context holds no secret key")
            state.keys = keys
        if state.keys is None:
            raise ValueError("homomorphic aggregation: this site made no context this round")
        delta = np.concatenate([
            (np.asarray(state.update[n], np.float64) - np.asarray(state.start[n], np.float64)
             ).reshape(-1) for n in state.start])
        delta *= state.num_samples
        _check_headroom(delta, _int(task.config, p.NUM_SITES), state.keys.largest_sum)
        data, lengths = pack(state.keys.encrypt(delta))
        return TrainResult(Weights({p.CIPHERTEXTS: data, p.LENGTHS: lengths}),
                           state.num_samples, {})

    def decrypt(self, task: Task) -> StatsResult:
        """Step 4: decrypt the summed ciphertexts, answer with the mean update (the sum
        divided by ``N``), and forget the round."""
        state = self._current(task)
        if state.keys is None:
            raise ValueError("homomorphic aggregation: no context to decrypt with")
        total = task.config.get(p.TOTAL)
        if isinstance(total, bool) or not isinstance(total, int) or total <= 0:
            raise ValueError(f"homomorphic aggregation: setting {p.TOTAL!r} must be an "
                             "integer > 0")
        got = task.weights or Weights({})
        chunks = unpack(np.asarray(got.get(p.CIPHERTEXTS)), np.asarray(got.get(p.LENGTHS)))
        size = sum(int(np.size(v)) for v in state.start.values())
        values = state.keys.decrypt(chunks)
        if values.size < size or len(chunks) * state.keys.slots < size:
            raise ValueError(f"homomorphic aggregation: the sum holds {values.size} values, "
                             f"the model {size}")
        self._round = None
        return StatsResult(Weights({p.MEAN: values[:size] / total}), 1)

    def _current(self, task: Task) -> _Round:
        state = self._round
        if state is None or _session(task.config) != state.session:
            raise ValueError("homomorphic aggregation: no round in progress for this session")
        return state


def _statement(state: _Round, site: str, key: bytes) -> bytes:
    """What ``site`` signed for its key in this round, as this site saw the round."""
    return advert.statement(p.TRAIN, state.job_id, state.round_num, state.session, site, [key])


def _session(config: Config) -> str:
    return setting_str(config, p.SESSION, "homomorphic aggregation")


def _int(config: Config, name: str) -> int:
    return setting_int(config, name, "homomorphic aggregation")


def _site_list(config: Config, name: str) -> list[str]:
    raw = config.get(name)
    value = json.loads(raw) if isinstance(raw, str) else None
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value) or len(
            set(value)) != len(value):
        raise ValueError(f"homomorphic aggregation: setting {name!r} is not a list of sites")
    return value


def _check_headroom(values: np.ndarray, num_sites: int, largest_sum: float) -> None:
    """Refuse values whose sum over ``num_sites`` sites could reach the context's limit (with
    a factor 2 to spare): CKKS would decrypt a wrapped-around sum without any error."""
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    if num_sites < 1 or not peak * num_sites < largest_sum / 2:
        raise ValueError(f"homomorphic aggregation: this site's values (samples x update, up "
                         f"to {peak:.4g}) summed over {num_sites} sites could exceed what the "
                         f"CKKS context holds (|sum| < {largest_sum:.4g}); give the job more "
                         "coefficient-modulus bits, e.g. coeff_mod_bit_sizes=(60, 40, 60)")
