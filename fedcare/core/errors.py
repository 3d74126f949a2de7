"""The one exception tree of fedcare.

::

    FedcareError
    ├── ConfigError        a job, strategy or CLI setting is invalid (raised before anything runs)
    ├── TransportError     a site could not be reached or answered out of protocol
    ├── SiteError          a site's trainer raised, or its result failed validation
    ├── PrivacyError       a site's privacy policy or budget refuses a job or a task
    │   └── UntrustedKey   a peer's public key is not signed by that peer: nothing is sent
    ├── AggregationError   a round could not produce a new global model (e.g. too few sites)
    ├── JobAborted         an admin aborted the job
    └── StorageError       the server's own disk or database failed (full, corrupt, in use)

Every error can carry the job, round and site it concerns, and prints them first, so an operator
reading a log line knows *who* failed *when*: ``job heart round 3: site va: trainer raised ...``.
Only the CLI turns errors into exit codes.
"""

from __future__ import annotations


class FedcareError(Exception):
    """Base of every error fedcare raises on purpose."""

    def __init__(
        self,
        message: str,
        *,
        job_id: str | None = None,
        round_num: int | None = None,
        site_id: str | None = None,
    ) -> None:
        self.message = message
        self.job_id = job_id
        self.round_num = round_num
        self.site_id = site_id
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.job_id is not None:
            where.append(f"job {self.job_id}")
        if self.round_num is not None:
            where.append(f"round {self.round_num}")
        prefix = " ".join(where)
        if self.site_id is not None:
            prefix = f"{prefix}: site {self.site_id}" if prefix else f"site {self.site_id}"
        return f"{prefix}: {self.message}" if prefix else self.message


class ConfigError(FedcareError):
    """A setting is invalid; raised at construction, before any site is contacted."""


class TransportError(FedcareError):
    """A message could not be delivered, decoded or answered in time."""


class SiteError(FedcareError):
    """A site's trainer failed or returned a result that cannot be aggregated."""


class PrivacyError(FedcareError):
    """A site's privacy policy or privacy budget refuses a job or a task: nothing leaves."""


class UntrustedKey(PrivacyError):
    """A peer's public key, relayed by the server, failed verification (not signed by that
    peer's certificate from this federation's CA, or signed for another job, round or key):
    the site refuses the step and encrypts nothing under it. The message names the peer."""


class AggregationError(FedcareError):
    """A round could not produce a new global model; the previous one stays in force."""


class JobAborted(FedcareError):
    """The job was stopped on request; its last checkpoint stays valid."""


class Unavailable(FedcareError):
    """A check that cannot be made now (e.g. the revocation list is being replaced): refuse
    what needs it for now, as something to retry, and keep what was admitted before."""


class StorageError(FedcareError):
    """The server's own state could not be written or read: a full disk, a corrupt database or
    checkpoint, a workspace another server holds. The message says which file and what to do."""
