"""FedAvg (McMahan et al. 2017): the new global model is the sample-weighted mean of site models.

    w_{t+1} = sum_k (n_k / n) * w_k,   n = sum_k n_k

computed incrementally: one float64 accumulator per parameter holds sum_k n_k * w_k, so memory does
not grow with the number of sites.

Arrival order: a float16/float32 model is summed with at least 29 spare bits, so once rounded
back it does not depend on the order in which results arrive (in a float32 accumulator it would
differ in the last bit between runs); that is what makes a resumed or multi-process run end with
exactly the model of an uninterrupted in-process one. This is exact whenever the float64 sums are,
as for ordinary updates (sample counts below about 2**20, values within a few orders of magnitude
of each other). float64 parameters have no spare bits: their mean can differ in the last bits
(about 1e-16 relative) with arrival order, so such runs agree to that precision, not bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from fedcare.core.buffers import BufferPool
from fedcare.core.errors import AggregationError, ConfigError
from fedcare.core.message import Config, TrainResult, check_scalars
from fedcare.core.strategy import Aggregator, Strategy
from fedcare.core.stream import UpdateStream
from fedcare.core.weights import TensorSpec, Weights

#: Elements per block when folding a large tensor in (2 MiB of float64: stays in cache).
_BLOCK = 1 << 18


def accumulate(acc: dict[str, np.ndarray], weights: Mapping[str, np.ndarray], scale: float,
               spare: dict[str, np.ndarray] | None = None) -> None:
    """acc[name] += scale * weights[name], in place.

    A large tensor is folded in blocks through one small scratch buffer: the same float64
    operations element by element (so the same bits), without a tensor-sized temporary, whose
    fresh pages cost more than the arithmetic for a large model. ``spare``: float64 buffers
    left from an earlier round, reused for a new accumulator instead of fresh memory.
    """
    scratch: np.ndarray | None = None
    for name, array in weights.items():
        array = np.asarray(array)
        if name not in acc:  # the first result: 0 + scale * w, computed directly
            buffer = spare.pop(name, None) if spare is not None else None
            if buffer is None or buffer.shape != array.shape:
                buffer = np.empty(array.shape, np.float64)  # out=: a 0-d result stays an array
            acc[name] = np.multiply(array, scale, dtype=np.float64, out=buffer)
            buffer += 0.0  # 0 + scale * w exactly: -0.0 becomes +0.0, as in a zero-started sum
            continue
        target = acc[name]
        if array.size <= _BLOCK:
            target += np.multiply(array, scale, dtype=target.dtype)
            continue
        if scratch is None:
            scratch = np.empty(_BLOCK, np.float64)
        flat_target, flat = target.reshape(-1), array.reshape(-1)
        for start in range(0, flat.size, _BLOCK):
            stop = min(start + _BLOCK, flat.size)
            block = scratch[:stop - start]
            np.multiply(flat[start:stop], scale, out=block, dtype=np.float64)
            flat_target[start:stop] += block


def fold(target: np.ndarray, values: np.ndarray, scale: float, *, undo: bool = False,
         scratch: np.ndarray | None = None) -> None:
    """target += scale * values (``undo``: -=), for 1-D ``target`` (float64) and ``values``.

    The same float64 operations as :func:`accumulate`, so the same bits; an undo restores the
    exact previous sum whenever the sums are exact (see the module docstring). ``scratch``: a
    float64 buffer of at least ``_BLOCK`` elements to reuse (fresh memory per call is dear).
    """
    if scratch is None:
        scratch = np.empty(min(_BLOCK, values.size), np.float64)
    for start in range(0, values.size, _BLOCK):
        stop = min(start + _BLOCK, values.size)
        block = scratch[:stop - start]
        np.multiply(values[start:stop], scale, out=block, dtype=np.float64)
        if undo:
            target[start:stop] -= block
        else:
            target[start:stop] += block


def fold_reversibly(target: np.ndarray, values: np.ndarray, scale: float,
                    restore: list[tuple[np.ndarray, np.ndarray]],
                    scratch: np.ndarray | None = None) -> int:
    """``fold`` that records what a plain subtraction could not take back out exactly.

    ``(a + x) - x == a`` only when the float64 sum is exact; a value far larger than the sum so
    far (1e54 against 25, say) absorbs it, and subtracting it back would leave 0. For every
    element where the sum is not exactly reversible, (its index in ``target``, its old value)
    goes to ``restore``. Returns how many elements were recorded. ``scratch``: a reusable
    float64 buffer of shape (3, _BLOCK).
    """
    if scratch is None:
        scratch = np.empty((3, min(_BLOCK, values.size)), np.float64)
    block, old, back = scratch
    recorded = 0
    for start in range(0, values.size, _BLOCK):
        stop = min(start + _BLOCK, values.size)
        k = stop - start
        np.multiply(values[start:stop], scale, out=block[:k], dtype=np.float64)
        np.copyto(old[:k], target[start:stop])
        target[start:stop] += block[:k]
        np.subtract(target[start:stop], block[:k], out=back[:k])
        inexact = back[:k] != old[:k]
        if inexact.any():
            where = np.flatnonzero(inexact)
            restore.append((where + start, old[where]))
            recorded += where.size
    return recorded


def finalize_mean(acc: dict[str, np.ndarray], total: float, like: Weights,
                  out: Mapping[str, np.ndarray] | None = None) -> Weights:
    """acc / total cast back to each parameter's dtype (integers and flags rounded).

    Divides ``acc`` in place and reuses it as the result where dtypes agree, so finishing a
    round costs no extra model copy; ``acc`` is spent afterwards. ``out``: writable arrays of
    the parameters' shapes and dtypes, used by nobody else, to write floating-point results
    into instead of new memory; the model gets read-only views of them.
    """
    result: dict[str, np.ndarray] = {}
    for name, ref in like.items():
        if name not in acc:  # a parameter that stays at the sites keeps the global value
            result[name] = ref
            continue
        mean = np.divide(acc[name], total, out=acc[name])  # in place: no second copy
        target = out.get(name) if out is not None else None
        if (target is not None and np.issubdtype(ref.dtype, np.floating)
                and target.dtype == ref.dtype and target.shape == ref.shape):
            np.copyto(target, mean, casting="same_kind")
            result[name] = _read_only_twin(target)
        elif np.issubdtype(ref.dtype, np.floating):
            result[name] = mean.astype(ref.dtype, copy=False)
        elif ref.dtype == np.bool_:
            result[name] = mean >= 0.5
        else:
            result[name] = np.rint(mean).astype(ref.dtype)
    for name, value in result.items():  # computed here, so the model's alone: no copy
        array = result[name] = np.asarray(value)  # (a 0-d result may come back as a scalar)
        if array.base is None and array.flags.writeable:
            array.flags.writeable = False
    return Weights.adopt(result)


def _read_only_twin(array: np.ndarray) -> np.ndarray:
    """The same memory as ``array``, through a read-only buffer: Weights takes it as it is,
    and nobody holding the model can make it writable again."""
    frozen = array.reshape(-1).data.cast("B").toreadonly()
    return np.frombuffer(frozen, array.dtype).reshape(array.shape)


class WeightedMeanAggregator(Aggregator):
    """Running sample-weighted mean of site models."""

    def __init__(self, global_weights: Weights,
                 spare: dict[str, np.ndarray] | None = None,
                 pool: BufferPool | None = None) -> None:
        self._like = global_weights
        self._spare = spare
        self._pool = pool or BufferPool(keep=0)
        self._acc: dict[str, np.ndarray] = {}
        self._total = 0
        self._count = 0
        self._spent = False
        # A copy of the values a stream has folded in so far, to take them back out if its
        # upload fails: one model-sized set, shared by one stream at a time (the transport
        # folds one upload at a time), and the new model's memory once the round is done.
        self._undo: dict[str, np.ndarray] = {}
        self._undo_busy = False

    def add(self, site_id: str, result: TrainResult) -> None:
        accumulate(self._acc, result.weights, float(result.num_samples), self._spare)
        self._count_in(result.num_samples)

    def _count_in(self, num_samples: int) -> None:
        self._total += num_samples
        self._count += 1

    def stream(self, site_id: str, num_samples: int,
               specs: Sequence[TensorSpec]) -> UpdateStream | None:
        if type(self).add is not WeightedMeanAggregator.add:
            return None  # a subclass that changes add (noise, clipping) sees every update whole
        targets = [self._zeroed(s) for s in specs]
        if self._undo_busy:  # another stream in flight: it gets memory of its own
            return _MeanStream(self, targets, [np.empty(s.shape, s.dtype).reshape(-1)
                                               for s in specs], num_samples, shared=False)
        if [(n, a.dtype) for n, a in self._undo.items()] != [
                (s.name, np.dtype(s.dtype)) for s in specs]:  # the pool's: an old model's memory
            self._undo = dict(zip([s.name for s in specs], self._pool.arrays(specs), strict=True))
        self._undo_busy = True
        return _MeanStream(self, targets, [self._undo[s.name].reshape(-1) for s in specs],
                           num_samples, shared=True)

    def _stream_done(self, shared: bool) -> None:
        if shared:
            self._undo_busy = False

    def _zeroed(self, spec: TensorSpec) -> np.ndarray:
        """The flat float64 accumulator of one parameter, created as zeros if it is new
        (0 + x is the first result's bits in :func:`accumulate` too)."""
        acc = self._acc.get(spec.name)
        if acc is None:
            acc = self._spare.pop(spec.name, None) if self._spare is not None else None
            if acc is None or acc.shape != spec.shape:
                acc = np.zeros(spec.shape, np.float64)
            else:
                acc.fill(0.0)
            self._acc[spec.name] = acc
        return acc.reshape(-1)

    @property
    def num_results(self) -> int:
        return self._count

    def finish(self) -> Weights:
        if self._count == 0:
            raise RuntimeError("finish() called before any result was added")
        if self._spent:
            raise RuntimeError("finish() was already called for this round")
        self._spent = True
        acc, self._acc = self._acc, {}
        out = self._undo if self._undo and not self._undo_busy else None
        self._undo = {}
        weights = finalize_mean(acc, float(self._total), self._like, out)
        if self._spare is not None:  # keep the accumulators for next round, unless they
            self._spare.clear()      # became the model itself (float64 parameters)
            self._spare.update({n: a for n, a in acc.items()
                                if not np.may_share_memory(a, weights[n])})
        return weights


class _MeanStream(UpdateStream):
    """Folds one site's model into a WeightedMeanAggregator as it arrives.

    Until it is committed it keeps a copy of what it folded in (the received bytes can then be
    freed at once) and the old sum of every element where subtracting that copy back out
    would not be exact, so a discarded upload is always taken back out bit for bit. The
    caller folds one stream at a time into a given sum (the transport's receive permit).
    """

    def __init__(self, owner: WeightedMeanAggregator, targets: list[np.ndarray],
                 undo: list[np.ndarray], num_samples: int, *, shared: bool) -> None:
        self._owner = owner
        self._shared = shared
        self._targets = targets
        self._undo = undo
        self._num_samples = num_samples
        self._scale = float(num_samples)
        self._written: list[tuple[int, int, int]] = []
        self._restore: list[tuple[int, np.ndarray, np.ndarray]] = []
        # 16 bytes per recorded element: at most the size of a float32 copy of the model
        self._budget = max(sum(t.size for t in targets) // 4, 1024)
        # no larger than the largest tensor: 6 MiB for a small model would be most of it
        self._scratch = np.empty((3, min(_BLOCK, max((t.size for t in targets), default=1))),
                                 np.float64)

    def write(self, index: int, start: int, values: np.ndarray) -> None:
        stop = start + values.size
        self._undo[index][start:stop] = values
        self._written.append((index, start, stop))  # before folding: discard covers it all
        restore: list[tuple[np.ndarray, np.ndarray]] = []
        self._budget -= fold_reversibly(self._targets[index][start:stop], values, self._scale,
                                        restore, self._scratch)
        self._restore.extend((index, where + start, old) for where, old in restore)
        if self._budget < 0:
            raise ValueError("its values are so far in magnitude from the others' that "
                             "folding them in could not be undone exactly; refused")

    def commit(self) -> None:
        self._owner._count_in(self._num_samples)
        self._finish()

    def discard(self) -> None:
        for index, start, stop in reversed(self._written):
            fold(self._targets[index][start:stop], self._undo[index][start:stop], self._scale,
                 undo=True, scratch=self._scratch[0])
        for index, where, old in self._restore:  # where subtracting was not exact
            self._targets[index][where] = old
        self._finish()

    def _finish(self) -> None:
        """Hold nothing once done: the round keeps its finished streams until it ends, and
        their scratch and (for a stream with memory of its own) undo copy would stay with them."""
        self._written, self._restore, self._targets, self._undo = [], [], [], []
        self._scratch = np.empty((3, 0), np.float64)
        self._owner._stream_done(self._shared)


class FedAvg(Strategy):
    """Federated averaging with optional random site sampling.

    Args:
        fraction: Share of available sites asked to train each round, in (0, 1]. Sampling is
            seeded by (seed, round_num), so a resumed job samples the same sites.
        seed: Seed for site sampling.
        train_config: Sent to every site with each training task (e.g. ``{"local_steps": 50}``).
        evaluate_config: Sent with each evaluation task.
        selector: A custom rule (round_num, available sites) -> sites to train; replaces
            ``fraction`` when given.
    """

    def __init__(
        self,
        *,
        fraction: float = 1.0,
        seed: int = 0,
        train_config: Config | None = None,
        evaluate_config: Config | None = None,
        selector: Callable[[int, Sequence[str]], list[str]] | None = None,
    ) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ConfigError(f"FedAvg fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction
        self.seed = seed
        self.selector = selector
        self._min_sites: int | None = None  # the job's, once a Job has checked this strategy
        self._spare: dict[str, np.ndarray] = {}  # last round's float64 accumulators
        self._pool = BufferPool()  # memory of earlier models, for the next one
        self.train_config = dict(train_config or {})
        self.evaluate_config = dict(evaluate_config or {})
        try:
            check_scalars(self.train_config, "train_config")
            check_scalars(self.evaluate_config, "evaluate_config")
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"FedAvg: {exc}") from None

    def _sample_size(self, num_available: int) -> int:
        return max(1, round(self.fraction * num_available))

    def check_job(self, *, min_sites: int, num_sites: int | None) -> None:
        self._min_sites = min_sites  # checked again in select_sites, against the connected sites
        if self.selector is not None or self.fraction >= 1.0 or num_sites is None:
            return
        count = self._sample_size(num_sites)
        if count < min_sites:
            raise ConfigError(
                f"{type(self).__name__} fraction={self.fraction} asks {count} of the job's "
                f"{num_sites} sites to train each round, fewer than min_sites={min_sites}: "
                "every round would fail")

    def select_sites(self, round_num: int, available: Sequence[str]) -> list[str]:
        if self.selector is not None:
            return [s for s in self.selector(round_num, available) if s in available]
        if self.fraction >= 1.0 or not available:
            return list(available)  # none: the controller reports too few sites
        count = self._sample_size(len(available))
        min_sites = self._min_sites
        if min_sites is not None and count < min_sites <= len(available):
            raise AggregationError(
                f"{type(self).__name__} fraction={self.fraction} asks {count} of the "
                f"{len(available)} connected sites to train, fewer than min_sites={min_sites}",
                round_num=round_num)
        rng = np.random.default_rng([self.seed, round_num])
        chosen = rng.choice(len(available), size=count, replace=False)
        return [available[i] for i in sorted(chosen)]

    def configure_train(self, round_num: int, site_id: str) -> Config:
        return dict(self.train_config)

    def configure_evaluate(self, round_num: int, site_id: str) -> Config:
        return dict(self.evaluate_config)

    def aggregator(self, round_num: int, global_weights: Weights) -> Aggregator:
        # One round at a time: the float64 accumulators of the last round are reused (for a
        # large model, fresh memory costs more than the arithmetic).
        return WeightedMeanAggregator(global_weights, self._spare, self._pool)


class Cyclic(FedAvg):
    """Cyclic weight transfer (Sheller et al. 2019, CIIL): one site per round, in turn.

    The model visits the sites in sorted order; each round's new model is that site's model.
    """

    def check_job(self, *, min_sites: int, num_sites: int | None) -> None:
        if min_sites != 1:
            raise ConfigError(f"Cyclic trains one site per round: min_sites must be 1, "
                              f"got {min_sites}")

    def select_sites(self, round_num: int, available: Sequence[str]) -> list[str]:
        ordered = sorted(available)
        return [ordered[(round_num - 1) % len(ordered)]] if ordered else []
