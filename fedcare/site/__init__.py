"""Site side: the agent that runs a trainer and applies the site policy."""

from fedcare.site.agent import SiteAgent
from fedcare.site.chain import build_filters
from fedcare.site.dp_noise import GaussianNoise
from fedcare.site.filters import ClipUpdateNorm, ExcludeVariables, Filter
from fedcare.site.privacy_guard import PrivacyGuard
from fedcare.site.privacy_ledger import PrivacyLedger
from fedcare.site.quantise import HalfPrecision, Int8Update
from fedcare.site.sharing import PercentileSharing, SvtPrivacy
from fedcare.site.statistics_noise import StatisticsNoise

__all__ = ["ClipUpdateNorm", "ExcludeVariables", "Filter", "GaussianNoise", "HalfPrecision",
           "Int8Update", "PercentileSharing", "PrivacyGuard", "PrivacyLedger", "SiteAgent",
           "StatisticsNoise", "SvtPrivacy", "build_filters"]
