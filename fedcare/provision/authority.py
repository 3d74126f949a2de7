"""The federation's CA as it lives on disk, in ``OUT/.ca``.

::

    OUT/.ca/            mode 0700
      ca.key            mode 0600; the one secret that can mint identities; in no kit
      ca.crt            the trust anchor every kit carries
      crl.pem           revoked serials, signed by the CA (copied to OUT/server/crl.pem)
      project.yaml      the project as provisioned, sites added later included
      serials.json      {"issued": {name: serial}, "revoked": [{name, serial, revoked_at}],
                         "crl_number": N}

Invariants: every certificate the CA signs is recorded in ``serials.json`` under its
participant's name before the call that issued it returns, so any participant can be revoked
by name; a revocation keeps its original date when the CRL is re-signed; the CRL number grows.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedcare.core.errors import ConfigError
from fedcare.provision import pki
from fedcare.provision.files import write_atomic, write_private

CA_DIR = ".ca"
#: The CA outlives the certificates it signs, so sites added later get full-length ones.
MIN_CA_DAYS = 3650


@dataclass
class CertificateAuthority:
    """A loaded CA: its key, certificate, folder and issuance records."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    directory: Path
    records: dict[str, Any]

    @classmethod
    def create(cls, out_dir: Path, federation: str, leaf_days: int) -> CertificateAuthority:
        """Make a new CA in ``out_dir/.ca``; refuses if one is there already.

        Raises:
            ConfigError: ``out_dir/.ca`` exists (provisioning again would orphan every kit
                signed by the old CA).
        """
        directory = Path(out_dir) / CA_DIR
        if directory.exists():
            raise ConfigError(f"{directory} exists: {out_dir} already holds a federation; use "
                              "add-site to extend it, or provision into a new folder")
        directory.mkdir(parents=True, mode=0o700)
        directory.chmod(0o700)  # mkdir's mode is filtered by the umask
        key, cert = pki.make_ca(federation, max(MIN_CA_DAYS, leaf_days + 365))
        write_private(directory / "ca.key", pki.key_pem(key))
        (directory / "ca.crt").write_bytes(pki.cert_pem(cert))
        ca = cls(key, cert, directory, {"issued": {}, "revoked": [], "crl_number": 0})
        ca.save_records()
        return ca

    @classmethod
    def load(cls, out_dir: Path) -> CertificateAuthority:
        """Load the CA of a provisioned folder.

        Raises:
            ConfigError: ``out_dir`` was not provisioned, or its CA files are damaged.
        """
        directory = Path(out_dir) / CA_DIR
        for required in ("ca.key", "ca.crt", "serials.json"):
            if not (directory / required).is_file():
                raise ConfigError(f"{out_dir} holds no provisioned federation "
                                  f"({CA_DIR}/{required} is missing)")
        try:
            key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
            cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
            records = json.loads((directory / "serials.json").read_text(encoding="utf-8"))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"CA in {directory} is damaged: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"CA in {directory}: ca.key is not an EC key")
        return cls(key, cert, directory, records)

    @property
    def cert_pem(self) -> bytes:
        return pki.cert_pem(self.cert)

    @property
    def crl_path(self) -> Path:
        return self.directory / "crl.pem"

    @property
    def project_path(self) -> Path:
        return self.directory / "project.yaml"

    def save_records(self) -> None:
        write_atomic(self.directory / "serials.json",
                     json.dumps(self.records, indent=1).encode("utf-8"))

    def issued(self) -> dict[str, int]:
        """Participant name -> serial of the certificate issued to it."""
        return dict(self.records["issued"])

    def issue(self, name: str, org: str, federation: str, role: str, *, days: int,
              san_hosts: tuple[str, ...] = ()) -> tuple[ec.EllipticCurvePrivateKey,
                                                        x509.Certificate]:
        """Sign a certificate for ``name`` and record its serial.

        Raises:
            ConfigError: ``name`` already has a certificate from this CA.
        """
        if name in self.records["issued"]:
            raise ConfigError(f"{name!r} already has a certificate from the CA in "
                              f"{self.directory}")
        key, cert = pki.issue_certificate(self.key, self.cert, name, org, federation, role,
                                          days=days, san_hosts=san_hosts)
        self.records["issued"][name] = cert.serial_number
        self.save_records()
        return key, cert

    def revoke(self, name: str) -> int:
        """Record ``name``'s certificate as revoked (again is a no-op); returns its serial.

        Raises:
            ConfigError: The CA issued nothing to ``name``.
        """
        issued = self.issued()
        if name not in issued:
            raise ConfigError(f"no participant named {name!r} in {self.directory.parent} "
                              f"(known: {', '.join(sorted(issued))})")
        serial = issued[name]
        if all(entry["serial"] != serial for entry in self.records["revoked"]):
            self.records["revoked"].append({"name": name, "serial": serial,
                                            "revoked_at": dt.datetime.now(dt.UTC).isoformat()})
            self.save_records()
        return serial

    def write_crl(self) -> bytes:
        """Sign a fresh CRL of every revocation so far into ``.ca/crl.pem``; returns its PEM."""
        self.records["crl_number"] = int(self.records.get("crl_number", 0)) + 1
        revoked = [(int(e["serial"]), dt.datetime.fromisoformat(e["revoked_at"]))
                   for e in self.records["revoked"]]
        crl = pki.make_crl(self.key, self.cert, revoked, self.records["crl_number"])
        pem = crl.public_bytes(serialization.Encoding.PEM)
        write_atomic(self.crl_path, pem)
        self.save_records()
        return pem
