"""Training rounds with homomorphic encryption (CKKS, TenSEAL): the server adds ciphertexts.

Each round runs the four steps of :mod:`fedcare.core.he_protocol` through the controller's
gather: train (the update stays at the site; it answers with an X25519 public key), key
generation at one elected site (a fresh CKKS context per round; its secret part sealed for each
other site, its public part for the server), encrypted upload of ``n_k * (update - global)``
(added, ciphertext by ciphertext, as the uploads arrive, with the public context only), and
decryption of the sum at ``decryptors`` sites, which answer with the mean update. The server
checks that the decrypting sites agree and adds the mean to the global model: plain FedAvg
within CKKS precision (about 1e-7 absolute with the default 2**40 scale).

Trust assumptions. The server never holds the secret key: it relays the secret context sealed
pairwise (X25519 + HKDF + ChaCha20-Poly1305, as secure aggregation's shares), keeps only the
public context, and cannot decrypt an upload. The sites' X25519 keys arrive signed by each
site's certificate (:mod:`fedcare.core.advert`) and are relayed as they came; every site checks
the keys it uses, so a server that substitutes them gets refusals, not the secret context.
Otherwise it is assumed *honest-but-curious*: it asks the sites to decrypt only the sum of the
round (a server that sent one site's ciphertext for decryption would learn that site's update).
Every site holds the secret key, so a site that colludes with the server reveals every site's
update. The server learns, as in plain FedAvg, each site's sample count and training metrics,
and the mean update.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from typing import Any

import numpy as np

from fedcare.algorithms.fedavg import Cyclic, FedAvg, finalize_mean
from fedcare.core import advert
from fedcare.core import he_protocol as p
from fedcare.core.ckks import CkksKeys, check_parameters, num_chunks, unpack
from fedcare.core.ckks import pack as pack_chunks
from fedcare.core.errors import AggregationError, ConfigError
from fedcare.core.job import Job
from fedcare.core.message import Config, Metrics, StatsResult, TrainResult
from fedcare.core.secagg.crypto import KEY_BYTES
from fedcare.core.weights import Weights
from fedcare.core.workflow import SiteFailure, SiteMetrics, StepOutcome, WorkflowContext
from fedcare.server.workflows.steps import RoundSteps, finite_model, summed_metrics
from fedcare.server.workflows.training import TrainRounds

log = logging.getLogger(__name__)


class HomomorphicAggregation(TrainRounds):
    """FedAvg rounds in which the server sums CKKS-encrypted updates it cannot decrypt.

    Args:
        num_rounds: Rounds to train; the job's ``num_rounds`` by default.
        poly_modulus_degree: CKKS ring dimension (4096 to 32768); a ciphertext holds half as
            many values.
        scale_bits: The CKKS scale, ``2**scale_bits``: the precision of the encoding.
        coeff_mod_bit_sizes: The coefficient moduli; ``(60, 60)`` by default: one 60-bit
            data prime (sums need no multiplication, so no rescaling level) and the special
            prime. A sum decrypts correctly while its values stay below ``2**(data bits -
            scale_bits - 1)`` (2**19 by default); each site refuses to encrypt values that
            could break that (``(60, 40, 60)`` gives 2**59, at 1.8x the bytes).
        decryptors: How many summed sites decrypt the sum (their answers must agree within
            ``tolerance``); at least 1.
        tolerance: The largest difference allowed between two decrypting sites' answers.
    """

    task_kinds: tuple[str, ...] | None = p.KINDS  # what a site's privacy policy must allow

    name = "homomorphic_train"

    def __init__(self, num_rounds: int | None = None, *, poly_modulus_degree: int = 8192,
                 scale_bits: int = 40, coeff_mod_bit_sizes: tuple[int, ...] | None = None,
                 decryptors: int = 1, tolerance: float = 1e-6) -> None:
        super().__init__(num_rounds)
        moduli = (60, 60) if coeff_mod_bit_sizes is None else tuple(
            coeff_mod_bit_sizes)
        check_parameters(poly_modulus_degree, scale_bits, moduli)
        if isinstance(decryptors, bool) or not isinstance(decryptors, int) or decryptors < 1:
            raise ConfigError(f"homomorphic aggregation: decryptors must be an integer >= 1, "
                              f"got {decryptors!r}")
        if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not (
                0 <= tolerance < float("inf")):
            raise ConfigError(f"homomorphic aggregation: tolerance must be a number >= 0, got "
                              f"{tolerance!r}")
        self.poly_modulus_degree = poly_modulus_degree
        self.scale_bits = scale_bits
        self.coeff_mod_bit_sizes = moduli
        self.decryptors = decryptors
        self.tolerance = float(tolerance)
        #: The public context of the last round (for tests and inspection): no secret key.
        self.public_keys: CkksKeys | None = None

    def check_job(self, job: Job) -> None:
        strategy = job.strategy
        if not isinstance(strategy, FedAvg) or isinstance(strategy, Cyclic) or (
                type(strategy).aggregator is not FedAvg.aggregator):
            raise ConfigError(f"homomorphic aggregation computes FedAvg's weighted mean; "
                              f"{type(strategy).__name__} aggregates otherwise")
        if job.site_ids is not None and self.decryptors > len(job.site_ids):
            raise ConfigError(f"homomorphic aggregation: decryptors={self.decryptors} exceeds "
                              f"the job's {len(job.site_ids)} sites")

    def _round(self, ctx: WorkflowContext, round_num: int, weights: Weights, attempt: int,
               failures: list[SiteFailure]) -> Weights:
        started = time.monotonic()
        strategy = ctx.job.strategy
        selected = strategy.select_sites(round_num, ctx.sites())
        ctx.begin_round(round_num, selected)
        run = _Round(ctx, round_num, attempt, failures)
        # 1. train, keep the update at the site, advertise a key
        keys, samples, metrics = run.advertise(
            selected, strategy.train_payload(round_num, weights),
            lambda s: strategy.configure_train(round_num, s))
        u1 = sorted(keys)
        # 2. a fresh CKKS context at the first site; its secret part sealed for the others
        elected = u1[0]
        public, sealed = run.keygen(elected, u1[1:], keys, self._settings())
        self.public_keys = public
        # 3. encrypted updates, added as they arrive
        size = sum(int(np.size(v)) for v in weights.values())
        total, summed = run.encrypt(u1, elected, keys[elected], sealed, public,
                                    num_chunks(size, public.slots), samples)
        # 4. decryption of the sum at the first summed sites
        n = sum(samples[s] for s in summed)
        mean = run.decrypt(summed[:self.decryptors], public.serialize(total), n, size,
                           self.tolerance)
        new_weights = finite_model(ctx, round_num, _applied(weights, mean))
        log.info("job %s round %d: homomorphically summed %d of %d sites (context from %s)",
                 ctx.job_id, round_num, len(summed), len(selected), elected)
        ctx.finish_round(round_num, new_weights,
                         StepOutcome(summed, summed_metrics(summed, samples, metrics), failures,
                                     {s: SiteMetrics(samples[s], dict(metrics[s]))
                                      for s in summed}), started)
        return new_weights

    def _settings(self) -> Config:
        return {p.POLY_DEGREE: self.poly_modulus_degree, p.SCALE_BITS: self.scale_bits,
                p.COEFF_MOD: "[" + ", ".join(map(str, self.coeff_mod_bit_sizes)) + "]"}


def _applied(weights: Weights, mean: np.ndarray) -> Weights:
    """The global model plus the flat mean update, each parameter cast back to its dtype."""
    acc: dict[str, np.ndarray] = {}
    start = 0
    for name, ref in weights.items():
        count = int(np.size(ref))
        acc[name] = mean[start:start + count].reshape(np.shape(ref)) + np.asarray(
            ref, np.float64)
        start += count
    return finalize_mean(acc, 1.0, weights)


class _Round(RoundSteps):
    """The gathers of one homomorphic round."""

    session_key, first_kind = p.SESSION, p.TRAIN

    def __init__(self, ctx: WorkflowContext, round_num: int, attempt: int,
                 failures: list[SiteFailure]) -> None:
        super().__init__(ctx, round_num, attempt, failures)
        self.adverts: dict[str, bytes] = {}  # each site's signed key, relayed as it came

    def _error(self, message: str) -> AggregationError:
        return AggregationError(message, job_id=self.ctx.job_id, round_num=self.round_num)

    def advertise(self, sites: list[str], payload: Weights, configure: Any
                  ) -> tuple[dict[str, bytes], dict[str, int], dict[str, Metrics]]:
        request = dataclasses.replace(
            self._request(p.TRAIN, TrainResult), site_ids=sites, payload=payload,
            configure=lambda s: self._config(configure(s)))
        keys: dict[str, bytes] = {}
        samples: dict[str, int] = {}
        metrics: dict[str, Metrics] = {}
        with contextlib.closing(self.ctx.gather(request, self.failures)) as arrivals:
            for arrival in arrivals:
                result = arrival.result
                assert isinstance(result, TrainResult)
                key = np.asarray(result.weights.get(p.PUBLIC_KEY))
                signed = advert.from_tensor(result.weights.get(p.ADVERT))
                if (sorted(result.weights) != sorted([p.PUBLIC_KEY, p.ADVERT])
                        or signed is None or key.dtype != np.uint8
                        or key.shape != (KEY_BYTES,)):
                    self._fail(arrival.site_id, p.TRAIN, "sent no valid signed public key")
                    continue
                if result.num_samples <= 0:
                    self._fail(arrival.site_id, p.TRAIN, "trained on no samples")
                    continue
                keys[arrival.site_id] = key.tobytes()
                self.adverts[arrival.site_id] = signed
                samples[arrival.site_id] = result.num_samples
                metrics[arrival.site_id] = dict(result.metrics)
        self.ctx.require(len(keys), self.round_num, "homomorphic training", self.failures)
        return keys, samples, metrics

    def keygen(self, elected: str, others: list[str], keys: dict[str, bytes],
               settings: Config) -> tuple[CkksKeys, dict[str, bytes]]:
        peer_keys = np.stack([np.frombuffer(keys[s], np.uint8) for s in others]) if others \
            else np.zeros((0, KEY_BYTES), np.uint8)
        data, lengths = advert.pack([self.adverts[s] for s in others])
        request = dataclasses.replace(
            self._request(p.KEYGEN, StatsResult), site_ids=[elected],
            payload=Weights({p.PEER_KEYS: peer_keys, p.PEER_ADVERTS: data,
                             p.PEER_ADVERT_LENGTHS: lengths}),
            configure=lambda s: self._config({p.SITES: _as_list(others), **settings}))
        got: StatsResult | None = None
        with contextlib.closing(self.ctx.gather(request, self.failures)) as arrivals:
            for arrival in arrivals:
                assert isinstance(arrival.result, StatsResult)
                got = arrival.result
        if got is None:
            raise self._error(f"homomorphic key generation: site {elected} made no context")
        rows = np.asarray(got.values.get(p.SEALED))
        context = np.asarray(got.values.get(p.PUBLIC_CONTEXT))
        if (rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[0] != len(others)
                or context.dtype != np.uint8 or context.ndim != 1):
            raise self._error(f"homomorphic key generation: site {elected} sent malformed "
                              "contexts")
        try:
            public = CkksKeys.load(context.tobytes())
        except ValueError as exc:
            raise self._error(f"homomorphic key generation: site {elected}: {exc}") from None
        if public.is_private:  # the server must never hold the secret key
            raise self._error(f"homomorphic key generation: site {elected} sent a context "
                              "with its secret key; refused")
        return public, {s: row.tobytes() for s, row in zip(others, rows, strict=True)}

    def encrypt(self, u1: list[str], elected: str, elected_key: bytes,
                sealed: dict[str, bytes], public: CkksKeys, chunks: int,
                samples: dict[str, int]) -> tuple[list[Any], list[str]]:
        def payload(site: str) -> Weights | None:
            if site == elected:
                return None
            return Weights({p.SEALED: np.frombuffer(sealed[site], np.uint8),
                            p.ELECTED_KEY: np.frombuffer(elected_key, np.uint8),
                            p.ELECTED_ADVERT: advert.as_tensor(self.adverts[elected])})

        request = dataclasses.replace(
            self._request(p.ENCRYPT, TrainResult), site_ids=u1, payload_for=payload,
            configure=lambda s: self._config({p.ELECTED: elected, p.NUM_SITES: len(u1)}))
        total: list[Any] | None = None
        summed: list[str] = []
        with contextlib.closing(self.ctx.gather(request, self.failures)) as arrivals:
            for arrival in arrivals:
                site = arrival.site_id
                result = arrival.result
                assert isinstance(result, TrainResult)
                try:
                    parts = unpack(np.asarray(result.weights.get(p.CIPHERTEXTS)),
                                   np.asarray(result.weights.get(p.LENGTHS)))
                    if len(parts) != chunks:
                        raise ValueError(f"{len(parts)} ciphertexts, expected {chunks}")
                    if result.num_samples != samples[site]:
                        raise ValueError("its sample count changed since training")
                    total = public.add(total, parts)
                except ValueError as exc:
                    self._fail(site, p.ENCRYPT, f"sent a malformed encrypted update: {exc}")
                    continue
                summed.append(site)
                del result, arrival, parts  # one upload in memory at a time
        self.ctx.require(len(summed), self.round_num, "homomorphic encrypted input",
                         self.failures)
        if total is None:
            raise self._error("homomorphic encrypted input: no site sent an update")
        return total, sorted(summed)

    def decrypt(self, sites: list[str], total: list[bytes], n: int, size: int,
                tolerance: float) -> np.ndarray:
        data, lengths = pack_chunks(total)
        request = dataclasses.replace(
            self._request(p.DECRYPT, StatsResult), site_ids=sites,
            payload=Weights({p.CIPHERTEXTS: data, p.LENGTHS: lengths}),
            configure=lambda s: self._config({p.TOTAL: n}))
        answers: dict[str, np.ndarray] = {}
        with contextlib.closing(self.ctx.gather(request, self.failures)) as arrivals:
            for arrival in arrivals:
                assert isinstance(arrival.result, StatsResult)
                mean = np.asarray(arrival.result.values.get(p.MEAN))
                if mean.dtype != np.float64 or mean.shape != (size,):
                    self._fail(arrival.site_id, p.DECRYPT, "sent a malformed mean update")
                    continue
                answers[arrival.site_id] = mean
        if not answers:
            raise self._error(f"homomorphic decryption: none of {sites} decrypted the sum")
        first, *rest = sorted(answers)
        for other in rest:
            gap = float(np.abs(answers[first] - answers[other]).max(initial=0.0))
            if not gap <= tolerance:
                raise self._error(f"homomorphic decryption: sites {first} and {other} "
                                  f"disagree by {gap:.3g} (> tolerance {tolerance:g})")
        return answers[first]


def _as_list(sites: list[str]) -> str:
    return json.dumps(sites)
