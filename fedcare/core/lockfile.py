"""One process at a time: an exclusive lock on a file, held for the life of the process.

The lock is ``flock``'s: the kernel drops it when its holder exits, however it exits
(``kill -9`` included), so a crashed process never leaves a stale lock behind. The file keeps
the holder's pid, to name it when another process is refused. Used for a server's workspace
and a site's kit.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path


class LockFile:
    """Held from construction until :meth:`release` (or the process ends).

    Args:
        path: The lock file (created if missing; its folder must exist).
        refusal: Makes the exception to raise when another process holds the lock, from
            that process's pid as the file says it ("unknown" if it says nothing).
    """

    def __init__(self, path: Path, refusal: Callable[[str], Exception]) -> None:
        self.path = Path(path)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise refusal(holder) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        """Let another process take the lock (the file stays; its pid is stale then)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
