"""Writing provisioning files so that a crash or a curious user never sees a half-made secret.

Two rules: a private key is created with mode 0600 from its first byte (never written and then
chmod-ed, which leaves a window in which others can read it), and state the CA depends on
(serials, CRL, project copy) is replaced atomically, so an interrupted run leaves the old file
or the new one, never a truncated one.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` readable and writable by its owner only.

    Args:
        path: File to create; an existing file is replaced (it may have had a wider mode).
        data: Bytes to write, typically a PEM private key.
    """
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step (write a sibling, then rename over it).

    Args:
        path: File to write; its folder must exist.
        data: The complete new content.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
