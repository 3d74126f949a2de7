"""Review findings on int8 updates: a job's ``int8_update`` must not get a result past the
site's own filters, and a site's int8 scale must not poison the aggregate."""

import numpy as np

from fedcare.core.int8 import SCALE_PREFIX, dequantise
from fedcare.core.message import EvalResult, Task, TaskKind, TrainResult
from fedcare.core.policy import FilterSpec, SitePolicy
from fedcare.core.weights import Weights
from fedcare.site import SiteAgent, build_filters

START = Weights({"w": np.zeros(8, np.float32), "v": np.zeros(4, np.float64)})


class BigStep:
    """Moves every parameter by 10: an update of L2 norm about 35."""

    def train(self, weights, config):
        return TrainResult(Weights({k: v + 10 for k, v in weights.items()}), 5, {})

    def evaluate(self, weights, config):
        return EvalResult(5, {})


def test_a_jobs_int8_update_does_not_skip_the_sites_clipping():
    # the site's own policy clips every update to norm 1; the job asks for int8_update first
    policy = SitePolicy.model_validate({"outbound": [{"clip_update_norm": {"max_norm": 1.0}}]})
    _, outbound = build_filters(policy, [FilterSpec(name="int8_update")])
    agent = SiteAgent("s", BigStep(), outbound)
    reply = agent.handle(Task("j/r1/train/s", "j", 1, TaskKind.TRAIN, START))
    assert reply.error is None
    got = reply.result.weights
    # what the server rebuilds (it dequantises whatever carries scales)
    rebuilt = dequantise(got, START) if any(k.startswith(SCALE_PREFIX) for k in got) else got
    norm = np.sqrt(sum(float(np.sum((np.asarray(rebuilt[k], np.float64) - START[k]) ** 2))
                       for k in START))
    assert norm <= 1.0 + 1e-5, f"update of norm {norm:.3g} left a site that clips to 1"
