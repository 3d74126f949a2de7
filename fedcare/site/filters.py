"""Site filters: what a hospital applies, by its own policy, to what arrives and what leaves.

A filter's ``inbound`` sees every task before the trainer does (e.g. to decrypt it); its
``outbound`` sees every result before it leaves the site (e.g. to clip or drop parameters, add
noise). Chains are built per job from the site's :class:`~fedcare.core.policy.SitePolicy`
by :func:`fedcare.site.chain.build_filters`, which knows every filter by name.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

from fedcare.core.errors import ConfigError
from fedcare.core.message import Result, Task, TaskKind, TrainResult
from fedcare.core.weights import Weights

log = logging.getLogger(__name__)


class Filter:
    """One step of a site's filter chain; both directions pass everything through by default."""

    name = "filter"

    def inbound(self, task: Task) -> Task:
        """The task as the trainer will see it."""
        return task

    def outbound(self, task: Task, result: Result) -> Result:
        """The result as it will leave the site."""
        return result


class FlatUpdate:
    """A training result's update (trained minus global model) over its floating-point
    parameters, as one float64 vector: what the selective-sharing and quantising filters
    work on. Parameters the global model lacks and integer ones (counters) are left alone.
    """

    def __init__(self, task: Task, result: TrainResult) -> None:
        if task.weights is None:
            raise ValueError(f"{task.kind} task carried no global model to take an update from")
        self.start = task.weights
        self.result = result
        self.names = [k for k, v in result.weights.items()
                      if np.issubdtype(v.dtype, np.floating) and k in self.start]
        self.sizes = [result.weights[k].size for k in self.names]
        parts = [np.asarray(result.weights[k], np.float64).ravel()
                 - np.asarray(self.start[k], np.float64).ravel() for k in self.names]
        self.values = np.concatenate(parts) if parts else np.zeros(0)

    def tensors(self, flat: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """(name, slice of ``flat``) per parameter, in the parameters' shapes."""
        out, at = [], 0
        for name, size in zip(self.names, self.sizes, strict=True):
            out.append((name, flat[at:at + size].reshape(self.result.weights[name].shape)))
            at += size
        return out

    def rebuilt(self, flat: np.ndarray) -> TrainResult:
        """The result with ``flat`` as its update: global model + update, in each
        parameter's dtype."""
        out = dict(self.result.weights)
        for name, update in self.tensors(flat):
            base = np.asarray(self.start[name], np.float64)
            out[name] = (base + update).astype(out[name].dtype)
        return TrainResult(Weights(out), self.result.num_samples, self.result.metrics)


def training_update(task: Task, result: Result) -> FlatUpdate | None:
    """The update of a training task's result, or None for anything else (evaluation,
    statistics, a model that already left the site and is sent again, an initial model)."""
    if task.kind != TaskKind.TRAIN or not isinstance(result, TrainResult):
        return None
    return FlatUpdate(task, result)


def number(value: object, what: str, *, low: float = 0.0, high: float = math.inf,
           low_open: bool = True, high_open: bool = False) -> float:
    """``value`` as a finite float within bounds, or a ConfigError naming ``what``."""
    ok = (not isinstance(value, bool) and isinstance(value, int | float)
          and math.isfinite(value)
          and (value > low if low_open else value >= low)
          and (value < high if high_open else value <= high))
    if not ok:
        span = (f"{'>' if low_open else '>='} {low:g}" if high == math.inf else
                f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")
        raise ConfigError(f"{what} must be a finite number {span}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


class ClipUpdateNorm(Filter):
    """Scale a training update down so its L2 norm (over every floating-point parameter) is at
    most ``max_norm``: the update is the trained model minus the global model it started from.

    Bounds how much any one site can move the global model, the first half of differential
    privacy (the noise is the other). Integer parameters (counters) pass unchanged.
    """

    name = "clip_update_norm"

    def __init__(self, max_norm: float) -> None:
        if isinstance(max_norm, bool) or not isinstance(max_norm, int | float) or not (
                math.isfinite(max_norm) and max_norm > 0):
            raise ConfigError(f"clip_update_norm: max_norm must be a number > 0, got "
                              f"{max_norm!r}")
        self.max_norm = float(max_norm)

    def outbound(self, task: Task, result: Result) -> Result:
        if task.kind != TaskKind.TRAIN or not isinstance(result, TrainResult):
            return result
        if task.weights is None:
            raise ValueError("clip_update_norm: the training task carried no global model")
        start = task.weights
        names = [k for k, v in result.weights.items()
                 if np.issubdtype(v.dtype, np.floating) and k in start]
        squared = 0.0
        for name in names:
            delta = np.asarray(result.weights[name], np.float64) - np.asarray(start[name],
                                                                              np.float64)
            squared += float(np.dot(delta.ravel(), delta.ravel()))
        norm = math.sqrt(squared)
        if norm <= self.max_norm:
            return result
        scale = self.max_norm / norm
        log.info("clip_update_norm: task %s update norm %.4g clipped to %.4g",
                 task.task_id, norm, self.max_norm)
        out = dict(result.weights)
        for name in names:
            base = np.asarray(start[name], np.float64)
            clipped = base + (np.asarray(out[name], np.float64) - base) * scale
            out[name] = clipped.astype(out[name].dtype)
        return TrainResult(Weights(out), result.num_samples, result.metrics)


class ExcludeVariables(Filter):
    """Parameters whose name matches one of ``patterns`` never leave the site.

    In a training result they are replaced by the values the server sent (so the aggregate is
    unaffected by this site's local values and the model keeps its shape); from a local model
    asked for cross-site validation they are dropped (the server fills in the global values).
    A trainer's initial model (a job without server-side initial weights) has seen no data and
    passes whole: the job needs every parameter's shape.
    """

    name = "exclude_variables"

    def __init__(self, patterns: Sequence[str]) -> None:
        if isinstance(patterns, str) or not patterns:
            raise ConfigError("exclude_variables: patterns must be a non-empty list of regular "
                              f"expressions, got {patterns!r}")
        try:
            self.patterns = [re.compile(p) for p in patterns]
        except re.error as exc:
            raise ConfigError(f"exclude_variables: bad pattern {exc.pattern!r}: {exc}") from None

    def _excluded(self, name: str) -> bool:
        return any(p.search(name) for p in self.patterns)

    def outbound(self, task: Task, result: Result) -> Result:
        if not isinstance(result, TrainResult) or task.kind == TaskKind.INITIAL_MODEL:
            return result
        start: Mapping[str, np.ndarray] = task.weights or {}
        out: dict[str, np.ndarray] = {}
        for name, value in result.weights.items():
            if not self._excluded(name):
                out[name] = value
            elif name in start:
                out[name] = start[name]
        return TrainResult(Weights(out), result.num_samples, result.metrics)
