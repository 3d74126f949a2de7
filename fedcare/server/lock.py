"""One server per workspace: an exclusive lock on ``server.lock``, held while the server runs.

Two servers on one workspace would run the same queued jobs, write the same checkpoints and
interleave their records. The lock is ``flock``'s: the kernel drops it when its holder exits,
however it exits (``kill -9`` included), so a crashed server never leaves a stale lock behind.
The file keeps the holder's pid, to name it when another server is refused.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from fedcare.core.errors import StorageError

LOCK_NAME = "server.lock"


class WorkspaceLock:
    """Held from construction until :meth:`release` (or the process ends)."""

    def __init__(self, workspace: Path) -> None:
        workspace.mkdir(parents=True, exist_ok=True)
        self.path = workspace / LOCK_NAME
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StorageError(
                f"workspace {workspace} is in use by another server (pid {holder}, "
                f"lock {self.path}); stop that server first, or give this one its own "
                "workspace") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        """Let another server take the workspace (the file stays; its pid is stale then)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
