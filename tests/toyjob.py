"""A tiny numpy job whose every number can be computed by hand, with switchable misbehaviour.

Site i (0-based) has n_i = 10 * (i + 1) training samples and "trains" by returning a model whose
every entry equals its target t_i = i + 1, so FedAvg must give sum(n_i t_i) / sum(n_i).
"""

from __future__ import annotations

import os
import threading
import weakref

import numpy as np

from fedcare import (
    Aggregator,
    EvalResult,
    FedAvg,
    Job,
    SiteContext,
    StatsResult,
    Strategy,
    TrainResult,
    Weights,
)
from fedcare.core.policy import CodePolicy
from fedcare.core.stream import UpdateStream

#: The toy jobs, as a server's or a site's operator who installed them would list them.
ENTRY_POINTS = ["toyjob:make_job", "toyjob:make_large_job", "toyjob:make_modular_job",
                "toyjob:make_forgetful_job", "toyjob:make_secure_job", "toyjob:make_he_job",
                "test_review_fixes_b:crashing_job"]
TOY_CODE = CodePolicy(entry_points=ENTRY_POINTS)

MODES = ("ok", "raise", "nan", "inf", "wrong_name", "wrong_shape", "wrong_dtype",
         "zero_samples", "hang", "nan_metric", "not_a_result", "crash")
RELEASE = threading.Event()  # lets a test end a "hang" early
#: 1000 metrics of 124-character names: ~130 KB a reply, which the codec carries
MANY_METRICS = {f"{'m' * 120}{i:04d}": 0.5 for i in range(1000)}


def initial() -> Weights:
    return Weights({"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32),
                    "count": np.zeros((), np.int64)})


class ToyTrainer:
    def __init__(self, index: int, mode: str, fail_from_round: int = 1,
                 delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.n = 10 * (index + 1)
        self.target = float(index + 1)
        self.mode = mode
        self.fail_from_round = fail_from_round
        self.rounds_trained = 0  # site state that persists across rounds

    def train(self, weights, config):
        self.rounds_trained += 1
        threading.Event().wait(self.delay_s)  # a slower site, for jobs that must last a while
        mode = self.mode if self.rounds_trained >= self.fail_from_round else "ok"
        out = {k: np.full_like(v, self.target) for k, v in weights.items()}
        out["count"] = np.asarray(weights["count"] + 1)
        n, metrics = self.n, {"loss": 1.0 / self.target}
        if mode == "raise":
            raise RuntimeError("disk full while reading images")
        if mode == "nan":
            out["w"][0, 0] = np.nan
        elif mode == "inf":
            out["b"][1] = np.inf
        elif mode == "wrong_name":
            out["extra"] = out.pop("b")
        elif mode == "wrong_shape":
            out["w"] = np.zeros((3, 2), np.float32)
        elif mode == "wrong_dtype":
            out["w"] = out["w"].astype(np.float64)
        elif mode == "zero_samples":
            n = 0
        elif mode == "huge_samples":  # would overflow float64 sums and dominate the average
            n = 10**400
        elif mode == "huge_metric":
            metrics = {"loss": 10**400}
        elif mode == "extreme_values":  # finite float32, summed in float64: must not overflow
            out["w"][:] = np.float32(3e38)
            n = 2**53
        elif mode == "hang":
            RELEASE.wait(timeout=30)
        elif mode == "nan_metric":
            metrics = {"loss": float("nan")}
        elif mode == "not_a_result":
            return {"w": out["w"]}
        elif mode == "crash":  # only ever used with one process per site
            os._exit(3)
        elif mode == "many_metrics":
            metrics = MANY_METRICS
        elif mode == "forged_error":  # a newline that would forge a log line, and 3 MB
            raise RuntimeError("disk full\n2030-01-01T00:00:00.000Z ERROR forged line "
                               + "x" * 3_000_000)
        return TrainResult(Weights(out), n, metrics)

    def evaluate(self, weights, config):
        mse = float(np.mean((np.asarray(weights["w"], np.float64) - self.target) ** 2))
        if self.mode == "many_metrics":
            return EvalResult(self.n // 2, {**MANY_METRICS, "mse": mse})
        return EvalResult(self.n // 2, {"mse": mse})

    def statistics(self, config):
        return StatsResult(Weights({"n": np.array([self.n], np.float64),
                                    "sum": np.array([self.n * self.target])}), self.n)


class MeanTarget:
    """Federated statistic: sets every entry of b to the sample-weighted mean target."""

    name = "mean_target"

    def finalize(self, totals, num_samples, weights):
        out = dict(weights)
        out["b"] = np.full(3, totals["sum"][0] / totals["n"][0], np.float32)
        return Weights(out)


def make_job(num_rounds: int = 3, modes: dict[str, str] | None = None, num_sites: int = 3,
             min_sites: int = 1, round_timeout_s: float = 20.0, statistics: bool = False,
             fail_from_round: int = 1, fraction: float = 1.0,
             site_wait_s: float | None = None, evaluate_every: int = 1,
             train_delay_s: float = 0.0, outbound_filters: list | None = None) -> Job:
    modes = modes or {}

    def trainer(ctx: SiteContext) -> ToyTrainer:
        return ToyTrainer(ctx.site_index, modes.get(ctx.site_id, "ok"), fail_from_round,
                          train_delay_s)

    return Job(name="toy", initial_weights=initial, trainer=trainer,
               strategy=FedAvg(fraction=fraction, seed=1), num_rounds=num_rounds,
               min_sites=min_sites, round_timeout_s=round_timeout_s,
               site_ids=tuple(f"site-{i}" for i in range(num_sites)),
               statistics=MeanTarget() if statistics else None, site_wait_s=site_wait_s,
               evaluate_every=evaluate_every, outbound_filters=tuple(outbound_filters or ()))


class LargeTrainer:
    """Adds one to a large vector: a model bigger than what gRPC buffers for a slow reader."""

    def __init__(self, ctx: SiteContext) -> None:
        pass

    def train(self, weights, config):
        return TrainResult(Weights({"x": weights["x"] + np.float32(1)}), 10)

    def evaluate(self, weights, config):
        return EvalResult(10, {})


def make_large_job(num_params: int = 8_000_000, min_sites: int = 2,
                   round_timeout_s: float = 120) -> Job:
    return Job(name="large", initial_weights=lambda: Weights({"x": np.zeros(num_params,
                                                                           np.float32)}),
               trainer=LargeTrainer, strategy=FedAvg(), num_rounds=1, min_sites=min_sites,
               round_timeout_s=round_timeout_s, evaluate_every=0)


def trainer_for(ctx: SiteContext, *, mode: str = "ok") -> ToyTrainer:
    """The toy's site half, as a ``module:function`` reference names it."""
    return ToyTrainer(ctx.site_index, mode)


# -- an aggregator that does not fold plaintext floats: secure aggregation's modular sums ----
STREAMED: list[str] = []  # sites whose upload a ModularSum folded in as it arrived


class _ModularStream(UpdateStream):
    """Adds a site's masked uint32 values into the sum mod 2**32 as they arrive; subtracts
    them again (exactly, mod 2**32) if the upload is discarded."""

    def __init__(self, owner: _ModularAggregator) -> None:
        self.owner = owner
        self.written: list[tuple[int, int, np.ndarray]] = []

    def write(self, index: int, start: int, values: np.ndarray) -> None:
        if values.dtype != np.uint32:
            raise ValueError(f"expected masked uint32 values, got {values.dtype}")
        target = self.owner.sums[index][start:start + values.size]
        np.add(target, values, out=target)  # wraps around: arithmetic mod 2**32
        self.written.append((index, start, values.copy()))

    def commit(self) -> None:
        self.owner.count += 1
        self.written = []

    def discard(self) -> None:
        for index, start, values in reversed(self.written):
            target = self.owner.sums[index][start:start + values.size]
            np.subtract(target, values, out=target)
        self.written = []


class _ModularAggregator(Aggregator):
    def __init__(self, global_weights: Weights) -> None:
        self.like = global_weights
        self.sums = [np.zeros(v.size, np.uint32) for v in global_weights.values()]
        self.count = 0

    def add(self, site_id, result):
        for total, name in zip(self.sums, self.like, strict=True):
            np.add(total, np.asarray(result.weights[name]).reshape(-1), out=total)
        self.count += 1

    def stream(self, site_id, num_samples, specs):
        STREAMED.append(site_id)
        return _ModularStream(self)

    @property
    def num_results(self) -> int:
        return self.count

    def finish(self) -> Weights:
        return Weights({name: total.reshape(v.shape)
                        for total, (name, v) in zip(self.sums, self.like.items(), strict=True)})


class ModularSum(Strategy):
    """The server side of secure aggregation's last step: masked uint32 updates summed mod
    2**32, where the masks cancel. Folds through the same streaming path as FedAvg."""

    def aggregator(self, round_num, global_weights):
        return _ModularAggregator(global_weights)


class MaskedTrainer:
    def __init__(self, ctx: SiteContext) -> None:
        self.value = np.uint32((ctx.site_index + 1) * 1_500_000_000 % 2**32)

    def train(self, weights, config):
        return TrainResult(Weights({k: np.full_like(v, self.value) for k, v in weights.items()}),
                           1)

    def evaluate(self, weights, config):
        return EvalResult(1, {})


def make_modular_job(num_values: int = 3_000_000) -> Job:
    return Job(name="modular", initial_weights=lambda: Weights(
                   {"masked": np.zeros(num_values, np.uint32)}),
               trainer=MaskedTrainer, strategy=ModularSum(), num_rounds=1, min_sites=3,
               evaluate_every=0, site_ids=("site-0", "site-1", "site-2"))


# -- what a site still holds of its last update when it trains the next one ----------------
HELD: list[bool] = []  # per round after the first: was the last update's memory still alive?


class ForgetfulTrainer:
    """Records whether anything (the transport, the agent) still holds its previous update."""

    def __init__(self, ctx: SiteContext) -> None:
        self.last: weakref.ref[np.ndarray] | None = None

    def train(self, weights, config):
        if self.last is not None:
            HELD.append(self.last() is not None)
        owner = np.asarray(weights["x"]) + np.float32(1)  # owns its memory
        self.last = weakref.ref(owner)
        return TrainResult(Weights({"x": owner}), 10)

    def evaluate(self, weights, config):
        return EvalResult(10, {})


def make_forgetful_job(num_rounds: int = 3) -> Job:
    return Job(name="forgetful", initial_weights=lambda: Weights(
                   {"x": np.zeros(3_000_000, np.float32)}),
               trainer=ForgetfulTrainer, strategy=FedAvg(), num_rounds=num_rounds,
               evaluate_every=0)


# -- secure aggregation: real-valued updates, and sites that drop out at a given step --------
class SecureToyTrainer:
    """Site i moves every parameter by its own seeded normal noise (scale 0.1) and has
    10 * (i + 1) samples. ``mode``: ``crash_at_unmask`` exits the process when asked to unmask
    (after its masked update left), ``fail_at_unmask`` answers that step with an error,
    ``fail_at_masked`` answers the masked-input step with an error (dropped before masking),
    ``fail_at_he_encrypt`` answers homomorphic aggregation's encryption step with an error."""

    def __init__(self, index: int, mode: str = "ok") -> None:
        self.index = index
        self.n = 10 * (index + 1)
        self.task_handlers = {}
        if mode == "crash_at_unmask":
            self.task_handlers["secagg.unmask"] = lambda task: os._exit(3)
        elif mode == "fail_at_unmask":
            self.task_handlers["secagg.unmask"] = _refuse
        elif mode == "fail_at_masked":
            self.task_handlers["secagg.masked"] = _refuse
        elif mode == "fail_at_he_encrypt":
            self.task_handlers["he.encrypt"] = _refuse

    def train(self, weights, config):
        return TrainResult(Weights(secure_update(self.index, weights)), self.n)

    def evaluate(self, weights, config):
        return EvalResult(self.n, {})


def _refuse(task):
    raise RuntimeError("this site went away")


def secure_update(index: int, weights) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(100 + index)
    return {k: (np.asarray(v) + rng.normal(0, 0.1, np.shape(v))).astype(np.asarray(v).dtype)
            for k, v in weights.items()}


def secure_initial(num_values: int = 5000) -> Weights:
    rng = np.random.default_rng(7)
    return Weights({"w": rng.normal(0, 1, (num_values // 5, 5)).astype(np.float32),
                    "b": rng.normal(0, 1, 7).astype(np.float32)})


def secure_fedavg(indices, weights) -> dict[str, np.ndarray]:
    """Plain FedAvg (float64) of the sites ``indices`` from ``weights``: what a secure round
    must give, within the fixed-point bound."""
    total = sum(10 * (i + 1) for i in indices)
    return {k: sum(10 * (i + 1) * secure_update(i, weights)[k].astype(np.float64)
                   for i in indices) / total for k in weights}


def make_secure_job(num_rounds: int = 1, num_sites: int = 4, modes: dict[str, str] | None = None,
                    threshold: int | None = None, neighbours: int | None = None,
                    clip: float = 1.0, min_sites: int = 2, num_values: int = 5000,
                    round_timeout_s: float = 30.0, weighting: str = "samples") -> Job:
    from fedcare.server.workflows import SecureAggregation

    modes = modes or {}

    def trainer(ctx: SiteContext) -> SecureToyTrainer:
        return SecureToyTrainer(ctx.site_index, modes.get(ctx.site_id, "ok"))

    return Job(name="secure", initial_weights=lambda: secure_initial(num_values),
               trainer=trainer, strategy=FedAvg(), num_rounds=num_rounds, min_sites=min_sites,
               round_timeout_s=round_timeout_s, evaluate_every=0,
               site_ids=tuple(f"site-{i}" for i in range(num_sites)),
               workflows=(SecureAggregation(threshold=threshold, neighbours=neighbours,
                                            clip=clip, weighting=weighting),))


def make_he_job(num_rounds: int = 1, num_sites: int = 3, num_values: int = 5000,
                decryptors: int = 1, min_sites: int = 2) -> Job:
    """The secure toy's sites and model with homomorphic (CKKS) aggregation."""
    from fedcare.server.workflows import HomomorphicAggregation

    return Job(name="he", initial_weights=lambda: secure_initial(num_values),
               trainer=lambda ctx: SecureToyTrainer(ctx.site_index), strategy=FedAvg(),
               num_rounds=num_rounds, min_sites=min_sites, round_timeout_s=60.0,
               evaluate_every=0, site_ids=tuple(f"site-{i}" for i in range(num_sites)),
               workflows=(HomomorphicAggregation(decryptors=decryptors),))
