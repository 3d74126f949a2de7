"""Startup kits: one folder per participant, everything it needs to join the federation.

::

    KIT/ca.crt       the federation's CA certificate (the only trust anchor)
    KIT/cert.crt     this participant's certificate, signed by the CA
    KIT/key.pem      its private key, mode 0600 from creation; refused if group/others can read
    KIT/config.yaml  a KitConfig: who this is and where the server is
    KIT/start.sh     the command that starts it
    KIT/crl.pem      server only: the revocation list, re-read on every connection

A kit never holds the CA key: whoever holds a kit can be that participant, no one else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedcare.core.errors import ConfigError
from fedcare.provision.files import write_atomic, write_private
from fedcare.provision.project import KitConfig, read_yaml_model

START = {
    "server": "fedcare server start {kit}",
    "site": "fedcare site start {kit}",
    "admin": "fedcare admin {kit} status",
}
REQUIRED = ("config.yaml", "ca.crt", "cert.crt", "key.pem")


@dataclass(frozen=True)
class Kit:
    """A loaded startup kit: its config and the paths of its PEM files.

    Attributes:
        dir: The kit folder.
        config: Its validated ``config.yaml``.
        ca_cert: The federation's CA certificate.
        cert: This participant's certificate.
        key: This participant's private key (checked to be private to its owner).
        crl: The server's revocation list; None in site and admin kits.
    """

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


def write_kit(kit_dir: Path, config: KitConfig, *, ca_pem: bytes, cert_pem: bytes,
              key_pem: bytes, crl_pem: bytes | None = None) -> Path:
    """Create a kit folder; refuses an existing one (it may be someone's live kit).

    Raises:
        ConfigError: ``kit_dir`` exists.
    """
    try:
        kit_dir.mkdir(parents=True)
    except FileExistsError:
        raise ConfigError(f"{kit_dir} exists already; not overwriting a kit") from None
    write_private(kit_dir / "key.pem", key_pem)
    (kit_dir / "ca.crt").write_bytes(ca_pem)
    (kit_dir / "cert.crt").write_bytes(cert_pem)
    if crl_pem is not None and config.crl:
        write_atomic(kit_dir / config.crl, crl_pem)
    (kit_dir / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
    start = kit_dir / "start.sh"
    command = START[config.kind].format(kit='"$(dirname "$0")"')
    start.write_text(f"#!/bin/sh\n# Start {config.name} ({config.kind} of "
                     f"{config.federation}).\nexec {command} \"$@\"\n", encoding="utf-8")
    start.chmod(0o755)
    return kit_dir


def load_kit(kit_dir: Path) -> Kit:
    """Read a kit, refusing an incomplete one or a private key others can read.

    Args:
        kit_dir: The kit folder.

    Returns:
        The kit, with its config validated.

    Raises:
        ConfigError: The folder or one of its files is missing (named), the key's mode lets
            group or others read it, or ``config.yaml`` is invalid (file and field named).
    """
    kit_dir = Path(kit_dir)
    if not kit_dir.is_dir():
        raise ConfigError(f"kit {kit_dir} does not exist")
    for required in REQUIRED:
        if not (kit_dir / required).is_file():
            raise ConfigError(f"kit {kit_dir} is incomplete: {required} is missing")
    mode = (kit_dir / "key.pem").stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(f"kit {kit_dir}: key.pem is readable by others (mode {mode:04o}); "
                          f"it must be private to its owner: chmod 600 {kit_dir / 'key.pem'}")
    config = read_yaml_model(kit_dir / "config.yaml", KitConfig, "kit config")
    crl = None
    if config.kind == "server" and config.crl:
        crl = kit_dir / config.crl
        if not crl.is_file():
            # A missing CRL would silently un-revoke everyone; refuse rather than guess.
            raise ConfigError(f"kit {kit_dir} is incomplete: {config.crl} is missing")
    return Kit(kit_dir, config, kit_dir / "ca.crt", kit_dir / "cert.crt", kit_dir / "key.pem",
               crl)
