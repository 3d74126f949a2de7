"""Review finding: a site's update that left it only inside a secure sum (secure aggregation)
is not sent in the clear when cross-site validation asks for the site's local model."""

import numpy as np

from fedcare.core.message import EvalResult, Task, TaskKind, TrainResult
from fedcare.core.secagg import protocol as p
from fedcare.core.weights import Weights
from fedcare.sim.identity import ThrowawayIdentities
from fedcare.site import SiteAgent
from fedcare.site.dp_noise import GaussianNoise

START = Weights({"w": np.zeros(8, np.float64)})


class Step:
    def train(self, weights, config):
        return TrainResult(Weights({k: v + 0.5 for k, v in weights.items()}), 5, {})

    def evaluate(self, weights, config):
        return EvalResult(5, {})


def test_an_update_that_left_only_masked_is_not_submitted_in_the_clear():
    identity = ThrowawayIdentities(["s"]).identity("s")
    # distributed DP: this site's noise share is sized for a secure sum of 4 sites
    noise = GaussianNoise(clip_norm=1.0, noise_multiplier=1.0, num_sites=4,
                          secure_aggregation=True, rng=np.random.default_rng(0))
    agent = SiteAgent("s", Step(), [noise], keep_local_model=True, identity=identity)
    advertised = agent.handle(Task("j/r1/secagg.train/s", "j", 1, p.TRAIN, START,
                                   config={p.SESSION: "abc"}))
    assert advertised.error is None  # only keys left the site
    submitted = agent.handle(Task("j/r2/submit_model/s", "j", 2, TaskKind.SUBMIT_MODEL))
    assert submitted.result is None, (
        "the site's noised update, which left it only inside a secure sum, was sent alone")


def test_a_local_model_sent_as_int8_is_submitted_as_the_model_it_stands_for():
    from fedcare.core.policy import FilterSpec
    from fedcare.core.validation import incompatibilities
    from fedcare.site import build_filters

    _, outbound = build_filters(None, [FilterSpec(name="int8_update")])
    agent = SiteAgent("s", Step(), outbound, keep_local_model=True)
    trained = agent.handle(Task("j/r1/train/s", "j", 1, TaskKind.TRAIN, START))
    assert trained.error is None and trained.result.weights["w"].dtype == np.int8  # on the wire
    submitted = agent.handle(Task("j/r2/submit_model/s", "j", 2, TaskKind.SUBMIT_MODEL))
    assert submitted.error is None
    # what cross-site validation checks the submitted model against (it would refuse int8)
    assert incompatibilities(START, submitted.result.weights) == []
    np.testing.assert_allclose(submitted.result.weights["w"], 0.5)
