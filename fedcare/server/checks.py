"""What a site's result must satisfy before any of it may touch the global model."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedcare.core.metric_parts import AUC_BINS, is_bin
from fedcare.core.text import one_line

#: The largest sample count a site may report: exact in float64, and small enough that a
#: weighted sum of float32 values (at most ~3.4e38 each) cannot overflow float64.
MAX_NUM_SAMPLES = 2**53
#: A float64 update whose largest |value| times its sample count exceeds this could overflow
#: the float64 sum (1.8e308) together with the others; float16/32 values cannot.
_MAX_WEIGHTED_MAGNITUDE = 1e290
#: The longest metric name a site may report.
MAX_METRIC_NAME = 128
#: The most metrics one result may report, histogram bins aside. With the name bound, one site
#: adds at most ~10 KB to a round's record per reply, so no site can grow a job's ``Metrics``
#: (and ``download``) out of bounds; per-class metrics of a 20-class model still fit.
MAX_METRICS = 64
#: The most histogram-bin parts (:func:`fedcare.core.metric_parts.auc_parts`) one result may
#: report besides: two classes of ``AUC_BINS`` bins, with the other metrics within the wire's
#: 1,024. The server sums them and keeps no site's bins in the round's record.
MAX_BIN_PARTS = 2 * AUC_BINS


def finite_number(value: object) -> bool:
    """A real number of magnitude at most 1e300 (huge ints such as 10**400 are not)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value)) and abs(float(value)) <= 1e300
    except OverflowError:
        return False


def count_problem(num_samples: object) -> str | None:
    """Why a reported sample count cannot be used, or None."""
    n = num_samples
    if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= MAX_NUM_SAMPLES:
        shown = n if not isinstance(n, int) or n.bit_length() < 64 else f"~2**{n.bit_length()}"
        return f"num_samples must be an integer in 1..2**53, got {shown!r}"
    return None


def metrics_problem(metrics: Mapping[str, object]) -> str | None:
    """Why reported metrics cannot be used, or None."""
    bins = sum(1 for k in metrics if isinstance(k, str) and is_bin(k))
    if len(metrics) - bins > MAX_METRICS:
        return f"reported {len(metrics) - bins} metrics, at most {MAX_METRICS} are taken"
    if bins > MAX_BIN_PARTS:
        return f"reported {bins} histogram bins, at most {MAX_BIN_PARTS} are taken"
    names = [k for k in metrics if not (isinstance(k, str) and 0 < len(k) <= MAX_METRIC_NAME
                                        and k.isprintable())]
    if names:
        shown = [one_line(k, 40) for k in names[:5]]
        return (f"metric names must be printable text of 1..{MAX_METRIC_NAME} characters, got "
                f"{shown}")
    bad = [k for k, v in metrics.items() if not finite_number(v)]
    return f"metrics {bad} are not finite numbers" if bad else None


def values_problem(name: str, values: np.ndarray, num_samples: int) -> str | None:
    """Why (part of) a parameter cannot be folded into the weighted sum, or None: NaN or
    infinity, or a float64 magnitude that could overflow the float64 sum."""
    if not np.issubdtype(values.dtype, np.floating) or not values.size:
        return None
    if not np.isfinite(values).all():
        return f"returned NaN or infinity in [{name!r}]"
    if values.dtype == np.float64:
        peak = max(float(values.max()), -float(values.min()))
        if peak * num_samples > _MAX_WEIGHTED_MAGNITUDE:
            return (f"{name}: |value| up to {peak:.3g} with num_samples={num_samples} "
                    "would overflow the weighted sum")
    return None
