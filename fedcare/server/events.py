"""What a run reports while it goes: hooks for progress bars, logs and a status view."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from fedcare.server.history import RoundRecord, SiteFailure


class RunListener:
    """Receives run events; override what you need. Called from the controller's thread
    (``on_round_saved`` excepted, see there)."""

    def on_round_start(self, round_num: int, num_rounds: int, site_ids: list[str]) -> None:
        """A round (0 = initial evaluation) starts with these sites."""

    def on_reply(self, round_num: int, site_id: str, ok: bool) -> None:
        """A site answered a task of this round."""

    def on_failure(self, failure: SiteFailure) -> None:
        """A site failed a task (or never connected); the job goes on while min_sites is met."""

    def on_waiting(self, missing: list[str], connected: int, expected: int, waited_s: float,
                   limit_s: float) -> None:
        """The job is still waiting for its sites to connect (``missing``: the declared ones
        not there yet; empty for a job that declares none)."""

    def on_result(self, name: str, document: dict[str, object]) -> None:
        """A workflow saved a result (e.g. ``cross_site_validation``: a models x sites matrix)."""

    def on_round_end(self, record: RoundRecord) -> None:
        """A round completed (its checkpoint may still be being written)."""

    def on_round_saved(self, record: RoundRecord) -> None:
        """A completed round's checkpoint is on disk: a restart would resume after it.

        Comes after ``on_round_end``, in round order; from a background thread when the
        controller writes checkpoints in the background (the federation server does).
        """

    def on_run_end(self, state: RunState, error: str | None) -> None:
        """The run ended (``FINISHED`` or ``FAILED``, with its reason), its last checkpoint
        written; the last event a listener hears."""


class ListenerGroup(RunListener):
    """Hands every event to each of several listeners, in order (a progress bar and the
    experiment tracker, say)."""

    def __init__(self, *listeners: RunListener) -> None:
        self.listeners = listeners

    def on_round_start(self, round_num: int, num_rounds: int, site_ids: list[str]) -> None:
        for listener in self.listeners:
            listener.on_round_start(round_num, num_rounds, site_ids)

    def on_reply(self, round_num: int, site_id: str, ok: bool) -> None:
        for listener in self.listeners:
            listener.on_reply(round_num, site_id, ok)

    def on_failure(self, failure: SiteFailure) -> None:
        for listener in self.listeners:
            listener.on_failure(failure)

    def on_waiting(self, missing: list[str], connected: int, expected: int, waited_s: float,
                   limit_s: float) -> None:
        for listener in self.listeners:
            listener.on_waiting(missing, connected, expected, waited_s, limit_s)

    def on_result(self, name: str, document: dict[str, object]) -> None:
        for listener in self.listeners:
            listener.on_result(name, document)

    def on_round_end(self, record: RoundRecord) -> None:
        for listener in self.listeners:
            listener.on_round_end(record)

    def on_round_saved(self, record: RoundRecord) -> None:
        for listener in self.listeners:
            listener.on_round_saved(record)

    def on_run_end(self, state: RunState, error: str | None) -> None:
        for listener in self.listeners:
            listener.on_run_end(state, error)


class RunState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"


@dataclass(frozen=True)
class RunStatus:
    """A read-only snapshot of a run, safe to hand to a dashboard."""

    job_id: str
    state: RunState
    round_num: int
    num_rounds: int
    connected_sites: list[str]
    last_eval_metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
