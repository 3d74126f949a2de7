"""Secure aggregation (Bonawitz et al., CCS 2017; SecAgg+, Bell et al., CCS 2020): the parts the
server and the sites share. The server learns the sum of the sites' updates and nothing else
about any one of them, even when some sites drop out after they masked theirs.

:mod:`~fedcare.core.secagg.protocol` describes the round; the site half is
:mod:`fedcare.site.secagg`, the server half :mod:`fedcare.server.workflows.secure`.

Threat model: an honest-but-curious server (it runs the protocol as written but looks at
everything it receives) and up to ``t - 1`` sites colluding with it learn nothing beyond the
sum of at least ``t`` sites. Public keys reach the other sites through the server, signed by
the sending site's certificate (:mod:`fedcare.core.advert`, :mod:`fedcare.core.identity`), so a
server that substitutes them is refused; a server that otherwise deviates (telling sites
different survivor and dropped lists) is out of scope.
"""

from fedcare.core.secagg.fixedpoint import FixedPoint
from fedcare.core.secagg.graph import neighbours, share_holders
from fedcare.core.secagg.masks import add_masks, pair_seed, remove_masks
from fedcare.core.secagg.shamir import combine, split

__all__ = ["FixedPoint", "add_masks", "combine", "neighbours", "pair_seed", "remove_masks",
           "share_holders", "split"]
