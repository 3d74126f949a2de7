"""A site's identity in its federation: its own certificate and key (to sign what it tells its
peers through the server) and its federation's CA (to check what its peers signed).

Secure and homomorphic aggregation relay every site's per-round public keys through the server.
A server that swapped a key for one of its own could read what a site encrypts for that peer
(Shamir shares, the CKKS secret context). So a site signs its key advertisement
(:func:`fedcare.core.advert.statement`) with the private key of its mTLS certificate, ECDSA
P-256 with SHA-256 as the kits' keys are (:mod:`fedcare.provision.pki`), and sends the
certificate with it. A site uses a peer's keys only once it has checked, itself, with the CA
certificate of its own kit, that the peer's certificate:

* was issued by that CA (directly: the CA's ``path_length=0`` allows no intermediates),
* is valid now (as is the CA),
* was certified for the role ``site`` (the title attribute): not the server's, not an admin's,
* allows digital signatures (if it states a key usage), is no CA, holds an EC P-256 key,
* names the peer's site id as its common name,

and that the signature verifies over exactly the statement rebuilt from the site's own view of
the round (protocol, job, round, session) and the peer's relayed keys.

Revocation is not checked here: a site holds no revocation list. The server refuses revoked
sites' connections, so the keys of a revoked site can reach its peers only through a server
that both lets it in and relays them. Each certificate is checked once and remembered (bounded),
so a round costs a site one signature and one ECDSA verification per peer (about 0.1 ms each).
"""

from __future__ import annotations

import datetime as dt
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedcare.core.errors import ConfigError, PrivacyError, UntrustedKey

#: The role (certificate title) a peer's certificate must carry.
SITE_ROLE = "site"
_CACHED_CERTIFICATES = 4096
_MAX_SIGNATURE_BYTES = 80  # a DER ECDSA P-256 signature is at most 72
_NAMED = 5  # refused peers named in one error


@dataclass(frozen=True)
class _Certificate:
    """What a checked certificate says; ``problem``: why it is refused whatever it signs."""

    name: str
    not_before: dt.datetime
    not_after: dt.datetime
    key: ec.EllipticCurvePublicKey | None
    problem: str | None


class SiteIdentity:
    """One site's certificate and key, and its federation's CA certificate (all PEM).

    Raises:
        ConfigError: Unreadable, a key that is not the certificate's or not EC P-256, or a
            certificate the site's peers would refuse (not a site's, not for ``site_id``, not
            issued by the CA, expired).
    """

    def __init__(self, site_id: str, cert_pem: bytes, key_pem: bytes, ca_pem: bytes) -> None:
        try:
            self._ca = x509.load_pem_x509_certificate(ca_pem)
            cert = x509.load_pem_x509_certificate(cert_pem)
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"site {site_id}: its certificate, key or CA certificate is "
                              f"unreadable: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
                key.curve, ec.SECP256R1):
            raise ConfigError(f"site {site_id}: its private key is not an EC P-256 key")
        if _spki(key.public_key()) != _spki(cert.public_key()):
            raise ConfigError(f"site {site_id}: its private key is not its certificate's")
        self.site_id = site_id
        self._key = key
        self._ca_der = self._ca.public_bytes(serialization.Encoding.DER)
        der = cert.public_bytes(serialization.Encoding.DER)
        problem = self._problem_with(der, site_id, _now())
        if problem:
            raise ConfigError(f"site {site_id}: its peers would refuse its certificate: "
                              f"{problem}")
        self._prefix = struct.pack(">H", len(der)) + der

    def sign(self, statement: bytes) -> bytes:
        """The advertisement of ``statement``: this site's certificate and its signature."""
        return self._prefix + self._key.sign(statement, ec.ECDSA(hashes.SHA256()))

    def problem(self, peer: str, statement: bytes, advert: bytes,
                now: dt.datetime | None = None) -> str | None:
        """Why ``advert`` does not show that site ``peer`` signed ``statement``; None if it
        does."""
        if len(advert) < 2:
            return "its key advertisement is malformed"
        (size,) = struct.unpack(">H", advert[:2])
        der, signature = advert[2:2 + size], advert[2 + size:]
        if len(der) != size or not 0 < len(signature) <= _MAX_SIGNATURE_BYTES:
            return "its key advertisement is malformed"
        problem = self._problem_with(der, peer, now or _now())
        if problem:
            return problem
        key = self._checked(der).key
        assert key is not None  # no problem: an EC P-256 key
        try:
            key.verify(signature, statement, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return ("its signature does not cover these keys for this job, round and session "
                    "(keys substituted, or an advertisement replayed from elsewhere)")
        return None

    def check_peers(self, signed: Mapping[str, tuple[bytes, bytes]], *, what: str,
                    job_id: str, round_num: int) -> None:
        """Check every peer's ``(statement, advertisement)``.

        Raises:
            UntrustedKey: Naming each refused peer (the first few) and why.
        """
        now = _now()
        refused = [f"site {peer}: {problem}" for peer, (statement, advert) in signed.items()
                   if (problem := self.problem(peer, statement, advert, now))]
        if refused:
            more = f"; and {len(refused) - _NAMED} more" if len(refused) > _NAMED else ""
            raise UntrustedKey(f"{what}: site {self.site_id} refuses the step, sending "
                               f"nothing; public keys of {len(refused)} peer(s) failed "
                               "verification: "
                               + "; ".join(refused[:_NAMED]) + more,
                               job_id=job_id, round_num=round_num)

    def _problem_with(self, der: bytes, peer: str, now: dt.datetime) -> str | None:
        cert = self._checked(der)
        if cert.problem:
            return cert.problem
        if cert.name != peer:
            return f"its certificate is site {cert.name!r}'s, not {peer!r}'s"
        if not cert.not_before <= now <= cert.not_after:
            return (f"its certificate is not valid now (valid {cert.not_before:%Y-%m-%d %H:%M}"
                    f" to {cert.not_after:%Y-%m-%d %H:%M} UTC)")
        if not self._ca.not_valid_before_utc <= now <= self._ca.not_valid_after_utc:
            return "this site's CA certificate is not valid now"
        return None

    def _checked(self, der: bytes) -> _Certificate:
        # What a certificate is, checked against a CA, never changes: remembered per process
        # (simulated sites share one CA, so each certificate is checked once, not per peer).
        with _CACHE_LOCK:
            known = _CACHE.get((self._ca_der, der))
        if known is not None:
            return known
        checked = _check(der, self._ca)
        with _CACHE_LOCK:
            if len(_CACHE) >= _CACHED_CERTIFICATES:
                _CACHE.clear()
            _CACHE[(self._ca_der, der)] = checked
        return checked


def required(identity: SiteIdentity | None, site_id: str, what: str) -> SiteIdentity:
    """``identity``, or PrivacyError: a site without one cannot sign its keys, so its peers
    would refuse them; it takes no part in ``what``."""
    if identity is None:
        raise PrivacyError(f"{what}: site {site_id} has no certificate and key to sign its "
                           "public keys with (a site started from its kit has them, a "
                           "simulated site gets throwaway ones), so it takes no part")
    if identity.site_id != site_id:
        raise PrivacyError(f"{what}: site {site_id} holds site {identity.site_id}'s identity")
    return identity

def _check(der: bytes, ca: x509.Certificate) -> _Certificate:
    """What does not change with time or the claimed peer: issuer, role, usage, key."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return _Certificate("", _EPOCH, _EPOCH, None, "its certificate is unreadable")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(names[0].value) if len(names) == 1 else ""

    def refused(problem: str) -> _Certificate:
        return _Certificate(name, cert.not_valid_before_utc, cert.not_valid_after_utc, None,
                            problem)

    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return refused("its certificate was not issued by this federation's CA")
    roles = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.TITLE)]
    if roles != [SITE_ROLE]:
        return refused(f"its certificate is a {' / '.join(roles) or 'role-less'} "
                       f"certificate, not a {SITE_ROLE}'s")
    extensions = {type(e.value): e.value for e in cert.extensions}
    usage, constraints = extensions.get(x509.KeyUsage), extensions.get(x509.BasicConstraints)
    # absent, neither restricts (RFC 5280); the kits' certificates state both
    if isinstance(usage, x509.KeyUsage) and not usage.digital_signature:
        return refused("its certificate's key usage does not allow signing")
    if isinstance(constraints, x509.BasicConstraints) and constraints.ca:
        return refused("its certificate is a CA's")
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve,
                                                                          ec.SECP256R1):
        return refused("its certificate's key is not EC P-256")
    return _Certificate(name, cert.not_valid_before_utc, cert.not_valid_after_utc, key, None)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: (CA certificate, certificate) DER -> what the certificate is, checked against that CA.
_CACHE: dict[tuple[bytes, bytes], _Certificate] = {}
_CACHE_LOCK = threading.Lock()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _spki(key: ec.EllipticCurvePublicKey | object) -> bytes:
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return b""
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)
