"""Signed key advertisements: a site accepts a peer's keys only as signed by that peer's site
certificate from its own CA, for exactly this job, round, session, protocol and keys."""

import datetime as dt
import struct

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedcare.core import advert
from fedcare.core.errors import ConfigError, PrivacyError, UntrustedKey
from fedcare.core.identity import SiteIdentity, required
from fedcare.provision.pki import cert_pem, issue_certificate, key_pem, make_ca

KEYS = [bytes(range(32)), bytes(range(32, 64))]


def _statement(site="b", job="j", round_num=3, session="j/r3", kind="secagg.train", keys=KEYS):
    return advert.statement(kind, job, round_num, session, site, keys)


@pytest.fixture(scope="module")
def federation():
    """One CA; sites a, b, c; a server and an admin of the same CA."""
    ca_key, ca = make_ca("fed", days=2)
    issued = {"ca": (ca_key, ca), **{name: issue_certificate(ca_key, ca, name, "org", "fed", role)
              for name, role in [("a", "site"), ("b", "site"), ("c", "site"),
                                 ("server", "server"), ("alice", "project_admin"),
                                 ("b-admin", "site_admin:b")]}}
    expired = issue_certificate(ca_key, ca, "b", "org", "fed", "site",
                                not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
                                not_after=dt.datetime(2021, 1, 1, tzinfo=dt.UTC))
    identities = {name: SiteIdentity(name, cert_pem(cert), key_pem(key), cert_pem(ca))
                  for name, (key, cert) in issued.items() if name in ("a", "b", "c")}
    return identities, issued, expired, cert_pem(ca)


def forged(key: ec.EllipticCurvePrivateKey, cert, statement: bytes) -> bytes:
    """An advertisement as SiteIdentity.sign makes it, by any key and certificate."""
    der = cert.public_bytes(serialization.Encoding.DER)
    return struct.pack(">H", len(der)) + der + key.sign(statement, ec.ECDSA(hashes.SHA256()))


def test_a_peers_own_signature_over_this_round_and_its_keys_is_accepted(federation):
    ids, *_ = federation
    assert ids["a"].problem("b", _statement(), ids["b"].sign(_statement())) is None
    ids["a"].check_peers({"b": (_statement(), ids["b"].sign(_statement()))}, what="x",
                         job_id="j", round_num=3)


@pytest.mark.parametrize(("seen", "why"), [
    (dict(keys=[bytes(32), KEYS[1]]), "tampered key"),
    (dict(keys=KEYS[::-1]), "keys swapped"),
    (dict(round_num=2), "another round"),
    (dict(job="other"), "another job"),
    (dict(session="j/r3/attempt2"), "another session"),
    (dict(kind="he.train"), "another protocol"),
])
def test_a_signature_over_anything_else_is_refused(federation, seen, why):
    ids, *_ = federation
    signed = ids["b"].sign(_statement())
    problem = ids["a"].problem("b", _statement(**seen), signed)
    assert problem is not None and "signature does not cover" in problem, why


def test_keys_signed_by_another_site_are_refused(federation):
    ids, *_ = federation
    # c signs b's round statement (as if the server claimed c's keys were b's)
    problem = ids["a"].problem("b", _statement(), ids["c"].sign(_statement()))
    assert problem == "its certificate is site 'c''s, not 'b''s"


def test_a_certificate_from_another_ca_is_refused(federation):
    ids, *_ = federation
    other_key, other_ca = make_ca("fed", days=2)
    key, cert = issue_certificate(other_key, other_ca, "b", "org", "fed", "site")
    problem = ids["a"].problem("b", _statement(), forged(key, cert, _statement()))
    assert problem == "its certificate was not issued by this federation's CA"


@pytest.mark.parametrize(("name", "role"), [("server", "server"), ("alice", "project_admin"),
                                            ("b-admin", "site_admin:b")])
def test_a_server_or_admin_certificate_is_refused(federation, name, role):
    ids, issued, *_ = federation
    key, cert = issued[name]
    problem = ids["a"].problem(name, _statement(site=name), forged(key, cert,
                                                                    _statement(site=name)))
    assert problem == f"its certificate is a {role} certificate, not a site's"


def test_the_cas_own_certificate_or_one_not_for_signing_is_refused(federation):
    ids, issued, *_ = federation
    ca_key, ca = issued["ca"]
    problem = ids["a"].problem("b", _statement(), forged(ca_key, ca, _statement()))
    assert problem == "its certificate is a role-less certificate, not a site's"
    key = ec.generate_private_key(ec.SECP256R1())
    no_signing = (x509.CertificateBuilder().subject_name(x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "b"), x509.NameAttribute(NameOID.TITLE, "site")]))
        .issuer_name(ca.subject).public_key(key.public_key()).serial_number(7)
        .not_valid_before(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
        .not_valid_after(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
        .add_extension(x509.KeyUsage(False, False, False, False, True, False, False, False,
                                     False), critical=True)
        .sign(ca_key, hashes.SHA256()))
    problem = ids["a"].problem("b", _statement(), forged(key, no_signing, _statement()))
    assert problem == "its certificate's key usage does not allow signing"


def test_an_expired_certificate_is_refused(federation):
    ids, _, (key, cert), _ = federation
    problem = ids["a"].problem("b", _statement(), forged(key, cert, _statement()))
    assert problem is not None and problem.startswith("its certificate is not valid now")


@pytest.mark.parametrize("signed", [b"", b"\x00", b"\xff\xff" + bytes(40), b"\x00\x02ab"])
def test_a_malformed_advertisement_is_refused(federation, signed):
    ids, *_ = federation
    assert ids["a"].problem("b", _statement(), signed) is not None


def test_the_refusal_names_every_refused_peer_the_job_and_the_round(federation):
    ids, *_ = federation
    good = ids["c"].sign(_statement(site="c"))
    with pytest.raises(UntrustedKey) as refused:
        ids["a"].check_peers({"b": (_statement(), ids["c"].sign(_statement())),
                              "c": (_statement(site="c"), good),
                              "d": (_statement(site="d"), b"")},
                             what="secure key sharing", job_id="j", round_num=3)
    text = str(refused.value)
    assert text.startswith("job j round 3: secure key sharing: site a refuses the step, "
                           "sending nothing; public keys of 2 peer(s) failed verification: ")
    assert "site b: its certificate is site 'c''s" in text and "site d: " in text
    assert "site c" not in text
    assert isinstance(refused.value, PrivacyError)


def test_a_site_cannot_start_with_a_certificate_its_peers_would_refuse(federation):
    _, issued, (old_key, old_cert), ca = federation
    key, cert = issued["a"]
    with pytest.raises(ConfigError, match="is site 'a''s, not 'b''s"):
        SiteIdentity("b", cert_pem(cert), key_pem(key), ca)
    with pytest.raises(ConfigError, match="private key is not its certificate's"):
        SiteIdentity("a", cert_pem(cert), key_pem(issued["b"][0]), ca)
    server_key, server_cert = issued["server"]
    with pytest.raises(ConfigError, match="a server certificate"):
        SiteIdentity("server", cert_pem(server_cert), key_pem(server_key), ca)
    with pytest.raises(ConfigError, match="not valid now"):
        SiteIdentity("b", cert_pem(old_cert), key_pem(old_key), ca)
    with pytest.raises(ConfigError, match="unreadable"):
        SiteIdentity("a", b"not a certificate", key_pem(key), ca)


def test_a_site_without_an_identity_takes_no_part(federation):
    ids, *_ = federation
    with pytest.raises(PrivacyError, match="site a has no certificate and key"):
        required(None, "a", "secure aggregation")
    with pytest.raises(PrivacyError, match="holds site b's identity"):
        required(ids["b"], "a", "secure aggregation")
    assert required(ids["a"], "a", "secure aggregation") is ids["a"]


def test_advertisements_pack_and_unpack_and_refuse_a_mismatch():
    data, lengths = advert.pack([b"abc", b"de"])
    assert advert.unpack(data, lengths, 2) == [b"abc", b"de"]
    assert advert.unpack(*advert.pack([]), 0) == []
    with pytest.raises(ValueError, match="expected 3"):
        advert.unpack(data, lengths, 3)
    with pytest.raises(ValueError, match="malformed"):
        advert.unpack(data[:-1], lengths, 2)
    assert advert.from_tensor(advert.as_tensor(b"xyz")) == b"xyz"
    assert advert.from_tensor(None) is None
    assert advert.from_tensor(np.zeros(advert.MAX_ADVERT_BYTES + 1, np.uint8)) is None
