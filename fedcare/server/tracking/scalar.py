"""What is tracked of a round: the numbers its record holds, as (run, tag, step, value).

One round record gives the server's run (what it aggregated: sample-weighted means, round
time, how many sites trained or failed) and one run per site (what that site reported of its
own training and evaluation, with its sample counts). Tags are the same in every run
(``train/loss``, ``eval/accuracy``, ``train/num_samples``), so a dashboard draws the sites and
the federation's mean in one chart. The step is the round (0: the initial model's evaluation).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fedcare.server.history import RoundRecord, SiteMetrics


@dataclass(frozen=True)
class Scalar:
    """One number of one round; ``site_id`` None for the server's own (aggregated) numbers."""

    site_id: str | None
    tag: str
    step: int
    value: float


def round_scalars(record: RoundRecord) -> list[Scalar]:
    """Every number of ``record``: the server's first, then each site's, sites sorted."""
    step = record.round_num
    out = [Scalar(None, f"train/{k}", step, float(v)) for k, v in record.train_metrics.items()]
    out += [Scalar(None, f"eval/{k}", step, float(v)) for k, v in record.eval_metrics.items()]
    if record.site_train:
        out.append(Scalar(None, "train/num_samples", step,
                          float(sum(s.num_samples for s in record.site_train.values()))))
    if record.site_eval:
        out.append(Scalar(None, "eval/num_samples", step,
                          float(sum(s.num_samples for s in record.site_eval.values()))))
    out += [Scalar(None, "round/duration_s", step, record.duration_s),
            Scalar(None, "round/sites_trained", step, float(len(record.trained_sites))),
            Scalar(None, "round/failures", step, float(len(record.failures)))]
    for site_id in sorted({*record.site_train, *record.site_eval}):
        out += _site(site_id, "train", step, record.site_train)
        out += _site(site_id, "eval", step, record.site_eval)
    return out


def _site(site_id: str, kind: str, step: int, results: Mapping[str, SiteMetrics]
          ) -> list[Scalar]:
    result = results.get(site_id)
    if result is None:
        return []
    out = [Scalar(site_id, f"{kind}/{k}", step, float(v)) for k, v in result.metrics.items()]
    out.append(Scalar(site_id, f"{kind}/num_samples", step, float(result.num_samples)))
    return out
