"""One process at a time: an exclusive lock on a file, held for the life of the process.

``fcntl.flock`` locks belong to the open file, so the operating system lets go of them when
the process dies in any way (SIGKILL included): a stale lock file never blocks a restart. The
file holds the holder's pid, only to name it in the refusal.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from fedcare.core.errors import ConfigError


class LockFile:
    """An exclusive lock on ``path``; :meth:`acquire` refuses at once if someone holds it."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = Path(path)
        self.what = what
        self._file: IO[str] | None = None

    def acquire(self) -> LockFile:
        """Take the lock.

        Raises:
            ConfigError: Another process holds it (its pid named), or the file cannot be
                opened.
        """
        try:
            handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held open)
        except OSError as exc:
            raise ConfigError(f"cannot lock {self.what} ({self.path}): {exc.strerror}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read(32).strip() or "unknown"
            handle.close()
            raise ConfigError(f"{self.what} is in use by another process (pid {holder}, lock "
                              f"{self.path}); stop that process first") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the file lets go of the lock
            self._file = None

    def __enter__(self) -> LockFile:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
