"""Federated preprocessing of tabular covariates: mean imputation, missing indicators,
standardisation, all from federated sums, applied identically at every site.

Every site sends, per column, its count of present values, their sum and sum of squares, and
its count of missing values (:func:`column_moments`); the server sums them
(:meth:`Preprocessing.from_totals`) and sends the result back with each task. Each site then
applies the same transformation (:meth:`Preprocessing.apply`), so a model fitted on the
transformed rows of the federation is the model fitted on the pooled rows transformed the
same way: a missing value becomes the federation's mean of that column (not the site's), an
optional indicator column says it was missing, and standardised columns use the federation's
mean and standard deviation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedcare.core.weights import Weights

#: The name of a column's missing-value indicator.
INDICATOR_SUFFIX = "_missing"
_FIELDS = ("impute_mean", "centre", "scale", "indicator")


def column_moments(x: np.ndarray) -> dict[str, np.ndarray]:
    """The additive sums of :meth:`Preprocessing.from_totals` over a site's rows (NaN =
    missing)."""
    present = ~np.isnan(x)
    values = np.where(present, x, 0.0)
    return {"present": present.sum(axis=0).astype(np.float64), "sum": values.sum(axis=0),
            "sum_sq": (values**2).sum(axis=0),
            "missing": (~present).sum(axis=0).astype(np.float64)}


@dataclass(frozen=True)
class Preprocessing:
    """One transformation of ``[rows, columns]`` covariates, the same at every site.

    Attributes:
        impute_mean: Per column, the federation's mean of its present values (replaces NaN).
        centre: Per column, subtracted after imputation (0: none).
        scale: Per column, divides after centring (1: none); a constant column keeps 1.
        indicator: Per column, 1.0 where an indicator column follows the columns.
    """

    impute_mean: np.ndarray
    centre: np.ndarray
    scale: np.ndarray
    indicator: np.ndarray

    @classmethod
    def from_totals(cls, totals: Mapping[str, np.ndarray], *, standardise: bool,
                    indicators: bool) -> Preprocessing:
        """From the sites' summed :func:`column_moments`; standard deviations are of the
        present values (divisor n), indicators only for columns missing somewhere.

        Raises:
            ValueError: a column has no present value at any site (naming its index).
        """
        present = np.asarray(totals["present"], np.float64)
        if (present == 0).any():
            raise ValueError(f"columns {np.flatnonzero(present == 0).tolist()} have no "
                             "present value at any site: nothing to impute from")
        mean = np.asarray(totals["sum"]) / present
        std = np.sqrt(np.maximum(np.asarray(totals["sum_sq"]) / present - mean**2, 0.0))
        ones = np.ones_like(mean)
        return cls(mean, mean if standardise else np.zeros_like(mean),
                   np.where(std > 1e-12, std, 1.0) if standardise else ones,
                   (np.asarray(totals["missing"]) > 0).astype(np.float64) if indicators
                   else np.zeros_like(mean))

    def names(self, columns: Sequence[str]) -> list[str]:
        """The names of :meth:`apply`'s output columns."""
        return [*columns, *(c + INDICATOR_SUFFIX for c, on in zip(columns, self.indicator,
                                                                   strict=True) if on)]

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Impute, centre and scale ``x``; then append the indicator columns (0/1)."""
        if x.shape[1] != len(self.impute_mean):
            raise ValueError(f"preprocessing is for {len(self.impute_mean)} columns, got "
                             f"{x.shape[1]}")
        missing = np.isnan(x)
        filled = np.where(missing, self.impute_mean, x)
        scaled = (filled - self.centre) / self.scale
        return np.column_stack([scaled, missing[:, self.indicator > 0].astype(np.float64)])

    def to_weights(self) -> Weights:
        """As arrays a task carries to the sites."""
        return Weights({f"prep_{k}": np.asarray(getattr(self, k), np.float64) for k in _FIELDS})

    @classmethod
    def from_model(cls, model: Mapping[str, np.ndarray]) -> Preprocessing | None:
        """What :meth:`to_weights` sent, or None when a task carries none."""
        if "prep_impute_mean" not in model:
            return None
        return cls(*(np.asarray(model[f"prep_{k}"], np.float64) for k in _FIELDS))
