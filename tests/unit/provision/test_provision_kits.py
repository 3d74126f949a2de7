"""Provisioning: CA, kits, permissions, add-site, revocation, bad project files."""

import stat

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from fedcare import ConfigError
from fedcare.provision import add_site, load_crl, load_kit, provision, revoke

PROJECT = {
    "name": "heart-federation",
    "server": {"host": "fl.example.org", "port": 8443},
    "sites": [{"name": "hospital-a", "org": "Cleveland Clinic"},
              {"name": "hospital-b", "org": "Hungarian Institute of Cardiology"}],
    "admins": [{"name": "alice", "org": "Coordinating Centre", "role": "project_admin"},
               {"name": "bob", "org": "Cleveland Clinic", "role": "site_admin",
                "site": "hospital-a"}],
}


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


def test_every_kit_is_complete_private_and_signed_by_the_ca(kits):
    out, made = kits
    assert sorted(made) == ["alice", "bob", "hospital-a", "hospital-b", "server"]
    ca = cert(out / ".ca" / "ca.crt")
    ca_key = (out / ".ca" / "ca.key").read_bytes()
    for name, kit_dir in made.items():
        for f in ("ca.crt", "cert.crt", "key.pem", "config.yaml", "start.sh"):
            assert (kit_dir / f).is_file(), (name, f)
        assert stat.S_IMODE((kit_dir / "key.pem").stat().st_mode) == 0o600
        c = cert(kit_dir / "cert.crt")
        c.verify_directly_issued_by(ca)
        assert c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        assert c.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == (
            "heart-federation")
        for f in kit_dir.iterdir():
            assert ca_key not in f.read_bytes()
    server = cert(made["server"] / "cert.crt")
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "fl.example.org" in san.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    site_eku = cert(made["hospital-a"] / "cert.crt").extensions.get_extension_for_class(
        x509.ExtendedKeyUsage).value
    assert list(site_eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    titles = {n: cert(p / "cert.crt").subject.get_attributes_for_oid(NameOID.TITLE)[0].value
              for n, p in made.items()}
    assert titles == {"server": "server", "hospital-a": "site", "hospital-b": "site",
                      "alice": "project_admin", "bob": "site_admin:hospital-a"}
    kit = load_kit(made["bob"])
    assert (kit.config.kind, kit.config.role, kit.config.site) == ("admin", "site_admin",
                                                                  "hospital-a")
    assert load_kit(made["hospital-a"]).config.data_dir is None
    assert "fedcare site start" in (made["hospital-a"] / "start.sh").read_text()
    assert load_crl(made["server"] / "crl.pem") == set()


def test_provisioning_twice_into_one_folder_is_refused(tmp_path, kits):
    out, _ = kits
    with pytest.raises(ConfigError, match="already holds a federation"):
        provision(write_project(tmp_path, name="again.yaml"), out)


def test_add_site_leaves_other_kits_untouched(kits):
    out, made = kits
    before = {p: p.read_bytes() for k in made.values() for p in k.iterdir()}
    kit_dir = add_site(out, "hospital-c", "University Hospital Zurich")
    cert(kit_dir / "cert.crt").verify_directly_issued_by(cert(out / ".ca" / "ca.crt"))
    assert {p: p.read_bytes() for p in before} == before
    with pytest.raises(ConfigError, match="unique"):
        add_site(out, "hospital-c", "again")


def test_revocation_reaches_the_server_kit(kits):
    out, made = kits
    serial = cert(made["hospital-b"] / "cert.crt").serial_number
    crl_path = revoke(out, "hospital-b")
    crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    assert crl.is_signature_valid(cert(out / ".ca" / "ca.crt").public_key())
    assert load_crl(crl_path) == {serial} == load_crl(made["server"] / "crl.pem")
    with pytest.raises(ConfigError, match="no participant named 'nobody'"):
        revoke(out, "nobody")


def test_a_key_readable_by_others_is_refused(kits):
    _, made = kits
    (made["hospital-a"] / "key.pem").chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_kit(made["hospital-a"])


@pytest.mark.parametrize("change, expected", [
    ({"colour": "red"}, "colour: Extra inputs are not permitted"),
    ({"sites": [{"name": "a", "org": "x"}, {"name": "a", "org": "y"}]}, "must be unique"),
    ({"sites": [{"name": "Bad Name", "org": "x"}]}, "sites.0.name: String should match"),
    ({"admins": [{"name": "bob", "org": "x", "role": "site_admin"}]}, "site_admin needs 'site'"),
    ({"admins": [{"name": "bob", "org": "x", "role": "site_admin", "site": "zz"}]},
     "got 'zz'"),
    ({"server": {"host": "h", "port": 70000}}, "server.port: Input should be less than"),
    ({"sites": [{"name": "server", "org": "x"}]}, "'server' is reserved"),
])
def test_bad_project_files(tmp_path, change, expected):
    with pytest.raises(ConfigError) as info:
        provision(write_project(tmp_path, {**PROJECT, **change}), tmp_path / "kits")
    assert expected in str(info.value) and "project.yaml" in str(info.value)


def test_yaml_syntax_error(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        provision(path, tmp_path / "kits")


def test_cli(tmp_path):
    from fedcare.cli.main import app

    runner = CliRunner()
    project = write_project(tmp_path)
    result = runner.invoke(app, ["provision", str(project), "-o", str(tmp_path / "k")])
    assert result.exit_code == 0, result.output
    assert "hospital-a" in result.output
    result = runner.invoke(app, ["provision", "--add-site", "hospital-z", "--org", "Z",
                                 "-o", str(tmp_path / "k")])
    assert result.exit_code == 0 and (tmp_path / "k" / "hospital-z" / "cert.crt").exists()
    result = runner.invoke(app, ["provision", "--revoke", "hospital-a", "-o", str(tmp_path / "k")])
    assert result.exit_code == 0 and "revoked hospital-a" in result.output
    bad = write_project(tmp_path, {**PROJECT, "colour": 1}, name="bad.yaml")
    result = runner.invoke(app, ["provision", str(bad), "-o", str(tmp_path / "k2")])
    assert result.exit_code == 1 and "error:" in result.output
    assert "Traceback" not in result.output
