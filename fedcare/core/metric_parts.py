"""Metrics that are ratios of counts, sent as their two additive parts.

A site's accuracy or C-index averaged over sites (weighted by test rows) is not the metric of
the federation: a C-index is concordant pairs over comparable pairs, and sites differ in how
many pairs their rows make. A trainer that reports ``NAME.num`` and ``NAME.den`` (e.g.
concordant and comparable pairs, both counted within the site) gets the global ``NAME`` as
``sum(num) / sum(den)`` over the sites, exactly, while its own ``NAME`` stays in its per-site
record. (Pairs across two sites are never formed: that would need one site's risk scores at
another.)
"""

from __future__ import annotations

from collections.abc import Mapping

NUMERATOR = ".num"
DENOMINATOR = ".den"


def ratio_parts(name: str, numerator: float, denominator: float) -> dict[str, float]:
    """The two metrics a site reports for the ratio ``name``."""
    return {name + NUMERATOR: float(numerator), name + DENOMINATOR: float(denominator)}


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
