"""Rich progress display of a run: one bar for the job, one for the current round's sites."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedcare.server.events import RunListener
from fedcare.server.history import RoundRecord, SiteFailure


class RichProgress(RunListener):
    """Shows rounds and site replies as they arrive; failures are printed, not hidden."""

    def __init__(self, console: Console, label: str = "") -> None:
        self.console = console
        self.label = label
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
            console=console, transient=False,
        )
        self._job_task: int | None = None
        self._round_task: int | None = None

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def on_round_start(self, round_num: int, num_rounds: int, site_ids: list[str]) -> None:
        if self._job_task is None:
            self._job_task = self.progress.add_task(
                f"{self.label} rounds".strip(), total=num_rounds, info="")
        if self._round_task is not None:
            self.progress.remove_task(self._round_task)
        what = "initial evaluation" if round_num == 0 else f"round {round_num}"
        self._round_task = self.progress.add_task(
            f"  {what}: sites", total=len(site_ids) * (1 if round_num == 0 else 2), info="")

    def on_reply(self, round_num: int, site_id: str, ok: bool) -> None:
        if self._round_task is not None:
            self.progress.advance(self._round_task)

    def on_failure(self, failure: SiteFailure) -> None:
        self.console.print(f"[red]round {failure.round_num}: site {failure.site_id} "
                           f"{failure.kind} failed: {failure.message}")

    def on_round_end(self, record: RoundRecord) -> None:
        info = " ".join(f"{k}={v:.3f}" for k, v in record.eval_metrics.items())
        if self._job_task is not None:
            self.progress.update(self._job_task, completed=record.round_num, info=info)
        if self._round_task is not None:
            self.progress.remove_task(self._round_task)
            self._round_task = None
