"""How well a fitted model discriminates, from additive site counts, not averaged site metrics.

After a fit, each site scores its own rows with the federation's coefficients and sends counts:

- logistic: the confusion counts at probability 0.5, and per class a histogram of the
  predicted probabilities (:data:`BINS` equal bins over [0, 1]); the server's accuracy,
  sensitivity and specificity are exact, and its AUC counts every positive-negative pair of
  the federation, across sites too, exactly except pairs whose two scores share a bin (counted
  1/2): the result gives that bound (``auc_error_bound``);
- Cox: concordant and comparable pairs (Harrell) formed within the site; the C-index is
  their sums' ratio (a pair across two sites would need one's risk scores at the other).

A site's ``min_rows`` zeroes histogram bins with fewer values before they leave (the AUC then
leaves those rows out, and says how many), and a confusion table with a non-empty cell below
it is sent as zeros, all four cells (coefficients the server picks can put one patient alone in
a cell); pair counts are totals over the site's rows, which ``min_rows`` already bounds.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedcare.analytics.regression import model_rows
from fedcare.analytics.survival import site_min_rows
from fedcare.analytics.table import SiteTable
from fedcare.core.message import Config, StatsResult
from fedcare.core.weights import Weights

TASK = "regression_performance"
BINS = 1000


def concordance_pairs(risk: np.ndarray, event: np.ndarray, time: np.ndarray,
                      chunk: int = 2048) -> tuple[float, float]:
    """(concordant, comparable) pairs: comparable when the earlier time is an observed event,
    concordant when that row has the higher risk (ties 1/2); memory bounded by ``chunk``."""
    concordant = comparable = 0.0
    for start in range(0, len(risk), chunk):
        rows = slice(start, start + chunk)
        pairs = (time[rows, None] < time[None, :]) & (event[rows, None] == 1)
        wins = ((risk[rows, None] > risk[None, :])
                + 0.5 * (risk[rows, None] == risk[None, :]))
        concordant += float((wins * pairs).sum())
        comparable += float(pairs.sum())
    return concordant, comparable


def site_performance(table: SiteTable, config: Config, model: Mapping[str, np.ndarray]
                     ) -> StatsResult:
    """The counts of the module docstring for the coefficients ``model["beta"]``."""
    x, outcome, time = model_rows(table, config, model)
    beta = np.asarray(model["beta"], np.float64)
    if time is None:
        probability = 1.0 / (1.0 + np.exp(-(beta[0] + x @ beta[1:])))
        predicted = probability >= 0.5
        positive = outcome == 1
        edges = np.linspace(0.0, 1.0, BINS + 1)
        hist = np.stack([np.histogram(probability[positive], bins=edges)[0],
                         np.histogram(probability[~positive], bins=edges)[0]]).astype(float)
        limit = site_min_rows(config)
        sparse = (hist > 0) & (hist < limit)
        confusion = np.asarray([(predicted & positive).sum(), (predicted & ~positive).sum(),
                                (~predicted & ~positive).sum(), (~predicted & positive).sum()],
                               np.float64)
        if ((confusion > 0) & (confusion < limit)).any():
            # all four or none: one cell is the row count minus the other three
            confusion = np.zeros(4)
        return StatsResult(Weights({
            "confusion": confusion,
            "histogram": np.where(sparse, 0.0, hist),
            "suppressed": np.array([hist[sparse].sum()])}), len(x))
    risk = (x - np.asarray(model["offset"], np.float64)) @ beta
    concordant, comparable = concordance_pairs(risk, outcome, time)
    return StatsResult(Weights({"pairs": np.array([concordant, comparable])}), len(x))


def auc_from_histograms(positive: np.ndarray, negative: np.ndarray) -> tuple[float, float]:
    """(AUC, its error bound) from per-class score histograms over the same bins."""
    pairs = positive.sum() * negative.sum()
    if pairs == 0:
        return float("nan"), 0.0
    below = np.concatenate([[0.0], np.cumsum(negative)[:-1]])
    ties = float((positive * negative).sum())
    return float(((positive * below).sum() + 0.5 * ties) / pairs), 0.5 * ties / float(pairs)


def summary(replies: Mapping[str, StatsResult], model: str) -> dict[str, object]:
    """The federation's metrics from the sites' counts, and each site's own."""
    if model == "cox":
        pairs = {s: r.values["pairs"] for s, r in replies.items()}
        total = np.sum(list(pairs.values()), axis=0)
        return {"c_index": total[0] / total[1] if total[1] else None,
                "comparable_pairs": float(total[1]),
                "sites": {s: {"c_index": p[0] / p[1] if p[1] else None,
                              "comparable_pairs": float(p[1])} for s, p in pairs.items()}}
    confusion = {s: r.values["confusion"] for s, r in replies.items()}
    tp, fp, tn, fn = np.sum(list(confusion.values()), axis=0)
    hist = np.sum([r.values["histogram"] for r in replies.values()], axis=0)
    auc, bound = auc_from_histograms(hist[0], hist[1])

    def ratio(a: float, b: float) -> float | None:
        return float(a / b) if b else None

    return {"accuracy": ratio(tp + tn, tp + fp + tn + fn), "sensitivity": ratio(tp, tp + fn),
            "specificity": ratio(tn, tn + fp), "auc": auc, "auc_error_bound": bound,
            "confusion": {"tp": float(tp), "fp": float(fp), "tn": float(tn), "fn": float(fn)},
            "auc_rows_suppressed": float(sum(r.values["suppressed"][0]
                                             for r in replies.values())),
            "sites": {s: {"accuracy": ratio(c[0] + c[2], c.sum())}
                      for s, c in confusion.items()}}
