"""One server per workspace: an exclusive lock on ``server.lock``, held while the server runs.

Two servers on one workspace would run the same queued jobs, write the same checkpoints and
interleave their records. The lock is ``flock``'s: the kernel drops it when its holder exits,
however it exits (``kill -9`` included), so a crashed server never leaves a stale lock behind.
The file keeps the holder's pid, to name it when another server is refused.
"""

from __future__ import annotations

from pathlib import Path

from fedcare.core.errors import StorageError
from fedcare.core.lockfile import LockFile

LOCK_NAME = "server.lock"


class WorkspaceLock(LockFile):
    """Held from construction until :meth:`release` (or the process ends)."""

    def __init__(self, workspace: Path) -> None:
        workspace.mkdir(parents=True, exist_ok=True)
        super().__init__(workspace / LOCK_NAME, lambda holder: StorageError(
            f"workspace {workspace} is in use by another server (pid {holder}, "
            f"lock {workspace / LOCK_NAME}); stop that server first, or give this one its own "
            "workspace"))
