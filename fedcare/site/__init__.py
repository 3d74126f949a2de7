"""Site side: the agent that runs a trainer and applies the site policy."""

from fedcare.site.agent import Filter, SiteAgent

__all__ = ["Filter", "SiteAgent"]
