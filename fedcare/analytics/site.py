"""The site half of federated statistics: per-column sums over local rows, NaN skipped."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedcare.core.message import Config, StatsResult
from fedcare.core.weights import Weights

#: The most histogram bins a site computes (the server chooses them; a site bounds its memory).
MAX_BINS = 10_000


def _matrix(x: np.ndarray) -> np.ndarray:
    data = np.asarray(x, dtype=np.float64)
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2:
        raise ValueError(f"statistics need a [rows, columns] array, got shape {data.shape}")
    return data


def site_statistics(x: np.ndarray, config: Config,
                    model: Mapping[str, np.ndarray] | None = None) -> StatsResult:
    """The sums one pass asks for (``config["name"]``), over the rows of ``x`` (NaN = missing).

    Args:
        x: This site's rows, ``[rows, columns]`` (or one column).
        config: The statistics task's settings; ``name`` says which pass.
        model: The current global values, for a pass that needs an earlier one's result (the
            variance needs ``mean``).

    Raises:
        ValueError: an unknown pass, or a pass without the values it needs.
    """
    data = _matrix(x)
    present = ~np.isnan(data)
    count = present.sum(axis=0).astype(np.float64)
    name = config.get("name")
    if name in ("mean", "feature_mean"):
        values = {"count": count, "sum": np.where(present, data, 0.0).sum(axis=0)}
    elif name == "variance":
        if model is None or "mean" not in model:
            raise ValueError("the variance pass needs the global mean: run Mean first")
        mean = np.asarray(model["mean"], np.float64)
        if mean.shape != (data.shape[1],):
            raise ValueError(f"global mean has shape {mean.shape}, this site has "
                             f"{data.shape[1]} columns")
        deviation = np.where(present, data - mean, 0.0)
        values = {"count": count, "sum": np.where(present, data, 0.0).sum(axis=0),
                  "sum_sq_dev": (deviation**2).sum(axis=0)}
    elif name == "histogram":
        bins, low, high = int(config["bins"]), float(config["low"]), float(config["high"])
        if not 1 <= bins <= MAX_BINS or not low < high:
            raise ValueError(f"histogram: need 1 <= bins <= {MAX_BINS} and low < high, got "
                             f"{bins}, {low}, {high}")
        edges = np.linspace(low, high, bins + 1)
        counts = np.stack([np.histogram(column[~np.isnan(column)], bins=edges)[0]
                           for column in data.T]).astype(np.float64)
        values = {"counts": counts, "count": count}
    elif name == "missing":
        values = {"missing": (~present).sum(axis=0).astype(np.float64),
                  "rows": np.array([len(data)], np.float64)}
    else:
        raise ValueError(f"unknown statistic {name!r}")
    return StatsResult(Weights(values), len(data))
