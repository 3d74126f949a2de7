"""Startup kits: one folder per participant with its certificate, key, CA and config.

``provision`` makes the CA (kept in ``OUT/.ca``, never inside a kit) and every kit; ``add_site``
signs one more site kit without touching the others; ``revoke`` adds a participant to the
revocation list, which the server reads on every connection.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from fedcare.core.errors import ConfigError
from fedcare.provision import pki
from fedcare.provision.project import (
    KitConfig,
    ProjectConfig,
    SiteSpec,
    format_errors,
    load_project,
    read_yaml_model,
)

CA_DIR = ".ca"
START = {"server": "fedcare server start {kit}", "site": "fedcare site start {kit}",
         "admin": "fedcare admin {kit} status"}


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` readable by its owner only, from the first byte on."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


@dataclass(frozen=True)
class _Ca:
    key: object
    cert: x509.Certificate
    directory: Path

    @classmethod
    def load(cls, out_dir: Path) -> _Ca:
        directory = out_dir / CA_DIR
        if not (directory / "ca.key").exists():
            raise ConfigError(f"{out_dir} holds no provisioned federation (no {CA_DIR}/ca.key)")
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
        cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
        return cls(key, cert, directory)

    def serials(self) -> dict[str, object]:
        return json.loads((self.directory / "serials.json").read_text())

    def save_serials(self, data: dict[str, object]) -> None:
        (self.directory / "serials.json").write_text(json.dumps(data, indent=1))


def _kit(ca: _Ca, project: ProjectConfig, out_dir: Path, name: str, org: str, kind: str,
         cert_role: str, **extra: object) -> Path:
    kit_dir = out_dir / name
    kit_dir.mkdir(parents=True, exist_ok=False)
    key, cert = pki.issue_certificate(
        ca.key, ca.cert, name, org, project.name, cert_role,  # type: ignore[arg-type]
        days=project.cert_validity_days, san_hosts=[project.server.host])
    (kit_dir / "ca.crt").write_bytes(pki.cert_pem(ca.cert))
    (kit_dir / "cert.crt").write_bytes(pki.cert_pem(cert))
    _write_private(kit_dir / "key.pem", pki.key_pem(key))
    config = KitConfig(federation=project.name, name=name, kind=kind,  # type: ignore[arg-type]
                       server_host=project.server.host, server_port=project.server.port,
                       **extra)  # type: ignore[arg-type]
    (kit_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))
    start = kit_dir / "start.sh"
    start.write_text(f"#!/bin/sh\n# Start {name} ({kind}).\nexec "
                     + START[kind].format(kit='"$(dirname "$0")"') + ' "$@"\n')
    start.chmod(0o755)
    serials = ca.serials()
    serials["issued"][name] = cert.serial_number  # type: ignore[index]
    ca.save_serials(serials)
    return kit_dir


def provision(project_file: Path, out_dir: Path) -> dict[str, Path]:
    """Make the CA and every participant's kit; returns name -> kit folder."""
    project = load_project(project_file)
    if (out_dir / CA_DIR).exists():
        raise ConfigError(f"{out_dir / CA_DIR} exists: this folder already holds a federation; "
                          "use add-site, or provision into a new folder")
    ca_dir = out_dir / CA_DIR
    ca_dir.mkdir(parents=True, mode=0o700)
    ca_key, ca_cert = pki.make_ca(project.name, project.cert_validity_days + 365)
    _write_private(ca_dir / "ca.key", pki.key_pem(ca_key))
    (ca_dir / "ca.crt").write_bytes(pki.cert_pem(ca_cert))
    shutil.copyfile(project_file, ca_dir / "project.yaml")
    ca = _Ca(ca_key, ca_cert, ca_dir)
    ca.save_serials({"issued": {}, "revoked": []})
    kits = {"server": _kit(ca, project, out_dir, "server", project.name, "server", "server",
                           workspace="workspace", crl="crl.pem")}
    for site in project.sites:
        kits[site.name] = _kit(ca, project, out_dir, site.name, site.org, "site", "site")
    for admin in project.admins:
        role = f"site_admin:{admin.site}" if admin.role == "site_admin" else admin.role
        kits[admin.name] = _kit(ca, project, out_dir, admin.name, admin.org, "admin", role,
                                role=admin.role, site=admin.site)
    _write_crl(ca, out_dir, [])
    return kits


def _write_crl(ca: _Ca, out_dir: Path, revoked: list[int]) -> Path:
    pem = pki.make_crl(ca.key, ca.cert, revoked).public_bytes(  # type: ignore[arg-type]
        serialization.Encoding.PEM)
    (ca.directory / "crl.pem").write_bytes(pem)
    server_crl = out_dir / "server" / "crl.pem"
    if server_crl.parent.exists():
        tmp = server_crl.with_suffix(".tmp")
        tmp.write_bytes(pem)
        os.replace(tmp, server_crl)
    return ca.directory / "crl.pem"


def add_site(out_dir: Path, name: str, org: str) -> Path:
    """Sign a kit for a new site with the existing CA; other kits stay untouched."""
    ca = _Ca.load(out_dir)
    project = load_project(ca.directory / "project.yaml")
    try:
        spec = SiteSpec(name=name, org=org)
        updated = ProjectConfig.model_validate(
            {**project.model_dump(), "sites": [*project.model_dump()["sites"],
                                               spec.model_dump()]})
    except ValidationError as exc:
        raise ConfigError(f"cannot add site {name!r}: {format_errors(exc)}") from None
    kit_dir = _kit(ca, updated, out_dir, name, org, "site", "site")
    (ca.directory / "project.yaml").write_text(
        yaml.safe_dump(updated.model_dump(exclude_none=True), sort_keys=False))
    return kit_dir


def revoke(out_dir: Path, name: str) -> Path:
    """Revoke a participant's certificate; returns the CA's updated CRL."""
    ca = _Ca.load(out_dir)
    serials = ca.serials()
    issued: dict[str, int] = serials["issued"]  # type: ignore[assignment]
    if name not in issued:
        raise ConfigError(f"no participant named {name!r} in {out_dir} "
                          f"(known: {sorted(issued)})")
    revoked: list[int] = serials["revoked"]  # type: ignore[assignment]
    if issued[name] not in revoked:
        revoked.append(issued[name])
    ca.save_serials(serials)
    return _write_crl(ca, out_dir, revoked)


@dataclass(frozen=True)
class Kit:
    """A loaded startup kit."""

    dir: Path
    config: KitConfig
    ca_cert: Path
    cert: Path
    key: Path
    crl: Path | None

    def read_ca(self) -> bytes:
        return self.ca_cert.read_bytes()

    def read_cert(self) -> bytes:
        return self.cert.read_bytes()

    def read_key(self) -> bytes:
        return self.key.read_bytes()


def load_kit(kit_dir: Path) -> Kit:
    """Read a kit, refusing an incomplete one or a private key others can read."""
    kit_dir = Path(kit_dir)
    for required in ("config.yaml", "ca.crt", "cert.crt", "key.pem"):
        if not (kit_dir / required).is_file():
            raise ConfigError(f"kit {kit_dir} is incomplete: {required} is missing")
    mode = (kit_dir / "key.pem").stat().st_mode
    if mode & 0o077:
        raise ConfigError(f"kit {kit_dir}: key.pem is readable by others (mode "
                          f"{mode & 0o777:o}); run chmod 600 on it")
    config = read_yaml_model(kit_dir / "config.yaml", KitConfig, "kit config")
    assert isinstance(config, KitConfig)
    crl = kit_dir / config.crl if config.crl else None
    return Kit(kit_dir, config, kit_dir / "ca.crt", kit_dir / "cert.crt", kit_dir / "key.pem",
               crl)
