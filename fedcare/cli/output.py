"""The CLI's console and its one way of failing: a red line naming what went wrong, exit 1."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

console = Console()


def fail(exc: BaseException | str) -> typer.Exit:
    """Print ``error: ...`` and return the Exit to raise (never a traceback).

    The message is printed as it is: brackets in it (``pip install 'fedcare[ray]'``, a site's
    own words) are text, not console markup.
    """
    console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
    return typer.Exit(code=1)
