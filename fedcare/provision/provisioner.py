"""Provision a federation, add a site to it later, revoke a participant.

``provision`` makes the CA (kept in ``OUT/.ca``, never inside a kit) and every kit;
``add_site`` signs one more site kit with the same CA without touching the others; ``revoke``
adds a participant's serial to the CA-signed revocation list in ``OUT/.ca`` and in the server's
kit, which the server re-reads on every connection.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from fedcare.core.errors import ConfigError
from fedcare.provision import pki
from fedcare.provision.authority import CA_DIR, CertificateAuthority
from fedcare.provision.files import write_atomic
from fedcare.provision.kit import write_kit
from fedcare.provision.project import (
    SERVER_NAME,
    KitConfig,
    ProjectConfig,
    format_errors,
    load_project,
)


@dataclass(frozen=True)
class _Participant:
    name: str
    org: str
    kind: str
    cert_role: str
    extra: dict[str, object] = field(default_factory=dict)


def _participants(project: ProjectConfig) -> list[_Participant]:
    """Everyone in the project, server first; the server's organisation is the federation."""
    people = [_Participant(SERVER_NAME, project.name, "server", "server",
                           {"workspace": "workspace", "crl": "crl.pem"})]
    people += [_Participant(s.name, s.org, "site", "site") for s in project.sites]
    for a in project.admins:
        role = f"site_admin:{a.site}" if a.role == "site_admin" else a.role
        people.append(_Participant(a.name, a.org, "admin", role,
                                   {"role": a.role, "site": a.site}))
    return people


def _make_kit(ca: CertificateAuthority, project: ProjectConfig, out_dir: Path,
              who: _Participant, crl_pem: bytes | None = None) -> Path:
    if (out_dir / who.name).exists():  # before signing: a refused kit leaves no record
        raise ConfigError(f"{out_dir / who.name} exists already; not overwriting a kit")
    config = KitConfig.model_validate({
        "federation": project.name, "name": who.name, "kind": who.kind,
        "server_host": project.server.host, "server_port": project.server.port, **who.extra})
    key, cert = ca.issue(who.name, who.org, project.name, who.cert_role,
                         days=project.cert_validity_days, san_hosts=(project.server.host,))
    return write_kit(out_dir / who.name, config, ca_pem=ca.cert_pem,
                     cert_pem=pki.cert_pem(cert), key_pem=pki.key_pem(key), crl_pem=crl_pem)


def provision(project_file: Path, out_dir: Path) -> dict[str, Path]:
    """Make the CA and every participant's kit.

    Args:
        project_file: The project file (YAML).
        out_dir: Folder for ``.ca`` and the kits; created if missing.

    Returns:
        Participant name -> kit folder, server first, then sites, then admins.

    Raises:
        ConfigError: The project file is invalid, ``out_dir/.ca`` exists already (a second
            CA would orphan every kit of the first), or a kit folder is in the way.
    """
    project_file, out_dir = Path(project_file), Path(out_dir)
    project = load_project(project_file)
    people = _participants(project)
    if (out_dir / CA_DIR).exists():
        raise ConfigError(f"{out_dir / CA_DIR} exists: {out_dir} already holds a federation; "
                          "use add-site to extend it, or provision into a new folder")
    for who in people:  # checked before anything is written: no half-provisioned folder
        if (out_dir / who.name).exists():
            raise ConfigError(f"{out_dir / who.name} exists already; not overwriting a kit")
    ca = CertificateAuthority.create(out_dir, project.name, project.cert_validity_days)
    shutil.copyfile(project_file, ca.project_path)
    crl_pem = ca.write_crl()
    return {who.name: _make_kit(ca, project, out_dir, who, crl_pem) for who in people}


def add_site(out_dir: Path, name: str, org: str) -> Path:
    """Sign a kit for a new site with the federation's existing CA.

    Other kits are not touched: the server trusts the CA, not a list of sites, so the new site
    can connect as soon as its kit is installed.

    Args:
        out_dir: A folder made by ``provision``.
        name: The new site's name (unique in the federation).
        org: Its organisation.

    Returns:
        The new kit folder.

    Raises:
        ConfigError: ``out_dir`` was not provisioned, or the name is invalid or taken.
    """
    out_dir = Path(out_dir)
    ca = CertificateAuthority.load(out_dir)
    project = load_project(ca.project_path)
    data = project.model_dump()
    data["sites"].append({"name": name, "org": org})
    try:
        updated = ProjectConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"cannot add site {name!r}: {format_errors(exc)}") from None
    site = updated.sites[-1]
    kit_dir = _make_kit(ca, updated, out_dir, _Participant(site.name, site.org, "site", "site"))
    write_atomic(ca.project_path, yaml.safe_dump(
        updated.model_dump(exclude_none=True), sort_keys=False).encode("utf-8"))
    return kit_dir


def revoke(out_dir: Path, name: str) -> Path:
    """Revoke a participant's certificate.

    The CRL is re-signed by the CA and written to ``out_dir/.ca/crl.pem`` and, when the server
    kit is in ``out_dir``, to ``out_dir/server/crl.pem``; a server elsewhere needs that file
    copied to its kit. Revoking twice is harmless.

    Args:
        out_dir: A folder made by ``provision``.
        name: The participant to revoke.

    Returns:
        The CA's CRL file.

    Raises:
        ConfigError: ``out_dir`` was not provisioned, or no participant has that name.
    """
    out_dir = Path(out_dir)
    ca = CertificateAuthority.load(out_dir)
    ca.revoke(name)
    pem = ca.write_crl()
    server_kit = out_dir / SERVER_NAME
    if (server_kit / "config.yaml").is_file():
        write_atomic(server_kit / "crl.pem", pem)
    return ca.crl_path
