"""The server's audit log: a hash chain in SQLite whose head the server signs from time to time.

Every entry holds its sequence number, an ISO 8601 UTC time, who (the certificate's common name
and the role the CA certified, or ``server``), the action and a one-line bounded detail; its
hash covers all of them and the previous entry's hash (:mod:`fedcare.core.chain`). Appends are
serialised by a lock, so the gRPC threads, the job runner and the transport may all audit.

Every ``sign_every`` entries, every ``sign_interval_s`` seconds when entries were added, and at
a clean stop, the server signs the head (sequence number and hash) with its kit's private key
and stores the signature with its certificate. ``fedcare audit verify`` then detects an entry
edited, deleted or reordered anywhere up to the last signed head, even by someone who
recomputed every hash after the change. What it cannot detect: entries removed from the end
after the last signed head (at most ``sign_every`` entries or ``sign_interval_s`` seconds of
them, or whatever a crash left unsigned), and anything done by whoever holds the server's key.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedcare.core.chain import Link, link_hash, open_chain, utc_now
from fedcare.core.errors import ConfigError, StorageError
from fedcare.core.text import one_line

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    time TEXT NOT NULL,            -- ISO 8601 UTC
    actor TEXT NOT NULL,           -- certificate common name, or "server"
    role TEXT NOT NULL,            -- what the CA certified the actor to be
    action TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS heads (
    seq INTEGER PRIMARY KEY,       -- the last entry the signature covers
    hash TEXT NOT NULL,
    time TEXT NOT NULL,
    signature BLOB NOT NULL,       -- ECDSA-SHA256 over head_message(seq, hash, time)
    certificate TEXT NOT NULL      -- the signer's PEM certificate
);
"""
#: The audit log's file in the server's workspace.
AUDIT_FILE = "audit.db"
#: Longest detail kept, in characters (a job's parameters, a refusal's reason).
MAX_DETAIL_CHARS = 1000
#: The server signs its head at least every this many entries.
SIGN_EVERY = 100


@dataclass(frozen=True)
class Entry:
    seq: int
    time: str
    actor: str
    role: str
    action: str
    detail: str
    prev_hash: str
    hash: str

    def link(self) -> Link:
        return Link(self.seq, (self.time, self.actor, self.role, self.action, self.detail),
                    self.prev_hash, self.hash)


@dataclass(frozen=True)
class SignedHead:
    seq: int
    hash: str
    time: str
    signature: bytes
    certificate: bytes


def head_message(seq: int, hash_: str, time_: str) -> bytes:
    """The bytes a head's signature covers (prefixed: no other fedcare signature verifies)."""
    return b"fedcare audit head\n" + json.dumps([seq, hash_, time_]).encode()


class HeadSigner:
    """Signs chain heads with the server's EC private key (its kit's ``key.pem``)."""

    def __init__(self, key_pem: bytes, cert_pem: bytes) -> None:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError("the audit log is signed with an EC key; the server's key is "
                              f"a {type(key).__name__}")
        self._key = key
        self.certificate = cert_pem
        x509.load_pem_x509_certificate(cert_pem)  # refuse garbage now, not at the first head

    def sign(self, seq: int, hash_: str, time_: str) -> bytes:
        return self._key.sign(head_message(seq, hash_, time_), ec.ECDSA(hashes.SHA256()))


class AuditLog:
    """Appends to the chain in ``path``; signs its head if given a ``signer``."""

    def __init__(self, path: Path, signer: HeadSigner | None = None, *,
                 sign_every: int = SIGN_EVERY, sign_interval_s: float = 30.0) -> None:
        if sign_every < 1 or sign_interval_s <= 0:
            raise ValueError("sign_every must be >= 1 and sign_interval_s > 0")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db, self._seq, self._hash = open_chain(path, SCHEMA, "entries", "audit log")
        self._signer = signer
        self._sign_every = sign_every
        self._sign_interval_s = sign_interval_s
        self._lock = threading.Lock()
        signed = self._db.execute("SELECT MAX(seq) FROM heads").fetchone()[0]
        self._signed = int(signed or 0)
        self._closed = threading.Event()
        self._timer: threading.Thread | None = None

    def append(self, actor: str, role: str, action: str, detail: str = "") -> int:
        """Add one entry; returns its sequence number. Text is made one bounded line."""
        fields = (utc_now(), one_line(actor, 200), one_line(role, 200), one_line(action, 200),
                  one_line(detail, MAX_DETAIL_CHARS))
        with self._lock:
            if self._closed.is_set():  # e.g. a site's stream ending after the server stopped
                log.warning("audit log closed; not recorded: %s %s %s", *fields[1:4])
                return 0
            seq = self._seq + 1
            digest = link_hash(seq, fields, self._hash)
            try:
                self._db.execute("INSERT INTO entries (seq, time, actor, role, action, "
                                 "detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                 (seq, *fields, self._hash, digest))
                self._seq, self._hash = seq, digest
                if seq - self._signed >= self._sign_every:
                    self._sign_locked()
            except sqlite3.Error as exc:  # a full disk, a damaged file: name it
                raise StorageError(f"audit log {self.path}: {exc}") from exc
        return seq

    def sign_head(self) -> None:
        """Sign the current head now, unless it is signed already (or there is no signer)."""
        with self._lock:
            self._sign_locked()

    def _sign_locked(self) -> None:
        if self._signer is None or self._seq == self._signed or self._closed.is_set():
            return
        stamp = utc_now()
        signature = self._signer.sign(self._seq, self._hash, stamp)
        self._db.execute("INSERT OR REPLACE INTO heads (seq, hash, time, signature, "
                         "certificate) VALUES (?, ?, ?, ?, ?)",
                         (self._seq, self._hash, stamp, signature,
                          self._signer.certificate.decode()))
        self._signed = self._seq

    def start(self) -> None:
        """Sign the head every ``sign_interval_s`` seconds while entries keep coming."""
        if self._signer is None or self._timer is not None:
            return
        self._timer = threading.Thread(target=self._sign_periodically, name="audit-signer",
                                       daemon=True)
        self._timer.start()

    def _sign_periodically(self) -> None:
        while not self._closed.wait(self._sign_interval_s):
            try:
                self.sign_head()
            except sqlite3.Error:
                log.exception("cannot sign the audit log's head")

    def recent(self, limit: int = 100) -> list[Entry]:
        """The last ``limit`` entries, newest first."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM entries ORDER BY seq DESC LIMIT ?",
                                    (limit,)).fetchall()
        return [Entry(*row) for row in rows]

    @property
    def empty(self) -> bool:
        return self._seq == 0

    def import_rows(self, rows: list[tuple[float, str, str, str]]) -> None:
        """Chain the rows of an earlier version's unchained ``events`` table, oldest first:
        entries with their original times, role ``unknown`` and action prefixed
        ``imported:`` (they were editable until now: the chain vouches only for what
        they say today)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for time_s, actor, action, detail in rows:
                    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time_s))
                    fields = (stamp, one_line(actor, 200), "unknown",
                              one_line(f"imported:{action}", 200),
                              one_line(detail, MAX_DETAIL_CHARS))
                    seq = self._seq + 1
                    digest = link_hash(seq, fields, self._hash)
                    self._db.execute("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                     (seq, *fields, self._hash, digest))
                    self._seq, self._hash = seq, digest
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        """Sign the head (a clean stop leaves nothing unsigned) and close the database."""
        with self._lock:
            if self._closed.is_set():
                return
            try:
                self._sign_locked()
            finally:
                self._closed.set()
                self._db.close()
        if self._timer is not None:
            self._timer.join(timeout=5)


_COLUMNS = "seq, time, actor, role, action, detail, prev_hash, hash"


def read_chain(path: Path) -> tuple[list[Entry], list[SignedHead]]:
    """Every entry (in ``seq`` order) and every signed head of the audit log at ``path``,
    opened read-only.

    Raises:
        ConfigError: no audit log there.
    """
    if not path.is_file():
        raise ConfigError(f"no audit log at {path}")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            entries = [Entry(*row) for row in db.execute(
                f"SELECT {_COLUMNS} FROM entries ORDER BY seq")]
            heads = [SignedHead(int(r[0]), str(r[1]), str(r[2]), bytes(r[3]), str(r[4]).encode())
                     for r in db.execute("SELECT seq, hash, time, signature, certificate "
                                         "FROM heads ORDER BY seq")]
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise ConfigError(f"{path} is not a fedcare audit log: {exc}") from None
    return entries, heads
