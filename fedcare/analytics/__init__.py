"""Federated statistics of tabular data, missing values included.

Two halves of every statistic, so no row ever leaves a site:

- the site side, :func:`site_statistics`: additive sums over the site's own rows (per column:
  counts of present values, sums, sums of squared deviations, histogram counts, missing counts);
- the server side, the passes (:class:`Mean`, :class:`Variance`, :class:`Histogram`,
  :class:`MissingValues`): each a :class:`fedcare.FederatedStatistic` whose ``finalize`` turns
  the summed totals into global values, run by :class:`fedcare.FederatedStatistics` as a job of
  its own or before training.

Missing values (NaN) are skipped column by column and counted. A variance is computed about the
global mean sent back to the sites (two passes), which is exact where the one-pass formula
``E[x^2] - E[x]^2`` loses precision.

A trainer serves them with one line::

    def statistics(self, config, model=None):
        return site_statistics(self.x, config, model)

Clinical analyses, exact across sites (the federated answer equals the pooled one):
:class:`NewtonFit` (logistic and Cox regression by Newton-Raphson on summed gradients and
Hessians), :class:`KaplanMeier` (curves and the log-rank test from summed event and at-risk
counts), :class:`CohortStatistics` (a cohort table with per-site suppression below the site's
``min_rows``). Their site halves read a :class:`SiteTable`; the built-in jobs are in
:mod:`fedcare.jobs.clinical`.
"""

from fedcare.analytics.cohort import CohortStatistics, histogram_quantiles
from fedcare.analytics.newton import NewtonFit, RegressionSpec, information_inverse, wald_table
from fedcare.analytics.passes import Histogram, Mean, MissingValues, Variance
from fedcare.analytics.site import site_statistics
from fedcare.analytics.survival import KaplanMeier, km_curve, logrank
from fedcare.analytics.table import DataError, SiteTable

__all__ = ["CohortStatistics", "DataError", "Histogram", "KaplanMeier", "Mean",
           "MissingValues", "NewtonFit", "RegressionSpec", "SiteTable", "Variance",
           "histogram_quantiles", "information_inverse", "km_curve", "logrank",
           "site_statistics", "wald_table"]
