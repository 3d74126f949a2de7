"""The server's view of the revocation list: verified on every read, never failing open.

The CRL in the server's kit is re-read whenever the file changes (its size, inode or
modification time), its signature checked against the federation's CA each time. A missing,
unreadable, unsigned or forged CRL does not mean "nobody is revoked": :meth:`RevocationList.revoked`
raises, and the server admits nobody new (connections and calls are refused as something to
retry) until the file is fixed, saying why in its log; who was admitted before stays.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from fedcare.core.errors import ConfigError
from fedcare.provision.files import write_atomic
from fedcare.provision.pki import read_crl


class RevocationList:
    """The verified revoked serials of one CRL file, cached until the file changes.

    Each CRL the CA issues carries a growing number; once one is seen, an older one (put back
    by mistake, or to un-revoke someone) is refused. With ``number_file`` the highest number
    seen outlives restarts.
    """

    def __init__(self, path: Path, ca_pem: bytes, number_file: Path | None = None) -> None:
        self.path = Path(path)
        self._ca_pem = ca_pem
        self._number_file = number_file
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._serials: frozenset[int] = frozenset()
        self._highest = 0
        if number_file is not None and number_file.is_file():
            try:
                self._highest = int(number_file.read_text().strip() or 0)
            except ValueError:
                raise ConfigError(f"{number_file} does not hold a CRL number") from None

    def revoked(self) -> frozenset[int]:
        """The revoked serial numbers.

        Raises:
            ConfigError: The CRL is missing, unreadable, not a CRL, not signed by the CA, or
                older than one seen before; the caller must then admit nobody new (a
                revocation list that cannot be read must not un-revoke anybody).
        """
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise ConfigError(f"revocation list {self.path} is unavailable "
                              f"({exc.strerror}); admitting nobody new until it is "
                              "restored") from None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            if stamp != self._stamp:
                self._stamp = None
                try:
                    number, serials = read_crl(self.path.read_bytes(), str(self.path),
                                               ca_pem=self._ca_pem)
                except OSError as exc:
                    raise ConfigError(f"revocation list {self.path} is unavailable "
                                      f"({exc.strerror}); admitting nobody new until it is "
                                      "restored") from None
                except ConfigError as exc:
                    raise ConfigError(f"{exc}; admitting nobody new until it is "
                                      "fixed") from None
                if number < self._highest:
                    raise ConfigError(f"revocation list {self.path} is number {number}, older "
                                      f"than number {self._highest} seen before; admitting "
                                      "nobody new until the newest is restored")
                if number > self._highest and self._number_file is not None:
                    write_atomic(self._number_file, f"{number}\n".encode())
                self._highest = number
                self._serials, self._stamp = frozenset(serials), stamp
            return self._serials

    def __call__(self) -> frozenset[int]:
        return self.revoked()
