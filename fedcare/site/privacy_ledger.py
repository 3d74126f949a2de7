"""A site's privacy ledger: every epsilon it spent, per job, round and mechanism, in its kit.

One row per use of a mechanism (a :class:`~fedcare.core.privacy.PrivacySpend`), written and
committed (SQLite, WAL, ``synchronous=FULL``) *before* the result that spent it leaves the
site: a site that crashes right after may have charged for an update the server never got,
never the other way round. Rows are hash-chained like the upload ledger (:mod:`fedcare.core.
chain`), so an edited, deleted or reordered row is found. Totals add epsilons up (basic
sequential composition): the bound that holds whatever accountant each mechanism used.
``fedcare site privacy KIT`` prints it with the total against the site's budget.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedcare.core.chain import Link, find_breaks, link_hash, open_chain, read_rows, utc_now
from fedcare.core.errors import PrivacyError
from fedcare.core.privacy import PrivacySpend
from fedcare.core.text import one_line

#: The ledger's file in the site's kit.
PRIVACY_LEDGER_FILE = "privacy.db"
SCHEMA = """
CREATE TABLE IF NOT EXISTS spends (
    seq INTEGER PRIMARY KEY,
    time TEXT NOT NULL,            -- ISO 8601 UTC, when it was charged (before the result left)
    job_id TEXT NOT NULL,
    round_num INTEGER NOT NULL,
    task_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    mechanism TEXT NOT NULL,
    epsilon REAL NOT NULL,
    delta REAL NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
"""
_COLUMNS = "seq, time, job_id, round_num, task_id, kind, mechanism, epsilon, delta, prev_hash, hash"
#: Slack for float sums: a budget of 1.0 spent as 10 x 0.1 is spent, not exceeded.
_SLACK = 1e-9


@dataclass(frozen=True)
class Spend:
    """One row of the ledger."""

    seq: int
    time: str
    job_id: str
    round_num: int
    task_id: str
    kind: str
    mechanism: str
    epsilon: float
    delta: float
    prev_hash: str
    hash: str

    def link(self) -> Link:
        # floats are hashed as their repr: exact, and the same in every Python
        return Link(self.seq, (self.time, self.job_id, self.round_num, self.task_id, self.kind,
                               self.mechanism, repr(self.epsilon), repr(self.delta)),
                    self.prev_hash, self.hash)


class PrivacyLedger:
    """The ledger at ``path`` (None: in memory, for a simulation that keeps no files).

    One process writes it (a site kit is locked by its process); several threads may charge.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._db, self._seq, self._hash = open_chain(
            path if path is not None else Path(":memory:"), SCHEMA, "spends", "privacy ledger")
        self._lock = threading.Lock()
        rows = self._db.execute("SELECT job_id, SUM(epsilon) FROM spends GROUP BY job_id")
        self._by_job: dict[str, float] = {str(j): float(e) for j, e in rows}
        self._total = sum(self._by_job.values())

    @property
    def total_epsilon(self) -> float:
        return self._total

    def job_epsilon(self, job_id: str) -> float:
        return self._by_job.get(job_id, 0.0)

    def charge(self, job_id: str, round_num: int, task_id: str, kind: str,
               spends: Sequence[PrivacySpend], *, budget: float | None = None,
               job_cap: float | None = None) -> None:
        """Record ``spends`` for one task, committed to disk before this returns.

        Raises:
            PrivacyError: the site's ``budget`` or the job's ``job_cap`` would be exceeded;
                nothing is recorded, and the result must not leave.
        """
        if not spends:
            return
        epsilon = sum(s.epsilon for s in spends)
        with self._lock:
            if budget is not None and self._total + epsilon > budget + _SLACK:
                raise PrivacyError(
                    f"refused: it would spend epsilon {epsilon:.4g}, and this site has "
                    f"{max(budget - self._total, 0.0):.4g} of its privacy budget "
                    f"(budget_epsilon {budget:g}, spent {self._total:.4g}) left",
                    job_id=job_id, round_num=round_num)
            spent_here = self.job_epsilon(job_id)
            if job_cap is not None and spent_here + epsilon > job_cap + _SLACK:
                raise PrivacyError(
                    f"refused: it would spend epsilon {epsilon:.4g}, taking this job to "
                    f"{spent_here + epsilon:.4g}, over this site's max_job_epsilon {job_cap:g}",
                    job_id=job_id, round_num=round_num)
            stamp, seq, prev = utc_now(), self._seq, self._hash
            rows = []
            for spend in spends:
                seq += 1
                row = Spend(seq, stamp, one_line(job_id, 1024), int(round_num),
                            one_line(task_id, 1024), one_line(kind, 64),
                            one_line(spend.mechanism, 500), float(spend.epsilon),
                            float(spend.delta), prev, "")
                digest = link_hash(seq, row.link().fields, prev)
                rows.append((seq, row.time, row.job_id, row.round_num, row.task_id, row.kind,
                             row.mechanism, row.epsilon, row.delta, prev, digest))
                prev = digest
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    f"INSERT INTO spends ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise PrivacyError(f"cannot write the privacy ledger {self.path}: {exc}; "
                                   "nothing leaves", job_id=job_id,
                                   round_num=round_num) from None
            self._seq, self._hash = seq, prev
            self._by_job[job_id] = spent_here + epsilon
            self._total += epsilon

    def close(self) -> None:
        self._db.close()


def read_spends(path: Path) -> list[Spend]:
    """Every row of the ledger at ``path``, in order, opened read-only.

    Raises:
        ConfigError: no ledger there, or not one.
    """
    return [Spend(*row) for row in read_rows(  # type: ignore[arg-type]
        path, "spends", _COLUMNS, "privacy ledger", "this site has spent nothing yet")]


def verify_spends(spends: Sequence[Spend]) -> list[str]:
    """Problems in the ledger (a row edited, deleted or reordered); empty if intact."""
    return find_breaks([s.link() for s in spends])
