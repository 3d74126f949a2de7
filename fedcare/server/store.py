"""The server's durable state in SQLite: jobs, round records, and an audit trail.

Every state change is one committed transaction, so a server killed at any moment restarts
with a consistent view: a job marked ``running`` resumes from its last completed round.
Opening checks the whole database (``PRAGMA integrity_check``) and refuses a damaged one;
any later SQLite error (a full disk, a bad page) is raised as a :class:`StorageError`
naming the database, for the caller to fail the one job it concerns. The audit trail is a
signed hash chain of its own (:mod:`fedcare.server.audit`, ``audit.db`` beside the store);
the unchained ``events`` table of earlier versions is moved into it once.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fedcare.core.errors import StorageError
from fedcare.core.text import one_line
from fedcare.server.audit import AUDIT_FILE, AuditLog, Entry

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    entry_point TEXT NOT NULL,
    params_json TEXT NOT NULL,
    status TEXT NOT NULL,          -- queued | running | finished | failed | aborted
    submitted_by TEXT NOT NULL,
    created_s REAL NOT NULL,
    updated_s REAL NOT NULL,
    round_num INTEGER NOT NULL DEFAULT 0,
    num_rounds INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
CREATE TABLE IF NOT EXISTS rounds (
    job_id TEXT NOT NULL,
    round_num INTEGER NOT NULL,
    record_json TEXT NOT NULL,
    PRIMARY KEY (job_id, round_num)
);
CREATE TABLE IF NOT EXISTS failures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    round_num INTEGER NOT NULL,
    site_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    time_s REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS failures_by_job ON failures (job_id, id);
"""

ACTIVE = ("queued", "running")
#: Longest failure message kept (a site's error text is bounded before it is stored).
MAX_MESSAGE_CHARS = 2000


@dataclass(frozen=True)
class JobRow:
    job_id: str
    entry_point: str
    params: dict[str, object]
    status: str
    submitted_by: str
    created_s: float
    round_num: int
    num_rounds: int
    error: str | None
    #: One line for people: "finished with 3 of 4 sites", "waiting for sites [...]", ...
    summary: str | None = None
    #: The id of the signed job package the job runs; None for an installed entry point.
    package: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"job_id": self.job_id, "entry_point": self.entry_point, "params": self.params,
                "status": self.status, "submitted_by": self.submitted_by,
                "created_s": self.created_s, "round_num": self.round_num,
                "num_rounds": self.num_rounds, "error": self.error, "summary": self.summary,
                "package": self.package}


class Store:
    """Thread-safe access to the server's SQLite database."""

    def __init__(self, path: Path, audit_log: AuditLog | None = None) -> None:
        """``audit_log``: where :meth:`audit` appends (default: an unsigned one beside)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            _check_integrity(self._db, path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
            if "summary" not in columns:  # a database written by an earlier version
                self._db.execute("ALTER TABLE jobs ADD COLUMN summary TEXT")
            if "package" not in columns:  # the signed package a job runs, by id
                self._db.execute("ALTER TABLE jobs ADD COLUMN package TEXT")
        except sqlite3.Error as exc:
            self._db.close()
            raise StorageError(f"cannot open the server database {path}: {exc}") from exc
        except BaseException:
            self._db.close()
            raise
        self._lock = threading.Lock()
        self.audit_log = audit_log or AuditLog(path.with_name(AUDIT_FILE))
        self._move_events()

    def _move_events(self) -> None:
        """Chain the rows of an earlier version's ``events`` table, then drop it."""
        if not self._db.execute("SELECT name FROM sqlite_master WHERE name = 'events'"
                                ).fetchone():
            return
        rows = self._db.execute("SELECT time_s, actor, action, detail FROM events ORDER BY id"
                                ).fetchall()
        if rows and self.audit_log.empty:
            self.audit_log.import_rows(rows)
        self._db.execute("DROP TABLE events")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        """The connection, to this thread alone; SQLite's errors become StorageErrors."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise StorageError(f"server database {self.path}: {exc}") from exc

    def _write(self, sql: str, args: tuple[object, ...],
               *more: tuple[str, tuple[object, ...]]) -> None:
        """Run the statements as one transaction: all of them happen, or none."""
        with self._locked():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement, values in ((sql, args), *more):
                    self._db.execute(statement, values)
                self._db.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back already (an I/O error), or fail again: the
                # first error is the one to report
                with contextlib.suppress(sqlite3.Error):
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                raise

    def audit(self, actor: str, action: str, detail: str = "", role: str | None = None) -> None:
        """Append to the audit chain; ``role`` defaults to ``server`` for the server itself."""
        self.audit_log.append(actor, role if role is not None else
                              ("server" if actor == "server" else ""), action, detail)

    def add_job(self, entry_point: str, params: dict[str, object], submitted_by: str,
                num_rounds: int, package: str | None = None) -> str:
        job_id = "job-" + uuid.uuid4().hex[:10]
        now = time.time()
        self._write(
            "INSERT INTO jobs (job_id, entry_point, params_json, status, submitted_by, "
            "created_s, updated_s, num_rounds, package) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
            (job_id, entry_point, json.dumps(params), submitted_by, now, now, num_rounds,
             package))
        return job_id

    def set_status(self, job_id: str, status: str, error: str | None = None,
                   summary: str | None = None) -> None:
        self._write("UPDATE jobs SET status = ?, error = ?, summary = ?, updated_s = ? "
                    "WHERE job_id = ?", (status, error, summary, time.time(), job_id))
        if status != "running":  # a job's start is audited as start or resume
            self.audit("server", status, f"{job_id}: {error or summary or status}")

    def set_summary(self, job_id: str, summary: str | None) -> None:
        self._write("UPDATE jobs SET summary = ?, updated_s = ? WHERE job_id = ?",
                    (summary, time.time(), job_id))

    def add_failure(self, job_id: str, round_num: int, site_id: str, kind: str,
                    message: str) -> None:
        """Keep one site failure of a job (its message made one bounded line)."""
        line = one_line(message, MAX_MESSAGE_CHARS)
        self._write("INSERT INTO failures (job_id, round_num, site_id, kind, message, time_s) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (job_id, round_num, site_id, kind, line, time.time()))

    def failures(self, job_id: str, after_id: int = 0) -> list[dict[str, object]]:
        """A job's site failures in order, those after the failure ``after_id`` only."""
        with self._locked():
            rows = self._db.execute(
                "SELECT id, round_num, site_id, kind, message, time_s FROM failures "
                "WHERE job_id = ? AND id > ? ORDER BY id", (job_id, after_id)).fetchall()
        return [{"id": r[0], "round_num": r[1], "site_id": r[2], "kind": r[3],
                 "message": r[4], "time_s": r[5]} for r in rows]

    def failed_sites(self, job_id: str) -> dict[str, dict[str, object]]:
        """Per failing site of a job: how many failures, and the last one."""
        with self._locked():
            rows = self._db.execute(
                "SELECT site_id, COUNT(*), MAX(id) FROM failures WHERE job_id = ? "
                "GROUP BY site_id ORDER BY site_id", (job_id,)).fetchall()
            out = {}
            for site_id, count, last_id in rows:
                round_num, kind, message = self._db.execute(
                    "SELECT round_num, kind, message FROM failures WHERE id = ?",
                    (last_id,)).fetchone()
                out[site_id] = {"count": count, "round_num": round_num, "kind": kind,
                                "message": message}
        return out

    def add_round(self, job_id: str, round_num: int, record: dict[str, object]) -> None:
        self._write("INSERT OR REPLACE INTO rounds (job_id, round_num, record_json) "
                    "VALUES (?, ?, ?)", (job_id, round_num, json.dumps(record)),
                    ("UPDATE jobs SET round_num = ?, updated_s = ? WHERE job_id = ?",
                     (round_num, time.time(), job_id)))

    def discard_rounds_after(self, job_id: str, round_num: int) -> None:
        """Forget a job's round records after ``round_num`` (-1: all of them): it resumes
        from that round's checkpoint and runs the later rounds again."""
        self._write("DELETE FROM rounds WHERE job_id = ? AND round_num > ?", (job_id, round_num),
                    ("UPDATE jobs SET round_num = ?, updated_s = ? WHERE job_id = ?",
                     (max(round_num, 0), time.time(), job_id)))

    def rounds(self, job_id: str) -> list[dict[str, object]]:
        with self._locked():
            rows = self._db.execute(
                "SELECT record_json FROM rounds WHERE job_id = ? ORDER BY round_num",
                (job_id,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def job(self, job_id: str) -> JobRow | None:
        rows = self._jobs("WHERE job_id = ?", (job_id,))
        return rows[0] if rows else None

    def jobs(self) -> list[JobRow]:
        return self._jobs("ORDER BY created_s", ())

    def next_job(self) -> JobRow | None:
        """A running job (to resume after a restart) first, else the oldest queued one."""
        rows = self._jobs("WHERE status IN ('running', 'queued') ORDER BY "
                          "status = 'queued', created_s LIMIT 1", ())
        return rows[0] if rows else None

    def events(self, limit: int = 100) -> list[Entry]:
        """The last ``limit`` audit entries, newest first."""
        return self.audit_log.recent(limit)

    def _jobs(self, clause: str, args: tuple[object, ...]) -> list[JobRow]:
        with self._locked():
            rows = self._db.execute(
                "SELECT job_id, entry_point, params_json, status, submitted_by, created_s, "
                f"round_num, num_rounds, error, summary, package FROM jobs {clause}",
                args).fetchall()
        return [JobRow(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5], r[6], r[7], r[8], r[9],
                       r[10]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self.audit_log.close()


def _check_integrity(db: sqlite3.Connection, path: Path) -> None:
    """Refuse a damaged database before anything reads or writes it.

    A bad page would otherwise surface later, in the middle of some job; here the operator
    learns it at start, with what to do. The checkpoints live apart (``jobs/``), so a
    database restored from a backup finds them again.
    """
    try:
        problems = [row[0] for row in db.execute("PRAGMA integrity_check(20)")]
    except sqlite3.DatabaseError as exc:  # e.g. "file is not a database", a mangled header
        problems = [str(exc)]
    if problems == ["ok"]:
        return
    shown = "; ".join(one_line(p, 200) for p in problems[:5])
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    raise StorageError(
        f"the server database {path} is damaged: {shown}{more}. The server does not start "
        f"on it. Restore {path.name} from a backup, or move it aside with its -wal and -shm "
        f"files (the server then starts with no jobs); the checkpoints in "
        f"{path.parent / 'jobs'} stay where they are")
