"""The server's view of the revocation list: verified on every read, never failing open.

The CRL in the server's kit is re-read whenever the file changes (its size, inode or
modification time), its signature checked against the federation's CA each time. A missing,
unreadable, unsigned or forged CRL does not mean "nobody is revoked": :meth:`RevocationList.revoked`
raises, and the server refuses every connection and call until the file is fixed, saying why.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from fedcare.core.errors import ConfigError
from fedcare.provision.pki import load_crl


class RevocationList:
    """The verified revoked serials of one CRL file, cached until the file changes."""

    def __init__(self, path: Path, ca_pem: bytes) -> None:
        self.path = Path(path)
        self._ca_pem = ca_pem
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._serials: frozenset[int] = frozenset()

    def revoked(self) -> frozenset[int]:
        """The revoked serial numbers.

        Raises:
            ConfigError: The CRL is missing, unreadable, not a CRL or not signed by the CA;
                the caller must then refuse everyone (a revocation list that cannot be read
                must not un-revoke anybody).
        """
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise ConfigError(f"revocation list {self.path} is unavailable "
                              f"({exc.strerror}); refusing every participant until it is "
                              "restored") from None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            if stamp != self._stamp:
                try:
                    serials = frozenset(load_crl(self.path, ca_pem=self._ca_pem))
                except ConfigError as exc:
                    self._stamp = None
                    raise ConfigError(f"{exc}; refusing every participant until it is "
                                      "fixed") from None
                self._serials, self._stamp = serials, stamp
            return self._serials

    def __call__(self) -> frozenset[int]:
        return self.revoked()
