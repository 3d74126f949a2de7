"""Project files and kit configs: every bad input is one ConfigError naming file and field."""

import pytest
import yaml

from fedcare import ConfigError
from fedcare.provision import KitConfig, load_project, provision

PROJECT = {
    "name": "heart-federation",
    "server": {"host": "127.0.0.1", "port": 8443},
    "sites": [{"name": "hospital-a", "org": "Cleveland Clinic"},
              {"name": "hospital-b", "org": "Hungarian Institute of Cardiology"}],
    "admins": [{"name": "alice", "org": "Coordinating Centre", "role": "project_admin"},
               {"name": "bob", "org": "Cleveland Clinic", "role": "site_admin",
                "site": "hospital-a"}],
}
SITE_A = {"name": "hospital-a", "org": "x"}


def write(tmp_path, project, name="project.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(project))
    return path


def test_a_good_project_loads_with_defaults(tmp_path):
    project = load_project(write(tmp_path, PROJECT))
    assert project.cert_validity_days == 365
    assert [s.name for s in project.sites] == ["hospital-a", "hospital-b"]
    assert project.admins[1].site == "hospital-a"


@pytest.mark.parametrize("change, expected", [
    ({"colour": "red"}, "colour: Extra inputs are not permitted"),
    ({"server": {"host": "h", "port": 1, "tls": True}}, "server.tls: Extra inputs"),
    ({"sites": [SITE_A, {"name": "hospital-a", "org": "y"}]},
     "sites.1.name: 'hospital-a' is already used by sites.0.name; participant names must be "
     "unique"),
    ({"admins": [{"name": "hospital-a", "org": "x", "role": "viewer"}]},
     "admins.0.name: 'hospital-a' is already used by sites.0.name"),
    ({"sites": [{"name": "server", "org": "x"}]},
     "sites.0.name: 'server' is already used by the server"),
    ({"sites": [{"name": "Bad Name", "org": "x"}]}, "sites.0.name: String should match"),
    ({"sites": [{"name": "a/b", "org": "x"}]}, "sites.0.name: String should match"),
    ({"sites": [{"name": "-a", "org": "x"}]}, "sites.0.name: String should match"),
    ({"sites": [{"name": "a" * 64, "org": "x"}]}, "sites.0.name: String should match"),
    ({"name": "heart federation"}, "name: String should match"),
    ({"sites": [{"name": "a", "org": ""}]}, "sites.0.org: String should have at least 1"),
    ({"sites": [{"name": "a"}]}, "sites.0.org: Field required"),
    ({"admins": [{"name": "bob", "org": "x", "role": "site_admin"}]},
     "admins.0.site: a site_admin needs 'site' naming one of the sites"),
    ({"admins": [{"name": "bob", "org": "x", "role": "site_admin", "site": "zz"}]},
     "admins.0.site: a site_admin needs 'site' naming one of the sites ['hospital-a', "
     "'hospital-b'], got 'zz'"),
    ({"admins": [{"name": "bob", "org": "x", "role": "viewer", "site": "hospital-a"}]},
     "admins.0.site: only a site_admin has a site"),
    ({"admins": [{"name": "bob", "org": "x", "role": "root"}]}, "admins.0.role: Input should be"),
    ({"server": {"host": "h", "port": 70000}}, "server.port: Input should be less than"),
    ({"server": {"host": "h", "port": 0}}, "server.port: Input should be greater than"),
    ({"server": {"host": "h", "port": "https"}}, "server.port: Input should be a valid integer"),
    ({"server": {"host": "bad host!", "port": 1}},
     "server.host: 'bad host!' is neither an IP address nor a DNS name"),
    ({"server": {"host": "300.1.1.1", "port": 1}}, "server.host: '300.1.1.1' is not a valid IP"),
    ({"server": {"port": 1}}, "server.host: Field required"),
    ({"cert_validity_days": 0}, "cert_validity_days: Input should be greater than"),
])
def test_bad_project_files_name_file_and_field(tmp_path, change, expected):
    path = write(tmp_path, {**PROJECT, **change})
    with pytest.raises(ConfigError) as info:
        provision(path, tmp_path / "kits")
    message = str(info.value)
    assert message.startswith(f"project file {path}: "), message
    assert expected in message, message
    assert "Value error" not in message and not (tmp_path / "kits").exists()


@pytest.mark.parametrize("text, expected", [
    ("name: [unclosed\n", "cannot parse"),
    ("name: a\n  server: : x\n", "cannot parse"),
    ("- just\n- a list\n", "(file): Input should be a valid dictionary"),
    ("", "(file): Input should be a valid dictionary"),
])
def test_unparseable_project_files(tmp_path, text, expected):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_project(path)
    assert str(info.value).startswith(f"project file {path}: ")
    assert expected in str(info.value)


def test_a_missing_or_binary_project_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_project(tmp_path / "nope.yaml")
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_project(path)


def test_a_host_may_be_ipv6_or_a_dns_name(tmp_path):
    for host in ("::1", "fl.example.org", "localhost", "hospital-gw.local"):
        project = load_project(write(tmp_path, {**PROJECT, "server": {"host": host, "port": 1}}))
        assert project.server.host == host


BASE = {"federation": "f", "name": "x", "server_host": "h", "server_port": 1}


@pytest.mark.parametrize("fields, expected", [
    ({"kind": "admin"}, "an admin kit needs a role"),
    ({"kind": "site", "role": "viewer"}, "only an admin kit has one"),
    ({"kind": "admin", "role": "site_admin"}, "a site_admin kit names its site"),
    ({"kind": "admin", "role": "viewer", "site": "a"}, "only a site_admin's"),
    ({"kind": "robot"}, "kind"),
])
def test_kit_config_is_consistent(fields, expected):
    with pytest.raises(ValueError, match=expected):
        KitConfig.model_validate({**BASE, **fields})


def test_kit_config_yaml_has_only_the_keys_of_its_kind():
    site = KitConfig.model_validate({**BASE, "kind": "site"})
    assert "which job code this site runs, nothing else" in site.to_yaml()  # explained
    assert set(yaml.safe_load(site.to_yaml())) == {*BASE, "kind", "data_dir", "code", "policy",
                                                  "privacy"}
    server = KitConfig.model_validate({**BASE, "kind": "server", "workspace": "w", "crl": "c"})
    assert set(yaml.safe_load(server.to_yaml())) == {*BASE, "kind", "workspace", "crl", "code",
                                                    "tracking"}
    assert KitConfig.model_validate(yaml.safe_load(server.to_yaml())) == server
    admin = KitConfig.model_validate({**BASE, "kind": "admin", "role": "viewer"})
    assert yaml.safe_load(admin.to_yaml())["role"] == "viewer"
    assert KitConfig.model_validate(yaml.safe_load(site.to_yaml())) == site
    # a site's policy survives the round trip through config.yaml, in its short form too
    clipped = KitConfig.model_validate({**BASE, "kind": "site", "policy": {
        "outbound": [{"clip_update_norm": {"max_norm": 2.5}}, "exclude_variables"]}})
    assert [f.name for f in clipped.policy.outbound] == ["clip_update_norm", "exclude_variables"]
    assert KitConfig.model_validate(yaml.safe_load(clipped.to_yaml())) == clipped
    with pytest.raises(ValueError, match="only a site kit has a filter policy"):
        KitConfig.model_validate({**BASE, "kind": "server", "policy": {
            "outbound": [{"clip_update_norm": {"max_norm": 1}}]}})


def test_a_kit_written_before_code_policies_keeps_its_allowed_trainers():
    site = KitConfig.model_validate({**BASE, "kind": "site",
                                     "allowed_trainers": ["lab.jobs:make_job"]})
    assert site.code.entry_points == ["lab.jobs:make_job"] and not site.code.builtin_jobs
    assert KitConfig.model_validate(yaml.safe_load(site.to_yaml())) == site  # round trip
