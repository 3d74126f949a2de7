"""Certificates of a federation: its CA, participant certificates and the revocation list.

EC P-256 keys and SHA-256 signatures. A participant's identity is its certificate's common name
(CN); its organisation is the O, the federation the OU. What the CA certified it to be
(``server``, ``site``, ``project_admin``, ``site_admin:<site>``, ``viewer``) is the title
attribute, so the server authorises from the verified certificate alone and a site added later
needs no change at the server. Key identifiers are included because strict verifiers (OpenSSL 3
in strict mode, Python 3.13's default context) refuse a chain without them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedcare.core.errors import ConfigError

#: Certificates start this much in the past: tolerates small clock differences between machines.
SLACK = dt.timedelta(minutes=5)
#: A CRL is re-signed on every revocation; verifiers treat one past next_update as stale.
CRL_LIFETIME = dt.timedelta(days=30)
SERVER_ROLE = "server"


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM: the file's 0600 mode is its protection."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def make_ca(federation: str, days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA that may sign participant certificates and CRLs, and nothing below.

    ``path_length=0`` forbids intermediate CAs: every valid chain is CA -> participant.
    """
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{federation} CA"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, federation)])
    now = _now()
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - SLACK).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def issue_certificate(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, name: str, org: str,
    federation: str, role: str, *, days: int = 365, not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None, san_hosts: Iterable[str] = (),
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new key and the CA-signed certificate of one participant.

    Args:
        ca_key: The CA's private key.
        ca_cert: The CA's certificate (its subject becomes the issuer).
        name: Participant name, the common name.
        org: Organisation, the O.
        federation: Federation name, the OU.
        role: ``server``, ``site``, ``project_admin``, ``site_admin:<site>`` or ``viewer``;
            stored as the title. ``server`` gets SERVER_AUTH and a SubjectAlternativeName.
        days: Validity from now when ``not_after`` is not given; capped at the CA's expiry,
            since a certificate outliving its CA could never verify anyway.
        not_before: Start of validity (default: now minus 5 minutes).
        not_after: End of validity, taken as given: tests pass past dates to forge an
            expired certificate.
        san_hosts: Server only: its host names or IPs; ``localhost`` and 127.0.0.1 are added.

    Returns:
        The participant's new private key and its certificate.
    """
    key = new_key()
    now = _now()
    if not_after is None:
        not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if role == SERVER_ROLE:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, federation),
            x509.NameAttribute(NameOID.TITLE, role),
        ]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - SLACK).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), False)
    )
    if role == SERVER_ROLE:
        builder = builder.add_extension(_san([*san_hosts, "localhost", "127.0.0.1"]), False)
    return key, builder.sign(ca_key, hashes.SHA256())


def make_crl(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
             revoked: Iterable[tuple[int, dt.datetime]], number: int
             ) -> x509.CertificateRevocationList:
    """A CA-signed CRL listing ``(serial, revocation time)`` pairs.

    ``number`` must grow with each CRL the CA issues, so a verifier can tell newer from older.
    """
    now = _now()
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
               .last_update(now - SLACK).next_update(now + CRL_LIFETIME)
               .add_extension(x509.CRLNumber(number), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    for serial, when in sorted(dict(revoked).items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build())
    return builder.sign(ca_key, hashes.SHA256())


def load_crl(path: Path | str, *, ca_pem: bytes | None = None) -> set[int]:
    """Revoked serial numbers of a PEM CRL file.

    Args:
        path: The CRL file.
        ca_pem: If given, the CA certificate whose signature the CRL must carry.

    Raises:
        ConfigError: The file is missing, not a PEM CRL, or (with ``ca_pem``) not signed by
            that CA.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"revocation list {path}: cannot read: {exc.strerror}") from None
    return read_crl(data, str(path), ca_pem=ca_pem)[1]


def read_crl(data: bytes, where: str, *, ca_pem: bytes | None = None) -> tuple[int, set[int]]:
    """The CRL number (0 if it has none) and the revoked serials of a PEM CRL's bytes.

    Raises:
        ConfigError: Not a PEM CRL, or (with ``ca_pem``) not signed by that CA; ``where``
            names it.
    """
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError as exc:
        raise ConfigError(f"revocation list {where}: not a PEM CRL: {exc}") from None
    if ca_pem is not None:
        ca_key = x509.load_pem_x509_certificate(ca_pem).public_key()
        try:
            valid = crl.is_signature_valid(ca_key)  # type: ignore[arg-type]
        except (InvalidSignature, TypeError):
            valid = False
        if not valid:
            raise ConfigError(f"revocation list {where} is not signed by the federation's CA")
    try:
        number = int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        number = 0
    return number, {revoked.serial_number for revoked in crl}


def certificate_identity(pem: bytes) -> tuple[str, int]:
    """Common name and serial number of a PEM certificate."""
    cert = x509.load_pem_x509_certificate(pem)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value), cert.serial_number
