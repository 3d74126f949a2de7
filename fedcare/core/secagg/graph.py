"""Who shares masks and secrets with whom: the complete graph of SecAgg (Bonawitz et al.
2017) or the sparse neighbour graph of SecAgg+ (Bell et al. 2020).

In SecAgg every pair of sites agrees a mask, and every site secret-shares its seeds with all
the others: work and messages grow with the square of the sites. SecAgg+ keeps only the edges
of a random graph of degree ``k`` (O(log n) suffices for security with high probability): masks
and shares are exchanged with neighbours only. The graph here is a random circulant (Harary)
graph: sites in a random cyclic order, each joined to the ``k / 2`` before and after it, so
every site has exactly ``k`` neighbours and the graph is connected. The server draws it from
the OS CSPRNG each round.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def neighbours(site_ids: Sequence[str], degree: int | None) -> dict[str, list[str]]:
    """Each site's neighbours, sorted; the complete graph when ``degree`` is None or at least
    the number of other sites. An odd ``degree`` is rounded up to the next even one."""
    sites = sorted(site_ids)
    n = len(sites)
    if degree is None or degree >= n - 1:
        return {s: [o for o in sites if o != s] for s in sites}
    if degree < 1:
        raise ValueError(f"degree must be >= 1, got {degree}")
    half = (degree + 1) // 2
    if 2 * half >= n - 1:
        return {s: [o for o in sites if o != s] for s in sites}
    order = list(sites)
    random.SystemRandom().shuffle(order)
    graph: dict[str, set[str]] = {s: set() for s in sites}
    for position, site in enumerate(order):
        for step in range(1, half + 1):
            other = order[(position + step) % n]
            graph[site].add(other)
            graph[other].add(site)
    return {s: sorted(graph[s]) for s in sites}


def share_holders(graph: dict[str, list[str]], site_id: str) -> list[str]:
    """Who holds shares of ``site_id``'s secrets: its neighbours and itself, sorted."""
    return sorted([site_id, *graph[site_id]])
