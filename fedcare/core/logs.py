"""Log lines that say when: every line starts with an ISO 8601 timestamp in UTC.

A server, its sites and their admins sit in different time zones; an operator putting a
site's log next to the server's needs one clock. ``2026-12-03T14:05:09.123Z WARNING ...``.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class UtcFormatter(logging.Formatter):
    """``logging.Formatter`` with ISO 8601 UTC timestamps, milliseconds included."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


def configure(level: int = logging.WARNING, fmt: str = FORMAT,
              stream: TextIO | None = None) -> None:
    """Send log records at ``level`` and above to ``stream`` (stderr), timestamped in UTC."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(UtcFormatter(fmt))
    logging.basicConfig(level=level, handlers=[handler])
