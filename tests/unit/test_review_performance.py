"""Review finding: the confusion counts a site sends for a logistic model's performance hold
cells below the site's ``min_rows``: coefficients the server picks isolate one patient and
read off its outcome."""

import numpy as np

from fedcare.analytics.table import SiteTable
from fedcare.core.message import Task, TaskKind
from fedcare.core.privacy_policy import PrivacyPolicy
from fedcare.core.weights import Weights
from fedcare.jobs.clinical import ClinicalSite
from fedcare.site.agent import SiteAgent
from fedcare.site.privacy_guard import PrivacyGuard
from fedcare.site.privacy_ledger import PrivacyLedger


def test_no_confusion_count_below_min_rows_leaves_the_site():
    age = np.arange(50.0, 70.0)  # the oldest patient, 69, is the only one over 68.5
    outcome = np.zeros(20)
    outcome[-1] = 1.0  # the fact the server is after
    table = SiteTable("s", {"age": age, "died": outcome})
    guard = PrivacyGuard(PrivacyPolicy(min_rows=5), PrivacyLedger(None))
    agent = SiteAgent("s", ClinicalSite(table), privacy=guard)
    # p >= 0.5 exactly when age > 68.5: one patient predicted positive
    model = Weights({"beta": np.array([-68.5 * 10, 10.0])})
    config = {"name": "regression_performance", "covariates": "age", "outcome": "died"}
    reply = agent.handle(Task("t", "j", 0, TaskKind.STATISTICS, model, config=config))
    assert reply.error is None, reply.error
    confusion = reply.result.values["confusion"]
    small = (confusion > 0) & (confusion < 5)
    assert not small.any(), f"confusion counts {confusion.tolist()} left a min_rows 5 site"
