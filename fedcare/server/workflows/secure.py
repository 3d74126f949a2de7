"""Training rounds with secure aggregation: the server learns the sum of the updates, not one.

Each round runs the four steps of :mod:`fedcare.core.secagg.protocol` through the controller's
gather: train and advertise keys, share keys, masked input (folded into a modular uint32 sum as
it arrives, :class:`~fedcare.algorithms.secagg.MaskedSumAggregator`), unmask. The server then
removes the masks with the reconstructed secrets, decodes the sum to the sample-weighted mean
update of the summed sites and adds it to the global model: plain FedAvg up to the fixed-point
bound of :mod:`fedcare.core.secagg.fixedpoint`. Sites that drop out after step 1 are left out;
sites that drop out after sending their masked update stay in the sum (their self masks are
rebuilt from ``t`` of their neighbours' shares). A round ends with at least ``t`` and
``min_sites`` sites summed, or fails; a round that fell short because sites lost their
connection runs again (as :class:`TrainRounds` does).

The server learns each site's sample count and training metrics (as in plain FedAvg) and the
sum of the weighted updates of at least ``t`` sites; nothing else of any update. It relays the
sites' public keys with their signatures (:mod:`fedcare.core.advert`) as they came: each site
checks its neighbours' before sealing a share, so a server that substitutes keys gets refusals,
not shares. The server still tells each site who survived and who dropped, and nothing checks
that it tells them all the same (the consistency round of Bonawitz et al.'s active-adversary
protocol is not implemented): it is trusted to run the protocol as written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping

import numpy as np

from fedcare.algorithms.fedavg import Cyclic, FedAvg, finalize_mean
from fedcare.algorithms.secagg import MaskedSumAggregator
from fedcare.core import advert
from fedcare.core.buffers import BufferPool
from fedcare.core.errors import AggregationError, ConfigError
from fedcare.core.job import Job
from fedcare.core.message import Config, Metrics, StatsResult, TrainResult
from fedcare.core.secagg import protocol as p
from fedcare.core.secagg.crypto import KEY_BYTES, SEAL_OVERHEAD, public_key
from fedcare.core.secagg.fixedpoint import FixedPoint
from fedcare.core.secagg.graph import neighbours, share_holders
from fedcare.core.secagg.masks import pair_seed, remove_masks
from fedcare.core.secagg.shamir import SHARE_BYTES, combine
from fedcare.core.validation import incompatibilities
from fedcare.core.weights import Weights
from fedcare.core.workflow import SiteFailure, SiteMetrics, StepOutcome, WorkflowContext
from fedcare.server.streams import RoundStreams
from fedcare.server.workflows.steps import RoundSteps, finite_model, summed_metrics
from fedcare.server.workflows.training import TrainRounds

log = logging.getLogger(__name__)
_SEALED_BYTES = 2 * SHARE_BYTES + SEAL_OVERHEAD


class SecureAggregation(TrainRounds):
    """FedAvg rounds in which every update is masked (Bonawitz et al. 2017; Bell et al. 2020).

    Args:
        num_rounds: Rounds to train; the job's ``num_rounds`` by default.
        threshold: ``t``, the shares needed to rebuild a site's secret, and the fewest sites a
            round may sum; at least 2. By default a majority of each site's share holders
            (``n // 2 + 1`` with the complete graph).
        neighbours: SecAgg+: each site masks with and shares to this many others (a random
            graph, even degree), instead of all of them; O(log n) keeps it secure with high
            probability. None: the complete graph of SecAgg.
        clip: Each element of a site's update (trained minus global model) is clipped to
            ``[-clip, clip]`` before fixed-point encoding; the finer the encoding, the smaller
            it is (see :mod:`fedcare.core.secagg.fixedpoint`).
        weighting: ``"samples"``: FedAvg's mean, site k weighted by ``n_k / N``. ``"uniform"``:
            every site weighs ``1 / n``; what distributed DP needs (sites that add their own
            share of noise, :class:`fedcare.site.dp_noise.GaussianNoise` with
            ``secure_aggregation``, accept only uniform weights: with unequal ones a heavy
            site's update would carry less than its share of the noise).
    """

    task_kinds: tuple[str, ...] | None = p.KINDS  # what a site's privacy policy must allow

    name = "secure_train"

    def __init__(self, num_rounds: int | None = None, *, threshold: int | None = None,
                 neighbours: int | None = None, clip: float = 1.0,
                 weighting: str = "samples") -> None:
        super().__init__(num_rounds)
        if weighting not in ("samples", "uniform"):
            raise ConfigError(f"secure aggregation: weighting must be 'samples' or 'uniform', "
                              f"got {weighting!r}")
        self.weighting = weighting
        for what, value in (("threshold", threshold), ("neighbours", neighbours)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 2):
                raise ConfigError(f"secure aggregation: {what} must be an integer >= 2, got "
                                  f"{value!r}")
        if isinstance(clip, bool) or not isinstance(clip, int | float) or not (
                math.isfinite(clip) and clip > 0):
            raise ConfigError(f"secure aggregation: clip must be a number > 0, got {clip!r}")
        if threshold is not None and neighbours is not None and threshold > neighbours + 1:
            raise ConfigError(f"secure aggregation: threshold t={threshold} exceeds the "
                              f"{neighbours + 1} share holders of a site (neighbours={neighbours} "
                              "and itself)")
        self.threshold = threshold
        self.neighbours = neighbours
        self.clip = float(clip)
        self._pool = BufferPool()
        self._sum_pool = BufferPool(keep=1)

    def check_job(self, job: Job) -> None:
        strategy = job.strategy
        if not isinstance(strategy, FedAvg) or isinstance(strategy, Cyclic) or (
                type(strategy).aggregator is not FedAvg.aggregator):
            raise ConfigError(f"secure aggregation computes FedAvg's weighted mean; "
                              f"{type(strategy).__name__} aggregates otherwise")
        if job.site_ids is not None and self.threshold is not None and (
                self.threshold > len(job.site_ids)):
            raise ConfigError(f"secure aggregation: threshold t={self.threshold} exceeds the "
                              f"job's {len(job.site_ids)} sites")

    def threshold_for(self, num_sites: int) -> int:
        """``t`` for a round of ``num_sites``; AggregationError if it cannot be met."""
        holders = num_sites if self.neighbours is None else min(num_sites,
                                                                 self.neighbours + 1)
        t = self.threshold if self.threshold is not None else max(2, holders // 2 + 1)
        if t > num_sites:
            raise AggregationError(f"secure aggregation: threshold t={t} exceeds the "
                                   f"{num_sites} sites of the round")
        return t

    def _round(self, ctx: WorkflowContext, round_num: int, weights: Weights, attempt: int,
               failures: list[SiteFailure]) -> Weights:
        started = time.monotonic()
        strategy = ctx.job.strategy
        selected = strategy.select_sites(round_num, ctx.sites())
        ctx.begin_round(round_num, selected)
        t = self.threshold_for(len(selected))
        run = _Round(ctx, round_num, attempt, failures, t)
        # 1. train, keep the update at the site, advertise keys
        keys, samples, metrics = run.advertise(
            selected, strategy.train_payload(round_num, weights),
            lambda s: strategy.configure_train(round_num, s))
        u1 = sorted(keys)
        graph = neighbours(u1, self.neighbours)
        total = sum(samples.values())
        weight = {s: (samples[s] / total if self.weighting == "samples" else 1 / len(u1))
                  for s in u1}
        # 2. share keys
        sealed = run.share(u1, graph, keys, weight, self.clip)
        # 3. masked input, folded into the modular sum as it arrives
        u2 = sorted({sender for sender, _ in sealed})
        expected = strategy.result_spec(weights)
        aggregator = MaskedSumAggregator(expected.specs(), self._pool, self._sum_pool)
        clipped = run.masked(u2, graph, sealed, aggregator)
        # 4. unmask
        u3 = sorted(aggregator.sites)
        seeds, dropped_pairs = run.unmask(u3, sorted(set(u2) - set(u3)), graph, keys)
        remove_masks(aggregator.sums, seeds, dropped_pairs)
        new_weights = self._decoded(aggregator, weights, expected, FixedPoint(self.clip, len(u1)),
                                    sum(weight[s] for s in u3))
        finite_model(ctx, round_num, new_weights)
        summary = {**summed_metrics(u3, samples, metrics), p.CLIPPED: float(clipped)}
        log.info("job %s round %d: securely summed %d of %d sites (t=%d, %s graph)", ctx.job_id,
                 round_num, len(u3), len(selected), t,
                 "complete" if self.neighbours is None else f"degree-{self.neighbours}")
        site_train = {s: SiteMetrics(samples[s], dict(metrics[s])) for s in u3}
        ctx.finish_round(round_num, new_weights, StepOutcome(u3, summary, failures, site_train),
                         started)
        return new_weights

    @staticmethod
    def _decoded(aggregator: MaskedSumAggregator, weights: Weights, expected: Weights,
                 encoding: FixedPoint, weight_sum: float) -> Weights:
        """The global model plus the decoded mean update, one parameter at a time, written
        into the aggregator's spare buffer where the parameter's type fits."""
        spare = aggregator.spare()
        out: dict[str, np.ndarray] = {}
        for index, (name, total) in enumerate(zip(expected, aggregator.sums, strict=True)):
            ref = weights[name]
            acc = encoding.decode(total, weight_sum).reshape(ref.shape)
            acc += ref
            target = {}
            if spare is not None and ref.dtype.itemsize == 4 and ref.dtype.kind == "f":
                target = {name: spare[index].view(ref.dtype).reshape(ref.shape)}
            out.update(finalize_mean({name: acc}, 1.0, Weights.adopt({name: ref}), target))
        aggregator.sums = []
        return Weights.adopt({name: out.get(name, weights[name]) for name in weights})


class _Round(RoundSteps):
    """The gathers of one secure round and what the server keeps between them."""

    session_key, first_kind = p.SESSION, p.TRAIN

    def __init__(self, ctx: WorkflowContext, round_num: int, attempt: int,
                 failures: list[SiteFailure], threshold: int) -> None:
        super().__init__(ctx, round_num, attempt, failures)
        self.t = threshold
        self.index: dict[str, int] = {}
        self.adverts: dict[str, bytes] = {}  # each site's signed keys, relayed as they came

    def _enough(self, count: int, kind: str) -> None:
        self.ctx.require(count, self.round_num, kind, self.failures)
        if count < self.t:
            raise AggregationError(f"{kind}: only {count} site(s) left, fewer than the "
                                   f"threshold t={self.t}", job_id=self.ctx.job_id,
                                   round_num=self.round_num)

    def advertise(self, sites: list[str], payload: Weights, configure: Callable[[str], Config]
                  ) -> tuple[dict[str, tuple[bytes, bytes]], dict[str, int],
                             dict[str, Metrics]]:
        request = dataclasses.replace(
            self._request(p.TRAIN, TrainResult), site_ids=sites, payload=payload,
            configure=lambda s: self._config(configure(s)))
        keys: dict[str, tuple[bytes, bytes]] = {}
        samples: dict[str, int] = {}
        metrics: dict[str, Metrics] = {}
        with contextlib.closing(self.ctx.gather(request, self.failures)) as arrivals:
            for arrival in arrivals:
                result = arrival.result
                assert isinstance(result, TrainResult)
                got = {n: np.asarray(v) for n, v in result.weights.items()}
                signed = advert.from_tensor(got.pop(p.ADVERT, None))
                if signed is None or sorted(got) != sorted([p.MASK_KEY, p.SHARE_KEY]) or any(
                        v.dtype != np.uint8 or v.shape != (KEY_BYTES,) for v in got.values()):
                    self._fail(arrival.site_id, p.TRAIN, "sent no valid signed public keys")
                    continue
                self.adverts[arrival.site_id] = signed
                keys[arrival.site_id] = (got[p.MASK_KEY].tobytes(), got[p.SHARE_KEY].tobytes())
                samples[arrival.site_id] = result.num_samples
                metrics[arrival.site_id] = dict(result.metrics)
        self._enough(len(keys), "secure training")
        return keys, samples, metrics

    def share(self, u1: list[str], graph: Mapping[str, list[str]],
              keys: Mapping[str, tuple[bytes, bytes]], weight: Mapping[str, float],
              clip: float) -> dict[tuple[str, str], bytes]:
        self.index = {s: i + 1 for i, s in enumerate(u1)}

        def payload(site: str) -> Weights:
            rows = [np.frombuffer(keys[o][0] + keys[o][1], np.uint8) for o in graph[site]]
            data, lengths = advert.pack([self.adverts[o] for o in graph[site]])
            return Weights({p.PEER_KEYS: np.stack(rows).reshape(len(rows), 2, KEY_BYTES),
                            p.PEER_ADVERTS: data, p.PEER_ADVERT_LENGTHS: lengths})

        def configure(site: str) -> Config:
            return self._config({p.SITES: p.as_setting(u1),
                                 p.NEIGHBOURS: p.as_setting(graph[site]), p.THRESHOLD: self.t,
                                 p.WEIGHT: weight[site], p.CLIP: clip})

        request = dataclasses.replace(self._request(p.SHARE, StatsResult), site_ids=u1,
                                      payload_for=payload, configure=configure)
        sealed: dict[tuple[str, str], bytes] = {}
        count = 0
        with contextlib.closing(self.ctx.gather(request, self.failures)) as arrivals:
            for arrival in arrivals:
                result = arrival.result
                assert isinstance(result, StatsResult)
                rows = np.asarray(result.values.get(p.SHARES))
                peers = graph[arrival.site_id]
                if rows.dtype != np.uint8 or rows.shape != (len(peers), _SEALED_BYTES):
                    self._fail(arrival.site_id, p.SHARE, "sent malformed encrypted shares")
                    continue
                for peer, row in zip(peers, rows, strict=True):
                    sealed[(arrival.site_id, peer)] = row.tobytes()
                count += 1
        self._enough(count, "secure key sharing")
        return sealed

    def masked(self, u2: list[str], graph: Mapping[str, list[str]],
               sealed: Mapping[tuple[str, str], bytes], aggregator: MaskedSumAggregator
               ) -> int:
        """Collect the masked updates into ``aggregator``; returns the elements clipped."""
        present = set(u2)

        def senders(site: str) -> list[str]:
            return [o for o in graph[site] if o in present]

        def payload(site: str) -> Weights:
            rows = [np.frombuffer(sealed[(o, site)], np.uint8) for o in senders(site)]
            stacked = np.stack(rows) if rows else np.zeros((0, _SEALED_BYTES), np.uint8)
            return Weights({p.SHARES: stacked})

        ids = self._request(p.MASKED, TrainResult)
        expected = aggregator.expected()
        streams = RoundStreams(aggregator, expected, lambda s: self.ctx.task_id(ids, s))
        request = dataclasses.replace(
            ids, site_ids=u2, payload_for=payload, streams=streams,
            configure=lambda s: self._config({p.SENDERS: p.as_setting(senders(s))}))
        clipped = 0
        with contextlib.closing(self.ctx.gather(request, self.failures)) as arrivals:
            for arrival in arrivals:
                result = arrival.result
                assert isinstance(result, TrainResult)
                if not arrival.folded:
                    problems = incompatibilities(expected, result.weights)
                    if problems:
                        self._fail(arrival.site_id, p.MASKED,
                                   "masked update does not match: " + "; ".join(problems))
                        continue
                    streams.add(arrival.site_id, result)
                clipped += int(result.metrics.get(p.CLIPPED, 0))
                del result, arrival  # one upload in memory at a time
        if clipped:
            log.warning("job %s round %d: %d update element(s) were clipped to the secure "
                        "aggregation's clip bound", self.ctx.job_id, self.round_num, clipped)
        self._enough(aggregator.num_results, "secure masked input")
        return clipped

    def unmask(self, u3: list[str], dropped: list[str], graph: Mapping[str, list[str]],
               keys: Mapping[str, tuple[bytes, bytes]]
               ) -> tuple[list[bytes], list[tuple[str, str, bytes]]]:
        """The self-mask seeds of ``u3`` and the pair-mask seeds between ``u3`` and
        ``dropped``, rebuilt from the survivors' shares."""
        seed_shares: dict[str, dict[int, bytes]] = {s: {} for s in u3}
        key_shares: dict[str, dict[int, bytes]] = {s: {} for s in dropped}
        request = dataclasses.replace(
            self._request(p.UNMASK, StatsResult), site_ids=u3,
            configure=lambda s: self._config({p.SURVIVORS: p.as_setting(u3),
                                              p.DROPPED: p.as_setting(dropped)}))
        with contextlib.closing(self.ctx.gather(request, self.failures)) as arrivals:
            for arrival in arrivals:
                site = arrival.site_id
                result = arrival.result
                assert isinstance(result, StatsResult)
                seeds_of = [s for s in share_holders(dict(graph), site) if s in seed_shares]
                keys_of = [s for s in graph[site] if s in key_shares]
                got_seeds = np.asarray(result.values.get(p.SELF_SEED_SHARES))
                got_keys = np.asarray(result.values.get(p.MASK_KEY_SHARES))
                if (got_seeds.shape != (len(seeds_of), SHARE_BYTES)
                        or got_keys.shape != (len(keys_of), SHARE_BYTES)
                        or got_seeds.dtype != np.uint8 or got_keys.dtype != np.uint8):
                    self._fail(site, p.UNMASK, "sent malformed shares")
                    continue
                x = self.index[site]
                for owner, row in zip(seeds_of, got_seeds, strict=True):
                    seed_shares[owner][x] = row.tobytes()
                for owner, row in zip(keys_of, got_keys, strict=True):
                    key_shares[owner][x] = row.tobytes()
        seeds = [self._combine(seed_shares[s], s, "self-mask seed") for s in u3]
        pairs = []
        for site in dropped:
            private = self._combine(key_shares[site], site, "masking key")
            if public_key(private) != keys[site][0]:
                raise AggregationError(f"secure unmasking: the rebuilt masking key of site "
                                       f"{site} does not match its public key (a share is "
                                       "wrong)", job_id=self.ctx.job_id,
                                       round_num=self.round_num)
            pairs += [(other, site, pair_seed(private, keys[other][0], self.session, site,
                                              other)) for other in graph[site] if other in u3]
        return seeds, pairs

    def _combine(self, shares: dict[int, bytes], owner: str, what: str) -> bytes:
        try:
            return combine(shares, self.t)
        except ValueError as exc:
            details = "; ".join(f"site {f.site_id}: {f.message}" for f in self.failures)
            raise AggregationError(f"secure unmasking: cannot rebuild the {what} of site "
                                   f"{owner}: {exc} ({details or 'no failures'})",
                                   job_id=self.ctx.job_id, round_num=self.round_num) from None
