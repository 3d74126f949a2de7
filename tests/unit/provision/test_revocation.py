"""The server's revocation list: verified, re-read when it changes, never failing open."""

import datetime as dt

import pytest
from cryptography.hazmat.primitives import serialization

from fedcare.core.errors import ConfigError
from fedcare.provision import pki
from fedcare.provision.revocation import RevocationList

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture()
def ca():
    key, cert = pki.make_ca("fed", 30)
    return key, cert, pki.cert_pem(cert)


def write(path, key, cert, serials, number):
    crl = pki.make_crl(key, cert, [(s, NOW) for s in serials], number)
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))


def test_serials_follow_the_file_and_an_older_crl_is_refused(ca, tmp_path):
    key, cert, pem = ca
    path, number_file = tmp_path / "crl.pem", tmp_path / "crl-number"
    write(path, key, cert, [], 1)
    crl = RevocationList(path, pem, number_file)
    assert crl.revoked() == frozenset()
    write(path, key, cert, [7, 9], 2)
    assert crl.revoked() == {7, 9}
    assert number_file.read_text().strip() == "2"
    write(path, key, cert, [], 1)  # put back: would un-revoke 7 and 9
    with pytest.raises(ConfigError, match="number 1, older than number 2"):
        crl.revoked()
    # a restarted server remembers the newest number it saw
    with pytest.raises(ConfigError, match="older than number 2"):
        RevocationList(path, pem, number_file).revoked()
    write(path, key, cert, [7, 9, 11], 3)
    assert crl.revoked() == {7, 9, 11}


def test_a_missing_or_forged_crl_raises_instead_of_revoking_nobody(ca, tmp_path):
    pem = ca[2]
    path = tmp_path / "crl.pem"
    crl = RevocationList(path, pem)
    with pytest.raises(ConfigError, match="unavailable"):
        crl.revoked()
    other_key, other_cert = pki.make_ca("intruder", 30)
    write(path, other_key, other_cert, [], 5)
    with pytest.raises(ConfigError, match="not signed by the federation's CA"):
        crl.revoked()
    path.write_bytes(b"-----BEGIN X509 CRL-----\ngarbage\n")
    with pytest.raises(ConfigError, match="not a PEM CRL"):
        crl.revoked()
