"""Distributed DP: every site adds its share of Gaussian noise and secure aggregation sums the
updates, so neither the server nor any site sees an un-noised sum (issue 12, items 3 and 5).

A site whose ``gaussian_noise`` filter is set with ``secure_aggregation: true`` takes part only
where its epsilon holds: secure rounds with uniform weights and a threshold of at least the
filter's ``num_sites``; anything that would send its update in the clear is refused."""

import math

import numpy as np
import pytest
import toyjob

from fedcare import AggregationError, FedAvg, Job, simulate
from fedcare.core.dp import DEFAULT_DELTA, GaussianAccountant
from fedcare.core.policy import SitePolicy

NOISE = {"clip_norm": 1.0, "noise_multiplier": 1.0, "num_sites": 3, "secure_aggregation": True}
POLICY = SitePolicy.model_validate({"outbound": [{"gaussian_noise": NOISE}]})


def _clipped_mean(num_sites, initial, clip_norm):
    """The mean of the sites' updates, each clipped to L2 norm ``clip_norm`` (no noise)."""
    total = {k: np.zeros(np.shape(v)) for k, v in initial.items()}
    for i in range(num_sites):
        update = {k: v.astype(np.float64) - np.asarray(initial[k], np.float64)
                  for k, v in toyjob.secure_update(i, initial).items()}
        norm = math.sqrt(sum(float(np.vdot(d, d)) for d in update.values()))
        for k in total:
            total[k] += update[k] * min(1.0, clip_norm / norm) / num_sites
    return total


def test_noise_added_at_the_sites_survives_secure_aggregation_at_the_accounted_level():
    job = toyjob.make_secure_job(num_sites=4, threshold=3, clip=10.0, weighting="uniform")
    result = simulate(job, site_policy=POLICY)
    assert result.summary == "finished with 4 of 4 sites"
    initial = toyjob.secure_initial()
    mean = _clipped_mean(4, initial, NOISE["clip_norm"])
    residual = np.concatenate([(np.asarray(result.weights[k], np.float64)
                                - np.asarray(initial[k], np.float64) - mean[k]).ravel()
                               for k in initial])
    # four sites, each noise of std z C / sqrt(3), weighted 1/4: std z C * 2 / (4 sqrt(3))
    expected = NOISE["noise_multiplier"] * NOISE["clip_norm"] / (2 * math.sqrt(3))
    assert residual.std() == pytest.approx(expected, rel=0.04)
    assert abs(residual.mean()) < 4 * expected / math.sqrt(residual.size)
    # every site reports the epsilon of multiplier z on the sum (one release; the round's
    # train metrics are the sample-weighted mean of four equal numbers)
    accountant = GaussianAccountant(1.0, DEFAULT_DELTA)
    accountant.spend()
    reported = result.history.rounds[-1].train_metrics["gaussian_noise_epsilon"]
    assert reported == pytest.approx(accountant.epsilon())
    alone = GaussianAccountant(1.0 / math.sqrt(3), DEFAULT_DELTA)  # what the clear path gets
    alone.spend()
    assert alone.epsilon() > 1.8 * reported


def test_a_job_that_sends_updates_in_the_clear_is_refused_before_the_site_trains():
    job = Job(name="plain", initial_weights=toyjob.secure_initial,
              trainer=lambda c: toyjob.SecureToyTrainer(c.site_index), strategy=FedAvg(),
              num_rounds=1, evaluate_every=0, site_ids=tuple(f"site-{i}" for i in range(3)))
    with pytest.raises(AggregationError) as info:
        simulate(job, site_policy=POLICY)
    assert "distributed-DP noise" in str(info.value) and "'train' task" in str(info.value)


@pytest.mark.parametrize(("threshold", "weighting", "message"), [
    (3, "samples", "holds only with uniform weights"),
    (2, "uniform", "threshold t=2 lets the server sum 2 sites"),
])
def test_a_secure_round_that_would_dilute_the_noise_is_refused(threshold, weighting, message):
    job = toyjob.make_secure_job(num_sites=4, threshold=threshold, clip=10.0,
                                 weighting=weighting)
    with pytest.raises(AggregationError) as info:
        simulate(job, site_policy=POLICY)
    assert message in str(info.value)


def test_a_site_with_a_privacy_guard_refuses_such_a_job_when_it_arrives():
    from fedcare.core.privacy_policy import PrivacyPolicy
    from fedcare.site import PrivacyGuard, PrivacyLedger, build_filters

    _, outbound = build_filters(POLICY)
    guard = PrivacyGuard(PrivacyPolicy(), PrivacyLedger(None))
    plain = Job(name="plain", initial_weights=toyjob.secure_initial,
                trainer=lambda c: toyjob.SecureToyTrainer(c.site_index), strategy=FedAvg(),
                num_rounds=1, site_ids=("site-0", "site-1"))
    assert "'train' task would send its update" in guard.refuses_job(plain, outbound)
    secure = toyjob.make_secure_job(num_sites=4, threshold=3, weighting="uniform")
    assert guard.refuses_job(secure, outbound) is None
