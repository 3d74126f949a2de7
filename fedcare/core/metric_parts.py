"""Metrics of the federation computed from additive parts the sites send, not by averaging.

A site's accuracy or C-index averaged over sites (weighted by test rows) is not the metric of
the federation: a C-index is concordant pairs over comparable pairs, and sites differ in how
many pairs their rows make. Two kinds of parts are summed over sites, key by key, and then
combined:

- Ratios. A trainer that reports ``NAME.num`` and ``NAME.den`` (e.g. concordant and
  comparable pairs, both counted within the site) gets the global ``NAME`` as
  ``sum(num) / sum(den)`` over the sites, exactly. (Pairs across two sites are never formed:
  that would need one site's risk scores at another.)
- Histogram pairs, for ROC AUC. A trainer that reports ``NAME.pos.B`` and ``NAME.neg.B`` (how
  many positive and negative test rows have a score in bin ``B``; bins ordered by score, only
  the non-empty ones sent) gets the global ``NAME``: the AUC of all sites' test rows together,
  pairs across sites included, as if the rows were pooled, up to the binning
  (``NAME.max_error``, see :func:`pooled_aucs`). Every site of a job must bin the same way
  (:func:`auc_parts` with the same ``bins``).

Each site's own ``NAME`` stays in its per-site record.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

NUMERATOR = ".num"
DENOMINATOR = ".den"
POSITIVE = ".pos."
NEGATIVE = ".neg."
#: Bins of :func:`auc_parts` on [0, 1]: the AUC's error bound shrinks with the bin width. Two
#: classes' worth (800 parts) plus a result's other metrics fit the wire's 1,024 metrics.
AUC_BINS = 400
_BIN = re.compile(r"^(.+)\.(pos|neg)\.(\d+)$")


def ratio_parts(name: str, numerator: float, denominator: float) -> dict[str, float]:
    """The two metrics a site reports for the ratio ``name``."""
    return {name + NUMERATOR: float(numerator), name + DENOMINATOR: float(denominator)}


def auc_parts(name: str, scores: np.ndarray, labels: np.ndarray, bins: int = AUC_BINS
              ) -> dict[str, float]:
    """The histogram-pair parts a site reports for the ROC AUC ``name``.

    ``scores`` are probabilities in [0, 1] (clipped there), ``labels`` 0 or 1; bin ``B``
    holds scores in [B / bins, (B + 1) / bins). What a bin count reveals: how many of the
    site's test rows of one class the model scores in that 1/``bins``-wide interval. With few
    rows most non-empty bins hold one row, so the parts amount to the set of (score, label)
    pairs of the test rows, unordered and without features: a server that knows the model
    learns, for each such row, its label and that its features give that score. The site's
    ``privacy.min_rows`` applies to the whole evaluation result (its ``num_samples``), not to
    single bins; a site that must hide per-row scores should not send these parts.
    """
    if bins < 1:
        raise ValueError(f"auc_parts: bins must be >= 1, got {bins}")
    index = np.clip((np.clip(np.asarray(scores, np.float64), 0.0, 1.0) * bins).astype(np.int64),
                    0, bins - 1)
    positive = np.asarray(labels) == 1
    out = {}
    for suffix, mask in ((POSITIVE, positive), (NEGATIVE, ~positive)):
        counts = np.bincount(index[mask], minlength=bins)
        out.update({f"{name}{suffix}{b}": float(counts[b]) for b in np.flatnonzero(counts)})
    return out


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Exact ROC AUC (ties count one half, as scikit-learn's ``roc_auc_score``); NaN without
    both classes."""
    s = np.asarray(scores, np.float64)
    positive = np.asarray(labels) == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # average 1-based ranks
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def is_part(name: str) -> bool:
    """Whether the metric ``name`` is an additive part (summed over sites, not averaged)."""
    return name.endswith((NUMERATOR, DENOMINATOR)) or is_bin(name)


def is_bin(name: str) -> bool:
    """Whether ``name`` is one bin of a histogram pair (many per metric)."""
    return _BIN.match(name) is not None


def pooled_ratios(sums: Mapping[str, float]) -> dict[str, float]:
    """Each ratio whose parts ``sums`` holds (summed over sites), where the denominator is
    positive."""
    out = {}
    for name, numerator in sums.items():
        if name.endswith(NUMERATOR):
            base = name[: -len(NUMERATOR)]
            denominator = sums.get(base + DENOMINATOR, 0.0)
            if denominator > 0:
                out[base] = numerator / denominator
    return out


def pooled_aucs(sums: Mapping[str, float]) -> dict[str, float]:
    """Each AUC whose histogram pair ``sums`` holds (summed over sites), where both classes
    have rows, and its ``NAME.max_error``.

    A positive and a negative row in different bins are ordered by their bins, which is their
    order by score, so such pairs count exactly; a pair in the same bin counts one half, where
    the exact AUC counts 0, 1/2 or 1. Hence ``|AUC - exact AUC| <= max_error`` = 1/2 x
    (positive-negative pairs sharing a bin) / (all positive-negative pairs), computed from the
    same histograms; it is at most 1/2 and, for scores spread over [0, 1], near
    1/(2 x bins).
    """
    hists: dict[str, dict[int, list[float]]] = {}
    for key, count in sums.items():
        match = _BIN.match(key)
        if match:
            cell = hists.setdefault(match[1], {}).setdefault(int(match[3]), [0.0, 0.0])
            cell[0 if match[2] == "pos" else 1] += float(count)
    out = {}
    for name, by_bin in hists.items():
        pos, neg = np.array([by_bin[b] for b in sorted(by_bin)], np.float64).T
        pairs = pos.sum() * neg.sum()
        if pairs > 0:
            tied = float((pos * neg).sum())
            below = float((pos * (np.cumsum(neg) - neg)).sum())  # negatives in lower bins
            out[name] = (below + 0.5 * tied) / pairs
            out[name + ".max_error"] = 0.5 * tied / pairs
    return out


def pooled_metrics(sums: Mapping[str, float]) -> dict[str, float]:
    """Every ratio and AUC the summed parts ``sums`` define."""
    return {**pooled_ratios(sums), **pooled_aucs(sums)}


def summed_parts(site_metrics: list[Mapping[str, float]]) -> dict[str, float]:
    """The parts of several sites' metrics, summed key by key (other metrics dropped)."""
    sums: dict[str, float] = {}
    for metrics in site_metrics:
        for name, value in metrics.items():
            if is_part(name):
                sums[name] = sums.get(name, 0.0) + float(value)
    return sums
