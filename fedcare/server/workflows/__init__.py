"""The built-in round workflows; a job lists its own in ``Job.workflows``.

See :mod:`fedcare.core.workflow` for the interface a new workflow implements.
"""

from fedcare.core.job import Job
from fedcare.core.workflow import Workflow
from fedcare.server.workflows.homomorphic import HomomorphicAggregation
from fedcare.server.workflows.secure import SecureAggregation
from fedcare.server.workflows.statistics import FederatedStatistics
from fedcare.server.workflows.training import TrainRounds
from fedcare.server.workflows.validation import CrossSiteValidation


def default_workflows(job: Job) -> tuple[Workflow, ...]:
    """What a job without ``workflows`` runs: its statistics, if any, then its training."""
    if job.statistics is not None:
        return (FederatedStatistics(job.statistics), TrainRounds())
    return (TrainRounds(),)


__all__ = ["CrossSiteValidation", "FederatedStatistics", "HomomorphicAggregation",
           "SecureAggregation", "TrainRounds",
           "default_workflows"]
