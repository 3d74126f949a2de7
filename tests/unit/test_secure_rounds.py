"""Secure aggregation in the simulator: FedAvg's model within the fixed-point bound, with sites
dropping out before or after masking, what the server sees of one site, and the refusals."""

import numpy as np
import pytest
import toyjob

from fedcare import AggregationError, ConfigError, FedAvg, Job, simulate
from fedcare.algorithms import Krum
from fedcare.algorithms.secagg import MaskedSumAggregator
from fedcare.core.secagg.fixedpoint import FixedPoint
from fedcare.server.workflows import SecureAggregation

INITIAL = toyjob.secure_initial()


def _close_to_fedavg(weights, indices, num_sites, included_weight):
    """The secure model is plain FedAvg of ``indices`` within the fixed-point bound (plus one
    float32 rounding)."""
    expected = toyjob.secure_fedavg(indices, INITIAL)
    bound = FixedPoint(1.0, num_sites).error_bound(len(indices), included_weight)
    for name, value in expected.items():
        got = np.asarray(weights[name], np.float64)
        slack = bound + np.spacing(np.abs(value).astype(np.float32)).astype(np.float64)
        assert (np.abs(got - value) <= slack).all(), name


def _weight(indices, num_sites):
    return sum(10 * (i + 1) for i in indices) / sum(10 * (i + 1) for i in range(num_sites))


@pytest.mark.parametrize("neighbours", [None, 2])
def test_a_secure_round_gives_fedavgs_model_within_the_bound(neighbours):
    result = simulate(toyjob.make_secure_job(num_sites=5, neighbours=neighbours, threshold=3))
    assert result.summary == "finished with 5 of 5 sites"
    _close_to_fedavg(result.weights, range(5), 5, 1.0)
    plain = simulate(Job(name="plain", initial_weights=toyjob.secure_initial,
                         trainer=lambda c: toyjob.SecureToyTrainer(c.site_index),
                         strategy=FedAvg(), num_rounds=1, evaluate_every=0,
                         site_ids=tuple(f"site-{i}" for i in range(5))))
    bound = FixedPoint(1.0, 5).error_bound(5, 1.0)
    for name in INITIAL:
        diff = np.abs(np.asarray(result.weights[name], np.float64) - plain.weights[name])
        assert diff.max() <= bound + 2 * np.spacing(np.float32(4))


def test_a_site_that_drops_after_masking_stays_in_the_sum():
    # site-1 sent its masked update, then went away: its self mask is rebuilt from shares
    result = simulate(toyjob.make_secure_job(num_sites=5, threshold=3,
                                             modes={"site-1": "fail_at_unmask"}))
    _close_to_fedavg(result.weights, range(5), 5, 1.0)
    assert [f.kind for f in result.failures] == ["secagg.unmask"]


def test_sites_that_drop_before_masking_are_left_out_and_their_masks_removed():
    # site-2 and site-4 shared their keys (their neighbours masked with them), then never sent
    # a masked update: their masking keys are rebuilt and their pair masks taken out
    result = simulate(toyjob.make_secure_job(
        num_sites=5, threshold=3, modes={"site-2": "fail_at_masked", "site-4": "fail_at_masked"}))
    kept = [0, 1, 3]
    _close_to_fedavg(result.weights, kept, 5, _weight(kept, 5))
    assert sorted(f.site_id for f in result.failures) == ["site-2", "site-4"]
    assert result.history.rounds[-1].trained_sites == ["site-0", "site-1", "site-3"]


def test_one_dropping_before_and_one_after_masking_with_secagg_plus():
    result = simulate(toyjob.make_secure_job(
        num_sites=7, threshold=3, neighbours=4,
        modes={"site-2": "fail_at_masked", "site-5": "fail_at_unmask"}))
    kept = [0, 1, 3, 4, 5, 6]
    _close_to_fedavg(result.weights, kept, 7, _weight(kept, 7))


def test_fewer_than_t_survivors_fail_the_round_keeping_the_model():
    with pytest.raises(AggregationError, match=r"fewer than the threshold t=4"):
        simulate(toyjob.make_secure_job(
            num_sites=4, threshold=4, modes={"site-0": "fail_at_masked"}))


def test_what_the_server_receives_of_a_site_looks_uniform_and_never_equals_its_update(
        monkeypatch):
    seen = {}
    original = MaskedSumAggregator.add

    def spy(self, site_id, result):
        seen[site_id] = {k: np.array(v) for k, v in result.weights.items()}
        original(self, site_id, result)

    monkeypatch.setattr(MaskedSumAggregator, "add", spy)
    simulate(toyjob.make_secure_job(num_sites=3, num_values=50_000))
    assert sorted(seen) == ["site-0", "site-1", "site-2"]
    initial = toyjob.secure_initial(50_000)
    encoding = FixedPoint(1.0, 3)
    for index, site in enumerate(sorted(seen)):
        update = toyjob.secure_update(index, initial)
        weight = 10 * (index + 1) / 60
        for name, masked in seen[site].items():
            plain = np.empty(masked.size, np.uint32)
            encoding.encode(update[name] - initial[name].astype(np.float64), weight, plain)
            # differs everywhere (a coincidence has probability 2**-32 per element)
            assert (masked.reshape(-1) != plain).all()
        values = np.concatenate([m.reshape(-1) for m in seen[site].values()])
        # uniform mod 2**32: the top byte's 256 buckets pass a chi-square test (p ~ 1e-6
        # critical value ~ 370 for 255 degrees of freedom), the update's own encoding fails it
        assert _chi_square(values) < 370
        encoded = np.concatenate([_encoded(encoding, update[n], initial[n], weight)
                                  for n in initial])
        assert _chi_square(encoded) > 10_000
        assert abs(values.astype(np.float64).mean() / 2**32 - 0.5) < 0.01


def _encoded(encoding, update, start, weight):
    out = np.empty(np.size(update), np.uint32)
    encoding.encode(update - start.astype(np.float64), weight, out)
    return out


def _chi_square(values):
    counts = np.bincount((values >> np.uint32(24)).astype(np.int64), minlength=256)
    expected = values.size / 256
    return float(((counts - expected) ** 2 / expected).sum())


def test_misconfiguration_is_refused_in_one_line_before_any_site_is_asked():
    with pytest.raises(ConfigError, match=r"threshold t=5 exceeds the job's 4 sites$"):
        toyjob.make_secure_job(num_sites=4, threshold=5)
    with pytest.raises(ConfigError, match="threshold must be an integer >= 2"):
        SecureAggregation(threshold=1)
    with pytest.raises(ConfigError, match="clip must be a number > 0"):
        SecureAggregation(clip=0.0)
    with pytest.raises(ConfigError, match="exceeds the 3 share holders"):
        SecureAggregation(threshold=4, neighbours=2)
    with pytest.raises(ConfigError, match="Krum aggregates otherwise"):
        Job(name="k", initial_weights=toyjob.secure_initial, trainer=toyjob.trainer_for,
            strategy=Krum(num_byzantine=0), num_rounds=1, workflows=(SecureAggregation(),))
    with pytest.raises(AggregationError, match="threshold t=3 exceeds the 2 sites of the round"):
        SecureAggregation(threshold=3).threshold_for(2)


def test_a_secure_or_homomorphic_job_declares_the_task_kinds_it_sends():
    """A site whose privacy policy lists task kinds judges such a job before reading data."""
    import toyjob

    from fedcare.core import he_protocol
    from fedcare.core.secagg import protocol

    assert set(protocol.KINDS) <= toyjob.make_secure_job().task_kinds
    assert "train" not in toyjob.make_secure_job().task_kinds
    assert set(he_protocol.KINDS) <= toyjob.make_he_job().task_kinds
