"""Certificate helpers: forging expired certificates for tests, identities, CRL checks."""

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedcare import ConfigError
from fedcare.provision import certificate_identity, issue_certificate, load_crl
from fedcare.provision.pki import cert_pem, make_ca, make_crl


@pytest.fixture(scope="module")
def ca():
    return make_ca("fed", 3650)


def test_an_expired_certificate_can_be_forged(ca):
    ca_key, ca_cert = ca
    past = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    key, c = issue_certificate(ca_key, ca_cert, "hospital-x", "X", "fed", "site",
                               not_before=past, not_after=past + dt.timedelta(days=1))
    c.verify_directly_issued_by(ca_cert)
    assert c.not_valid_after_utc == past + dt.timedelta(days=1)
    assert c.public_key().public_numbers() == key.public_key().public_numbers()


def test_validity_is_capped_at_the_cas_expiry():
    ca_key, ca_cert = make_ca("fed", 10)
    _, c = issue_certificate(ca_key, ca_cert, "a", "A", "fed", "site", days=365)
    assert c.not_valid_after_utc == ca_cert.not_valid_after_utc


def test_server_san_and_identity(ca):
    ca_key, ca_cert = ca
    _, c = issue_certificate(ca_key, ca_cert, "server", "fed", "fed", "server",
                             san_hosts=["10.0.0.5", "fl.example.org"])
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"10.0.0.5",
                                                                          "127.0.0.1"}
    assert set(san.get_values_for_type(x509.DNSName)) == {"fl.example.org", "localhost"}
    assert certificate_identity(cert_pem(c)) == ("server", c.serial_number)
    _, site = issue_certificate(ca_key, ca_cert, "a", "A", "fed", "site", san_hosts=["h"])
    with pytest.raises(x509.ExtensionNotFound):
        site.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_load_crl_checks_the_signer_when_asked(ca, tmp_path):
    ca_key, ca_cert = ca
    now = dt.datetime.now(dt.UTC)
    path = tmp_path / "crl.pem"
    path.write_bytes(make_crl(ca_key, ca_cert, [(7, now), (9, now)], 1).public_bytes(
        serialization.Encoding.PEM))
    assert load_crl(path, ca_pem=cert_pem(ca_cert)) == {7, 9}
    _, other_ca = make_ca("other", 10)
    with pytest.raises(ConfigError, match="not signed by the federation's CA"):
        load_crl(path, ca_pem=cert_pem(other_ca))
    path.write_text("not a crl")
    with pytest.raises(ConfigError, match="not a PEM CRL"):
        load_crl(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_crl(tmp_path / "missing.pem")
