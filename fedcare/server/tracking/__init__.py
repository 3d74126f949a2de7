"""Experiment tracking: each recorded round's metrics to TensorBoard event files and MLflow.

:class:`Tracker` is a run listener: give it to a run (the simulator's ``tracking=``, a server
kit's ``tracking:`` section) and it writes what the server already sees, per round: the
aggregated metrics, the round's time and failures, and each site's reported training and
evaluation metrics with its sample counts. TensorBoard and MLflow are imported only when a
backend is opened, from :mod:`.tensorboard` and :mod:`.mlflow`.
"""

from fedcare.server.tracking.scalar import Scalar, round_scalars
from fedcare.server.tracking.tracker import Backend, Tracker

__all__ = ["Backend", "Scalar", "Tracker", "round_scalars"]
