"""Run the dashboard: bind 127.0.0.1, make the start-up token, serve until stopped."""

from __future__ import annotations

import socket
from collections.abc import Callable

from fedcare.core.errors import ConfigError
from fedcare.dashboard.app import create_app
from fedcare.dashboard.client import AdminApi
from fedcare.dashboard.security import Gate

#: The only address the dashboard listens on: it acts with an admin's certificate, so it is
#: for this machine's browser (reach it from elsewhere through an SSH tunnel).
HOST = "127.0.0.1"
#: Seconds open live streams get to end when the dashboard stops.
SHUTDOWN_GRACE_S = 2


def bind(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1:``port`` (0: any free port).

    Raises:
        ConfigError: the port is taken or not allowed.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {HOST}:{port}: {exc.strerror}") from None
    sock.listen(128)
    return sock


def url(port: int, token: str) -> str:
    return f"http://{HOST}:{port}/?token={token}"


def serve(api: AdminApi, port: int, on_ready: Callable[[str], None]) -> None:
    """Serve the dashboard for ``api`` until SIGINT/SIGTERM; ``on_ready`` gets the sign-in URL
    (with the token) once the socket is bound."""
    import uvicorn

    sock = bind(port)
    bound = sock.getsockname()[1]
    gate = Gate([f"{HOST}:{bound}", f"localhost:{bound}"])
    app = create_app(api, gate)
    config = uvicorn.Config(app, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
    server = uvicorn.Server(config)
    on_ready(url(bound, gate.token))
    server.run(sockets=[sock])
