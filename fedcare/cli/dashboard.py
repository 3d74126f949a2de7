"""``fedcare dashboard ADMIN_KIT``: the web dashboard of one admin, on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedcare.cli.output import console, fail
from fedcare.core.errors import FedcareError


def dashboard_command(
    kit_dir: Annotated[Path, typer.Argument(help="your admin startup kit")],
    port: Annotated[int, typer.Option(min=0, max=65535,
                                      help="port on 127.0.0.1 (0: any free port)")] = 8765,
    server: Annotated[str | None, typer.Option(help="override host:port of the server")] = None,
) -> None:
    """Open a web dashboard of the federation, as the admin of KIT, on 127.0.0.1.

    It prints a link with a start-up token (a new one at each start); open it in this
    machine's browser.
    """
    try:
        from fedcare.dashboard.client import GrpcAdminApi
        from fedcare.dashboard.serve import serve
    except ImportError as exc:  # fastapi, uvicorn, jinja2 are the `dashboard` extra
        raise fail(f"the dashboard needs: pip install 'fedcare[dashboard]' ({exc})") from None
    try:
        api = GrpcAdminApi(kit_dir, server)
    except FedcareError as exc:
        raise fail(exc) from None

    def ready(link: str) -> None:
        console.print(f"fedcare dashboard of {api.name} ({api.role or 'no role'}) on server "
                      f"{api.server}", highlight=False, markup=False)
        # One parseable line, as Jupyter's: the token is the key to this admin's rights.
        print(f"open {link}", flush=True)

    try:
        serve(api, port, ready)
    except FedcareError as exc:
        raise fail(exc) from None
    finally:
        api.close()
