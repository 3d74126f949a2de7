"""Throwaway identities for a simulation: a CA of its own and a site certificate per site.

Simulated sites have no kits, yet secure and homomorphic aggregation need each site to sign
its keys and check its peers' (:class:`~fedcare.core.identity.SiteIdentity`). Rather than an
unsigned mode that a real site could be talked into, the simulator provisions a federation for
the run, with the same code a real federation's kits come from
(:mod:`fedcare.provision.pki`), so simulated sites run exactly the checks real ones do. The CA
key is dropped once the certificates are issued; nothing is written unless site processes need
their kit files (:meth:`ThrowawayIdentities.write`).
"""

from __future__ import annotations

from pathlib import Path

from fedcare.core.identity import SITE_ROLE, SiteIdentity
from fedcare.provision.pki import cert_pem, issue_certificate, key_pem, make_ca

#: Files of one site's identity in a folder, as in a startup kit.
CA_FILE, CERT_FILE, KEY_FILE = "ca.crt", "cert.crt", "key.pem"
_FEDERATION = "simulation"


class ThrowawayIdentities:
    """A fresh CA (valid one day) and one site certificate and key per site id."""

    def __init__(self, site_ids: list[str]) -> None:
        ca_key, ca_cert = make_ca(_FEDERATION, days=1)
        self.ca_pem = cert_pem(ca_cert)
        self.pems: dict[str, tuple[bytes, bytes]] = {}
        for site_id in site_ids:
            key, cert = issue_certificate(ca_key, ca_cert, site_id, site_id, _FEDERATION,
                                          SITE_ROLE, days=1)
            self.pems[site_id] = (cert_pem(cert), key_pem(key))

    def identity(self, site_id: str) -> SiteIdentity:
        cert, key = self.pems[site_id]
        return SiteIdentity(site_id, cert, key, self.ca_pem)

    def write(self, site_id: str, folder: Path) -> Path:
        """One site's CA certificate, certificate and key (0600) in ``folder``, as a kit holds
        them, for a site process to read (:func:`read_identity`)."""
        folder.mkdir(parents=True, mode=0o700)
        cert, key = self.pems[site_id]
        (folder / CA_FILE).write_bytes(self.ca_pem)
        (folder / CERT_FILE).write_bytes(cert)
        path = folder / KEY_FILE
        path.touch(mode=0o600)
        path.write_bytes(key)
        return folder


def read_identity(site_id: str, folder: Path) -> SiteIdentity:
    """The identity :meth:`ThrowawayIdentities.write` wrote for ``site_id``."""
    return SiteIdentity(site_id, (folder / CERT_FILE).read_bytes(),
                        (folder / KEY_FILE).read_bytes(), (folder / CA_FILE).read_bytes())
