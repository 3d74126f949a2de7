"""Provisioning a federation: CA, kits, permissions, add-site, revocation, loading kits."""

import stat

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedcare import ConfigError
from fedcare.core.policy import CodePolicy
from fedcare.provision import add_site, load_crl, load_kit, provision, revoke

PROJECT = {
    "name": "heart-federation",
    "server": {"host": "127.0.0.1", "port": 8443},
    "sites": [{"name": "hospital-a", "org": "Cleveland Clinic"},
              {"name": "hospital-b", "org": "Hungarian Institute of Cardiology"}],
    "admins": [{"name": "alice", "org": "Coordinating Centre", "role": "project_admin"},
               {"name": "bob", "org": "Cleveland Clinic", "role": "site_admin",
                "site": "hospital-a"}],
}
ORGS = {"server": "heart-federation", "hospital-a": "Cleveland Clinic",
        "hospital-b": "Hungarian Institute of Cardiology", "alice": "Coordinating Centre",
        "bob": "Cleveland Clinic"}
KIT_FILES = {"ca.crt", "cert.crt", "key.pem", "config.yaml", "start.sh"}


def write_project(tmp_path, project=None, name="project.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(project or PROJECT))
    return path


@pytest.fixture()
def kits(tmp_path):
    out = tmp_path / "kits"
    return out, provision(write_project(tmp_path), out)


def cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def attr(c, oid):
    return c.subject.get_attributes_for_oid(oid)[0].value


def snapshot(made):
    return {p: p.read_bytes() for k in made.values() for p in k.iterdir()}


def test_every_kit_has_every_file_and_keys_are_private(kits):
    out, made = kits
    assert list(made) == ["server", "hospital-a", "hospital-b", "alice", "bob"]
    for name, kit_dir in made.items():
        expected = KIT_FILES | ({"crl.pem"} if name == "server" else set())
        assert {p.name for p in kit_dir.iterdir()} == expected, name
        assert stat.S_IMODE((kit_dir / "key.pem").stat().st_mode) == 0o600
        assert (kit_dir / "start.sh").stat().st_mode & stat.S_IXUSR
    assert {p.name for p in (out / ".ca").iterdir()} == {
        "ca.key", "ca.crt", "crl.pem", "project.yaml", "serials.json"}
    assert stat.S_IMODE((out / ".ca").stat().st_mode) == 0o700
    assert stat.S_IMODE((out / ".ca" / "ca.key").stat().st_mode) == 0o600
    assert "fedcare server start" in (made["server"] / "start.sh").read_text()
    assert "fedcare site start" in (made["hospital-a"] / "start.sh").read_text()
    assert "status" in (made["alice"] / "start.sh").read_text()


def test_certificates_are_signed_by_the_ca_and_name_their_owner(kits):
    out, made = kits
    ca = cert(out / ".ca" / "ca.crt")
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert (constraints.ca, constraints.path_length) == (True, 0)
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    for name, kit_dir in made.items():
        c = cert(kit_dir / "cert.crt")
        c.verify_directly_issued_by(ca)
        assert (kit_dir / "ca.crt").read_bytes() == (out / ".ca" / "ca.crt").read_bytes()
        assert attr(c, NameOID.COMMON_NAME) == name
        assert attr(c, NameOID.ORGANIZATION_NAME) == ORGS[name]
        assert attr(c, NameOID.ORGANIZATIONAL_UNIT_NAME) == "heart-federation"
        assert not c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        eku = list(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        if name == "server":
            assert ExtendedKeyUsageOID.SERVER_AUTH in eku
        else:
            assert eku == [ExtendedKeyUsageOID.CLIENT_AUTH]
        days = (c.not_valid_after_utc - c.not_valid_before_utc).days
        assert days == 365  # 365 days from now, starting 5 minutes ago
    san = cert(made["server"] / "cert.crt").extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert "127.0.0.1" in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert "localhost" in san.get_values_for_type(x509.DNSName)


def test_dns_host_goes_into_the_server_san(tmp_path):
    project = {**PROJECT, "server": {"host": "fl.example.org", "port": 443}}
    made = provision(write_project(tmp_path, project), tmp_path / "kits")
    san = cert(made["server"] / "cert.crt").extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"fl.example.org", "localhost"}


def test_kit_configs_record_who_is_who(kits):
    _, made = kits
    server = load_kit(made["server"])
    assert (server.config.kind, server.config.workspace) == ("server", "workspace")
    assert server.crl == made["server"] / "crl.pem" and load_crl(server.crl) == set()
    site = load_kit(made["hospital-a"])
    assert (site.config.kind, site.config.role, site.config.data_dir) == ("site", None, None)
    assert site.config.code == CodePolicy() and site.crl is None
    assert (site.config.server_host, site.config.server_port) == ("127.0.0.1", 8443)
    alice = load_kit(made["alice"]).config
    assert (alice.kind, alice.role, alice.site) == ("admin", "project_admin", None)
    bob = load_kit(made["bob"])
    assert (bob.config.role, bob.config.site) == ("site_admin", "hospital-a")
    assert bob.read_cert() == (made["bob"] / "cert.crt").read_bytes()
    assert bob.read_key().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert bob.read_ca() == (made["server"] / "ca.crt").read_bytes()
    title = attr(cert(bob.cert), NameOID.TITLE)
    assert title == "site_admin:hospital-a"


def test_no_kit_contains_the_ca_key(kits):
    out, made = kits
    ca_key = (out / ".ca" / "ca.key").read_bytes()
    body = b"".join(ca_key.strip().splitlines()[1:-1])  # the base64, whatever the line breaks
    for kit_dir in made.values():
        for f in kit_dir.iterdir():
            data = f.read_bytes()
            assert ca_key not in data and body not in b"".join(data.splitlines()), f


def test_provisioning_twice_into_one_folder_is_refused(tmp_path, kits):
    out, made = kits
    before = snapshot(made)
    ca_key = (out / ".ca" / "ca.key").read_bytes()
    with pytest.raises(ConfigError, match="already holds a federation"):
        provision(write_project(tmp_path, name="again.yaml"), out)
    assert snapshot(made) == before and (out / ".ca" / "ca.key").read_bytes() == ca_key


def test_a_folder_in_the_way_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "kits" / "hospital-b").mkdir(parents=True)
    with pytest.raises(ConfigError, match="hospital-b exists already"):
        provision(write_project(tmp_path), tmp_path / "kits")
    assert not (tmp_path / "kits" / ".ca").exists()


def test_add_site_is_signed_by_the_same_ca_and_leaves_other_kits_untouched(kits):
    out, made = kits
    before = snapshot(made)
    kit_dir = add_site(out, "hospital-c", "University Hospital Zurich")
    assert kit_dir == out / "hospital-c"
    c = cert(kit_dir / "cert.crt")
    c.verify_directly_issued_by(cert(out / ".ca" / "ca.crt"))
    assert attr(c, NameOID.ORGANIZATION_NAME) == "University Hospital Zurich"
    assert load_kit(kit_dir).config.kind == "site"
    assert snapshot(made) == before
    project = yaml.safe_load((out / ".ca" / "project.yaml").read_text())
    assert project["sites"][-1] == {"name": "hospital-c", "org": "University Hospital Zurich"}
    # The new site can be revoked by name like any other.
    revoke(out, "hospital-c")
    assert load_crl(out / "server" / "crl.pem") == {c.serial_number}


@pytest.mark.parametrize("name, expected", [
    ("hospital-a", "must be unique"), ("alice", "must be unique"),
    ("server", "'server' is reserved"), ("Bad Name", "sites.2.name"),
])
def test_add_site_refuses_a_taken_or_bad_name(kits, name, expected):
    out, made = kits
    before = snapshot(made)
    with pytest.raises(ConfigError, match=expected):
        add_site(out, name, "Somewhere")
    assert snapshot(made) == before


def test_add_site_needs_a_provisioned_folder(tmp_path):
    with pytest.raises(ConfigError, match="holds no provisioned federation"):
        add_site(tmp_path, "hospital-z", "Z")


def test_revocation_reaches_both_crls_signed_by_the_ca(kits):
    out, made = kits
    serial = cert(made["hospital-b"] / "cert.crt").serial_number
    crl_path = revoke(out, "hospital-b")
    assert crl_path == out / ".ca" / "crl.pem"
    ca = cert(out / ".ca" / "ca.crt")
    for path in (crl_path, made["server"] / "crl.pem"):
        crl = x509.load_pem_x509_crl(path.read_bytes())
        assert crl.is_signature_valid(ca.public_key())
        assert crl.next_update_utc > crl.last_update_utc
        assert load_crl(path) == {serial}
    first = x509.load_pem_x509_crl(crl_path.read_bytes())
    revoke(out, "bob")
    revoke(out, "bob")  # twice: harmless
    second = x509.load_pem_x509_crl(crl_path.read_bytes())
    bob = cert(made["bob"] / "cert.crt").serial_number
    assert load_crl(made["server"] / "crl.pem") == {serial, bob}
    # The original revocation keeps its date; the CRL number grows.
    dates = {r.serial_number: r.revocation_date_utc for r in second}
    assert dates[serial] == first.get_revoked_certificate_by_serial_number(
        serial).revocation_date_utc
    number = x509.CRLNumber
    assert (second.extensions.get_extension_for_class(number).value.crl_number
            > first.extensions.get_extension_for_class(number).value.crl_number)


def test_revoking_an_unknown_name_fails_clearly(kits):
    out, _ = kits
    before = (out / ".ca" / "crl.pem").read_bytes()
    with pytest.raises(ConfigError, match=r"no participant named 'nobody'.*known: alice, bob"):
        revoke(out, "nobody")
    assert (out / ".ca" / "crl.pem").read_bytes() == before


def test_load_kit_refuses_a_key_others_can_read(kits):
    _, made = kits
    (made["hospital-a"] / "key.pem").chmod(0o644)
    with pytest.raises(ConfigError, match=r"key.pem is readable by others \(mode 0644\)"):
        load_kit(made["hospital-a"])
    (made["hospital-a"] / "key.pem").chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_kit(made["hospital-a"])


@pytest.mark.parametrize("missing", ["cert.crt", "key.pem", "ca.crt", "config.yaml"])
def test_load_kit_names_the_missing_file(kits, missing):
    _, made = kits
    (made["hospital-b"] / missing).unlink()
    with pytest.raises(ConfigError, match=f"incomplete: {missing} is missing"):
        load_kit(made["hospital-b"])


def test_a_server_kit_without_its_crl_is_refused(kits):
    _, made = kits
    (made["server"] / "crl.pem").unlink()
    with pytest.raises(ConfigError, match=r"crl\.pem is missing"):
        load_kit(made["server"])


def test_load_kit_names_the_field_of_a_bad_config(kits, tmp_path):
    _, made = kits
    path = made["hospital-a"] / "config.yaml"
    path.write_text(path.read_text().replace("data_dir: null", "data_dir: null\ncolour: red"))
    with pytest.raises(ConfigError, match=r"config.yaml: colour: Extra inputs"):
        load_kit(made["hospital-a"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_kit(tmp_path / "nowhere")
