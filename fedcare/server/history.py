"""Per-round records of a run, written as CSV and JSON after every round."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedcare.core.workflow import SiteFailure, SiteMetrics

__all__ = ["History", "RoundRecord", "SiteEval", "SiteFailure", "SiteMetrics",
           "record_from_dict"]

#: One site's evaluation in a round (its name from before training results had one too).
SiteEval = SiteMetrics


@dataclass(frozen=True)
class RoundRecord:
    """What happened in one round. Round 0 evaluates the initial model (no training).

    ``eval_metrics`` are sample-weighted over the sites' held-out data; ``train_metrics`` are
    sample-weighted over the sites that trained, plus the strategy's own numbers for the round
    (:meth:`~fedcare.core.strategy.Strategy.round_metrics`, e.g. ``dp_fedavg_epsilon``);
    ``site_train`` holds what each of those sites reported itself (empty in records written
    before it was kept).
    """

    round_num: int
    trained_sites: list[str]
    train_metrics: dict[str, float]
    eval_metrics: dict[str, float]
    site_eval: dict[str, SiteEval]
    failures: list[SiteFailure] = field(default_factory=list)
    duration_s: float = 0.0
    site_train: dict[str, SiteMetrics] = field(default_factory=dict)


def record_from_dict(data: dict[str, object]) -> RoundRecord:
    """Inverse of ``dataclasses.asdict`` for a RoundRecord (reading the server's store)."""
    d: dict[str, Any] = dict(data)
    d["site_eval"] = {k: SiteMetrics(**v) for k, v in d["site_eval"].items()}
    d["site_train"] = {k: SiteMetrics(**v) for k, v in d.get("site_train", {}).items()}
    d["failures"] = [SiteFailure(**f) for f in d["failures"]]
    return RoundRecord(**d)


class History:
    """All round records of a run, in order."""

    def __init__(self) -> None:
        self.rounds: list[RoundRecord] = []

    def append(self, record: RoundRecord) -> None:
        self.rounds.append(record)

    def metric(self, name: str, *, site_id: str | None = None) -> list[tuple[int, float]]:
        """(round, value) pairs of one evaluation metric, global or for one site."""
        out = []
        for r in self.rounds:
            source = r.site_eval[site_id].metrics if site_id in r.site_eval else (
                r.eval_metrics if site_id is None else {})
            if name in source:
                out.append((r.round_num, source[name]))
        return out

    def rows(self) -> list[dict[str, object]]:
        """One flat row per round: train_*, eval_*, eval_<metric>@<site>, then
        train_<metric>@<site> columns."""
        rows = []
        for r in self.rounds:
            row: dict[str, object] = {
                "round": r.round_num,
                "sites_trained": len(r.trained_sites),
                "failures": len(r.failures),
                "duration_s": round(r.duration_s, 4),
            }
            row.update({f"train_{k}": v for k, v in r.train_metrics.items()})
            row.update({f"eval_{k}": v for k, v in r.eval_metrics.items()})
            for site_id, ev in r.site_eval.items():
                row.update({f"eval_{k}@{site_id}": v for k, v in ev.metrics.items()})
            for site_id, tr in r.site_train.items():
                row.update({f"train_{k}@{site_id}": v for k, v in tr.metrics.items()})
            rows.append(row)
        return rows

    def write(self, directory: Path) -> tuple[Path, Path]:
        """Write ``metrics.csv`` and ``metrics.json`` into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        rows = self.rows()
        columns: list[str] = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
        csv_path = directory / "metrics.csv"
        with open(csv_path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        json_path = directory / "metrics.json"
        json_path.write_text(json.dumps([asdict(r) for r in self.rounds], indent=1))
        return csv_path, json_path
