"""The CLI's console and its one way of failing: a red line naming what went wrong, exit 1."""

from __future__ import annotations

import typer
from rich.console import Console

console = Console()


def fail(exc: BaseException | str) -> typer.Exit:
    """Print ``error: ...`` and return the Exit to raise (never a traceback)."""
    console.print(f"[bold red]error:[/] {exc}")
    return typer.Exit(code=1)
