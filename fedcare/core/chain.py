"""Hash chains: records whose every hash covers the record and the hash before it.

Record ``n`` is stored with ``hash_n = sha256(canonical([n, *fields, hash_{n-1}]))`` (the first
one links to :data:`GENESIS`). Changing, deleting or reordering one record breaks the chain at
that record, and :func:`find_breaks` names it. Whoever may write the store can recompute every
hash after a change, so a chain proves nothing alone: the server signs its head from time to
time (``fedcare.server.audit``), and a signed head pins every record up to it. The server's
audit log and a site's upload ledger are both such chains.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedcare.core.errors import ConfigError

#: What the first record links to.
GENESIS = "0" * 64
Field = str | int
#: How far :func:`find_breaks` looks for the place a moved record came from.
_MOVE_WINDOW = 8
#: At most this many problems are named; the rest are counted.
MAX_PROBLEMS = 20


def utc_now() -> str:
    """ISO 8601 UTC with milliseconds, as log lines have it: ``2026-12-03T14:05:09.123Z``."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def link_hash(seq: int, fields: Sequence[Field], prev_hash: str) -> str:
    """The hash of record ``seq``: compact JSON of ``[seq, *fields, prev_hash]``, UTF-8."""
    data = json.dumps([seq, *fields, prev_hash], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(data.encode()).hexdigest()


@dataclass(frozen=True)
class Link:
    """One stored record: its sequence number, the fields its hash covers, and the hashes."""

    seq: int
    fields: tuple[Field, ...]
    prev_hash: str
    hash: str

    def intact(self, seq: int | None = None) -> bool:
        """Its hash is the hash of its fields, had it been stored as record ``seq``."""
        return link_hash(self.seq if seq is None else seq, self.fields, self.prev_hash) == self.hash


def _origins(links: Sequence[Link]) -> list[int | None]:
    """For each link (in stored order) the sequence number it was written with, or None if
    its content no longer matches its hash under any nearby number (edited)."""
    origins: list[int | None] = []
    for link in links:
        if link.intact():
            origins.append(link.seq)
            continue
        near = sorted(range(max(1, link.seq - _MOVE_WINDOW), link.seq + _MOVE_WINDOW + 1),
                      key=lambda s: abs(s - link.seq))
        origins.append(next((s for s in near if s != link.seq and link.intact(s)), None))
    return origins


def find_breaks(links: Sequence[Link]) -> list[str]:
    """Every place ``links`` (read in ``seq`` order) is no longer the chain that was written.

    Each problem names the record: ``entry 7 edited: ...``, ``entry 7 deleted``, ``entry 8
    is stored as entry 7 (reordered or renumbered)``, ``entry 6 changed and its hash
    recomputed: entry 7 does not link to it``. A record moved further than 8 places, or one
    edited and moved, shows as edited. Records removed from the end leave no trace here: only
    a signed head covering them shows that they are missing.
    """
    problems: list[str] = []
    origins = _origins(links)
    present = {o if o is not None else link.seq for o, link in zip(origins, links, strict=True)}
    for missing in sorted(set(range(1, max(present, default=0) + 1)) - present):
        problems.append(f"entry {missing} deleted")
    previous: tuple[int, Link] | None = None
    for origin, link in zip(origins, links, strict=True):
        if origin is None:
            problems.append(f"entry {link.seq} edited: its content no longer matches its hash")
            previous = None
            continue
        if origin != link.seq:
            problems.append(f"entry {origin} is stored as entry {link.seq} "
                            "(reordered or renumbered)")
        if origin == 1 and link.prev_hash != GENESIS:
            problems.append("entry 1 changed: it does not start the chain")
        if previous is not None and previous[0] + 1 == origin \
                and link.prev_hash != previous[1].hash:
            problems.append(f"entry {previous[0]} changed and its hash recomputed: entry "
                            f"{origin} does not link to it")
        previous = (origin, link)
    problems.sort(key=_entry_number)
    if len(problems) > MAX_PROBLEMS:
        problems[MAX_PROBLEMS:] = [f"... and {len(problems) - MAX_PROBLEMS} more problems"]
    return problems


def _entry_number(problem: str) -> int:
    return int(problem.split()[1])


def open_chain(path: Path, schema: str, table: str, what: str
               ) -> tuple[sqlite3.Connection, int, str]:
    """Open (or create) the SQLite file of a chain: ``(connection, last seq, last hash)``.

    ``table`` holds the records (``seq`` and ``hash`` columns); ``what`` names the file in the
    ConfigError raised when it cannot be opened.
    """
    try:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(schema)
        last = db.execute(f"SELECT seq, hash FROM {table} ORDER BY seq DESC LIMIT 1").fetchone()
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot open the {what} {path}: {exc}") from None
    return db, *((int(last[0]), str(last[1])) if last else (0, GENESIS))


def read_rows(path: Path, table: str, columns: str, what: str, missing: str
              ) -> list[tuple[object, ...]]:
    """Every row of a chain's ``table`` at ``path`` in ``seq`` order, opened read-only.

    Raises:
        ConfigError: No file there (``missing`` says why that may be), or not such a chain
            (``what`` names it).
    """
    if not path.is_file():
        raise ConfigError(f"no {what} at {path} ({missing})")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return list(db.execute(f"SELECT {columns} FROM {table} ORDER BY seq"))
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise ConfigError(f"{path} is not a fedcare {what}: {exc}") from None
