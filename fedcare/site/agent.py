"""The site agent: turns a Task into a call on the local trainer, and its outcome into a Reply.

Every task passes the site's inbound filters before the trainer sees it, and every result passes
the outbound filters, in order, before it leaves. Filters come from the site's own policy, built
per job, not from the job or the server, so a hospital's policy (clipping, sharing only some
layers, differential privacy) cannot be overridden by the server.

A site with a privacy policy hands every task to its :class:`PrivacyGuard` first (is the kind
allowed, is the budget spent) and every result, once filtered, again: what the trainer and the
outbound filters spent (``ReportsPrivacy``) is charged to the site's privacy ledger before the
reply is built, and a result the policy refuses (too few rows, over budget) never leaves.

Secure aggregation's steps (``secagg.*``) are built in: the update passes the outbound filters
(and the privacy guard) in the first step, exactly as a ``train`` task's does, and what later
leaves (public keys, encrypted shares, the masked update) derives from it and skips the chain
(a filter that adds noise to a TrainResult must not touch keys or masked integers).
Homomorphic aggregation's steps (``he.*``) are built in the same way: the update is filtered in
``he.train``; the CKKS ciphertexts sent later encrypt what passed.

Task kinds are dispatched through a table: the built-in kinds call the trainer's methods, and a
workflow of its own may add handlers. A kind the site has no handler for is answered with an
error naming it. Every failure becomes an error Reply with a short reason for the server; the
full traceback stays in the site's own log.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np

from fedcare.core import he_protocol as he
from fedcare.core.errors import PrivacyError
from fedcare.core.identity import SiteIdentity
from fedcare.core.int8 import dequantise, is_quantised
from fedcare.core.message import (
    Config,
    EvalResult,
    Reply,
    Result,
    StatsResult,
    Task,
    TaskKind,
    TrainResult,
)
from fedcare.core.privacy import ReportsPrivacy
from fedcare.core.secagg import protocol as secagg
from fedcare.core.text import one_line
from fedcare.core.trainer import StatisticsProvider, Trainer
from fedcare.core.weights import Weights
from fedcare.site.dp_noise import CLEAR_UPDATE_KINDS, clear_update_problem, summed_noise_sites
from fedcare.site.filters import Filter
from fedcare.site.he import HomomorphicSite
from fedcare.site.privacy_guard import PrivacyGuard
from fedcare.site.secagg import SecureAggregationSite

log = logging.getLogger(__name__)
Handler = Callable[[Task], Result]
_SELF_FILTERED = frozenset((*secagg.KINDS, *he.KINDS))


class ResultFilter(Protocol):
    """A plain callable outbound filter (the older form of :class:`Filter`)."""

    def __call__(self, task: Task, result: Result) -> Result: ...


class _Outbound(Filter):
    def __init__(self, function: ResultFilter) -> None:
        self.function = function
        self.name = getattr(function, "__name__", "filter")

    def outbound(self, task: Task, result: Result) -> Result:
        return self.function(task, result)


class SiteAgent:
    """Runs one site's trainer for one job; every failure becomes an error Reply, never a crash.

    Args:
        site_id: This site.
        trainer: The job's trainer for this site.
        filters: The outbound chain (Filter objects, or callables ``(task, result) -> result``).
        inbound: The inbound chain.
        keep_local_model: Keep the last training update that left the site, to answer a
            ``submit_model`` task (cross-site validation); costs one model of memory.
        handlers: Extra task kinds this site serves (kind -> handler), or replacements.
            A trainer may declare its own in a ``task_handlers`` mapping attribute (the site
            half of a job's custom workflow); ``handlers`` given here take precedence.
        privacy: The site's privacy guard (policy and ledger), shared by its jobs; None: no
            policy, and nothing is charged.
        identity: The site's certificate, key and CA, with which it signs its secure and
            homomorphic aggregation keys and verifies its peers'; None: it takes no part in
            those (its peers could not trust its keys).
    """

    def __init__(self, site_id: str, trainer: Trainer,
                 filters: Sequence[Filter | ResultFilter] = (), *,
                 inbound: Sequence[Filter] = (), keep_local_model: bool = False,
                 handlers: Mapping[str, Handler] | None = None,
                 privacy: PrivacyGuard | None = None,
                 identity: SiteIdentity | None = None) -> None:
        self.site_id = site_id
        self.trainer = trainer
        self.inbound = list(inbound)
        self.outbound = [f if isinstance(f, Filter) else _Outbound(f) for f in filters]
        self.keep_local_model = keep_local_model
        self.privacy = privacy
        # what spends privacy budget, asked after every task
        self._reporters: list[ReportsPrivacy] = [
            s for s in (trainer, *self.outbound) if isinstance(s, ReportsPrivacy)]
        self._local_model: Weights | None = None
        # Parameters that never leave the site (FedBN): the values of the last training, put
        # back into every model the site is sent, so a trainer needs no special code for them.
        self._kept: dict[str, np.ndarray] = {}
        self._noise_sites = summed_noise_sites(self.outbound)
        self.secure = SecureAggregationSite(site_id, identity, self._noise_sites)
        self.homomorphic = HomomorphicSite(site_id, identity)
        self.handlers: dict[str, Handler] = {
            TaskKind.TRAIN: self._train, TaskKind.EVALUATE: self._evaluate,
            TaskKind.STATISTICS: self._statistics, TaskKind.SUBMIT_MODEL: self._submit_model,
            TaskKind.VALIDATE: self._validate, TaskKind.INITIAL_MODEL: self._initial_model,
            TaskKind.PREPARE: self._prepare, secagg.TRAIN: self._secure_train,
            secagg.SHARE: self.secure.share, secagg.MASKED: self.secure.masked,
            secagg.UNMASK: self.secure.unmask, he.TRAIN: self._homomorphic_train,
            he.KEYGEN: self.homomorphic.keygen, he.ENCRYPT: self.homomorphic.encrypt,
            he.DECRYPT: self.homomorphic.decrypt,
            **dict(getattr(trainer, "task_handlers", None) or {}), **(handlers or {})}

    def handle(self, task: Task) -> Reply:
        try:
            if self.privacy is not None:
                self.privacy.before(task)
            for site_filter in self.inbound:
                task = site_filter.inbound(task)
            if self._noise_sites is not None and task.kind in CLEAR_UPDATE_KINDS:
                raise PrivacyError(clear_update_problem(task.kind))
            task = self._with_kept(task)
            handler = self.handlers.get(task.kind)
            if handler is None:
                raise LookupError(f"this site has no handler for task kind {task.kind!r} "
                                  f"(it serves {sorted(self.handlers)})")
            result = handler(task)
            if task.kind not in _SELF_FILTERED:  # (those filter the update themselves)
                result = self._filtered(task, result)
        except PrivacyError as exc:  # the site's own rule, not a fault: no traceback
            log.warning("site %s: %s task %s refused: %s", self.site_id, task.kind,
                        task.task_id, exc)
            return Reply(task.task_id, self.site_id, error=error_text(task.kind, exc))
        except Exception as exc:
            log.error("site %s: %s task %s failed", self.site_id, task.kind, task.task_id,
                      exc_info=True)
            return Reply(task.task_id, self.site_id, error=error_text(task.kind, exc))
        if self.keep_local_model and task.kind == TaskKind.TRAIN:
            assert isinstance(result, TrainResult)
            # what left the site, filters applied (as the values int8 levels stand for)
            self._local_model = (dequantise(result.weights, task.weights)
                                 if is_quantised(result.weights) and task.weights is not None
                                 else result.weights)
        return Reply(task.task_id, self.site_id, result=result)

    def _filtered(self, task: Task, result: Result) -> Result:
        """``result`` through the outbound chain, as it may leave the site; what that spent of
        the privacy budget is charged (and committed) first."""
        for site_filter in self.outbound:
            if (isinstance(result, TrainResult) and is_quantised(result.weights)
                    and task.weights is not None):
                # a filter after int8_update (the job's run first) sees the values it stands
                # for: int8 levels are no floating-point update, and would pass clipping,
                # selection and noise untouched
                result = dataclasses.replace(result, weights=dequantise(result.weights,
                                                                        task.weights))
            result = site_filter.outbound(task, result)
        if self.privacy is not None:  # charged, and committed, before anything leaves
            self.privacy.after(task, result, self._reporters)
        return result

    def _with_kept(self, task: Task) -> Task:
        if not (task.local_names and self._kept and task.weights is not None):
            return task
        own = {k: v for k, v in self._kept.items() if k in task.weights}
        return dataclasses.replace(task, weights=Weights({**task.weights, **own}))

    # -- built-in task kinds -----------------------------------------------------------------
    def _train(self, task: Task) -> Result:
        weights = _weights(task)
        trained = self.trainer.train(weights, task.config)
        _expect(trained, TrainResult, "train")
        # Coerce a plain dict of arrays into Weights (this checks names and dtypes), and
        # keep parameters the strategy declared local (FedBN) inside the site.
        local = frozenset(task.local_names)
        outgoing: dict[str, np.ndarray] = {}
        kept: dict[str, np.ndarray] = {}
        for name, value in trained.weights.items():
            (kept if name in local else outgoing)[name] = value
        result = TrainResult(Weights(outgoing), trained.num_samples, dict(trained.metrics))
        self._kept = dict(Weights(kept)) if kept else {}
        return result

    def _filtered_update(self, task: Task) -> TrainResult:
        """Train and filter as for a ``train`` task (the filters see one)."""
        as_train = dataclasses.replace(task, kind=TaskKind.TRAIN)
        result = self._filtered(as_train, self._train(as_train))
        _expect(result, TrainResult, "an outbound filter")
        assert isinstance(result, TrainResult)
        if is_quantised(result.weights) and task.weights is not None:
            # these rounds encode the update themselves: they get the values int8 stands for
            result = dataclasses.replace(result, weights=dequantise(result.weights,
                                                                    task.weights))
        # not kept as the local model: it leaves only inside a secure sum or a ciphertext, so
        # sending it alone (cross-site validation) would release what those rounds hide
        return result

    def _homomorphic_train(self, task: Task) -> Result:
        """Homomorphic aggregation's first step: train and filter as for a ``train`` task,
        keep the update at the site, answer with a fresh public key. The ciphertexts sent
        later are encryptions of what passed the filters here."""
        return self.homomorphic.advertise(task, self._filtered_update(task))

    def _secure_train(self, task: Task) -> Result:
        """Secure aggregation's first step: train and filter as for a ``train`` task (the
        filters see one), keep the update at the site, answer with fresh public keys. Later
        steps send only keys, encrypted shares and the masked update, derived from what
        passed the filters here."""
        return self.secure.advertise(task, self._filtered_update(task))

    def _evaluate(self, task: Task) -> Result:
        evaluated = self.trainer.evaluate(_weights(task), task.config)
        _expect(evaluated, EvalResult, "evaluate")
        return evaluated

    def _statistics(self, task: Task) -> Result:
        if not isinstance(self.trainer, StatisticsProvider):
            raise TypeError(f"{type(self.trainer).__name__} has no statistics() method")
        config = self._with_min_rows(task.config)
        if task.weights is None:
            stats = self.trainer.statistics(config)
        else:  # a pass that needs an earlier pass's result (a variance needs the mean)
            stats = self.trainer.statistics(config, task.weights)  # type: ignore[call-arg]
        _expect(stats, StatsResult, "statistics")
        return StatsResult(values=Weights(stats.values), num_samples=stats.num_samples)

    def _with_min_rows(self, config: Config) -> Config:
        """The task's settings with this site's ``privacy.min_rows`` as ``min_rows`` (the
        larger of the site's and the job's), so analyses suppress smaller cells here, before
        anything leaves: the server can raise the threshold, never lower it."""
        own = self.privacy.policy.min_rows if self.privacy is not None else 0
        asked = config.get("min_rows", 0)
        job = asked if isinstance(asked, int) and not isinstance(asked, bool) else 0
        if not own and "min_rows" not in config:
            return config
        return {**config, "min_rows": max(own, job, 0)}

    def _submit_model(self, task: Task) -> Result:
        # A trainer's own local_model() (its best checkpoint, say) only where no filter stands
        # between the trainer and the wire; otherwise what already left the site, through its
        # filters (clipped, variables excluded), is what it sends again.
        local_model = getattr(self.trainer, "local_model", None)
        if callable(local_model) and not self.outbound:
            submitted = local_model(task.config)
            _expect(submitted, TrainResult, "local_model")
            return TrainResult(Weights(submitted.weights), submitted.num_samples,
                               dict(submitted.metrics))
        if self._local_model is not None:
            return TrainResult(self._local_model, 1, {})
        raise LookupError("no local model: this site has not trained in this job (or does not "
                          "keep its last update)")

    def _prepare(self, task: Task) -> Result:
        """The trainer exists (built for this job); a trainer with a ``prepare(config)``
        method does its slow set-up now. Metric ``prepare_s``: how long that took."""
        started = time.perf_counter()
        prepare = getattr(self.trainer, "prepare", None)
        if callable(prepare):
            prepare(task.config)
        return EvalResult(1, {"prepare_s": time.perf_counter() - started})

    def _initial_model(self, task: Task) -> Result:
        initial = getattr(self.trainer, "initial_model", None)
        if not callable(initial):
            raise TypeError(f"{type(self.trainer).__name__} has no initial_model() method, and "
                            "the job gives no initial_weights")
        return TrainResult(Weights(initial()), 1, {})

    def _validate(self, task: Task) -> Result:
        validate = getattr(self.trainer, "validate", None)
        if callable(validate):
            result = validate(_weights(task), task.config)
            _expect(result, EvalResult, "validate")
            return result  # type: ignore[no-any-return]
        return self._evaluate(task)


def error_text(kind: str, exc: BaseException) -> str:
    """The short reason a site sends the server for a failed task: one line, bounded."""
    return one_line(f"{kind} raised {type(exc).__name__}: {exc}")


def start_failure(exc: BaseException) -> str:
    """The reason a site gives for every task of a job it could not start."""
    return one_line(f"cannot start the job: {type(exc).__name__}: {exc}")


def refusing(site_id: str, reason: str) -> Callable[[Task], Reply]:
    """A site whose job could not start: it stays, and answers every task with ``reason``,
    as a real site does (simulated threads and processes alike)."""
    def handle(task: Task) -> Reply:
        return Reply(task.task_id, site_id, error=reason)
    return handle


def _weights(task: Task) -> Weights:
    if task.weights is None:
        raise ValueError(f"{task.kind} task without weights")
    return task.weights


def _expect(value: object, kind: type, method: str) -> None:
    if not isinstance(value, kind):
        raise TypeError(f"{method}() returned {type(value).__name__}, expected {kind.__name__}")
