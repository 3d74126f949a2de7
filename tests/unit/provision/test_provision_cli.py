"""``fedcare provision`` through a tiny app that registers provision_app as main.py would."""

import pytest
import typer
import yaml
from typer.testing import CliRunner

from fedcare.cli.provision import provision_app
from fedcare.provision import load_crl

PROJECT = {
    "name": "heart-federation",
    "server": {"host": "127.0.0.1", "port": 8443},
    "sites": [{"name": "hospital-a", "org": "Cleveland Clinic"}],
    "admins": [{"name": "alice", "org": "Coordinating Centre", "role": "project_admin"}],
}

app = typer.Typer()


@app.command("version")
def _version() -> None:  # a second command, so "provision" is a sub-group as in fedcare
    """Print nothing."""


app.add_typer(provision_app, name="provision")
runner = CliRunner()


@pytest.fixture()
def project(tmp_path):
    path = tmp_path / "project.yaml"
    path.write_text(yaml.safe_dump(PROJECT))
    return path


def invoke(*args):
    return runner.invoke(app, ["provision", *map(str, args)])


def assert_clean_error(result, *fragments):
    assert result.exit_code == 1, result.output
    assert "error:" in result.output and "Traceback" not in result.output
    flat = " ".join(result.output.split())
    for fragment in fragments:
        assert fragment in flat, flat


@pytest.mark.parametrize("spelling", [[], ["create"]])
def test_create_add_site_and_revoke(tmp_path, project, spelling):
    out = tmp_path / "kits"
    result = invoke(*spelling, project, "-o", out)
    assert result.exit_code == 0, result.output
    for fragment in ("hospital-a", "alice", "server", "Cleveland Clinic", "project_admin"):
        assert fragment in result.output
    assert (out / "hospital-a" / "key.pem").is_file()
    result = invoke("add-site", out, "hospital-b", "--org", "Budapest")
    assert result.exit_code == 0, result.output
    assert "hospital-b" in result.output and (out / "hospital-b" / "cert.crt").is_file()
    result = invoke("revoke", out, "hospital-a")
    assert result.exit_code == 0 and "revoked hospital-a" in result.output
    assert len(load_crl(out / "server" / "crl.pem")) == 1


def test_the_single_command_spelling_still_works(tmp_path, project):
    out = tmp_path / "kits"
    assert invoke(project, "-o", out).exit_code == 0
    result = invoke("--add-site", "hospital-z", "--org", "Z", "-o", out)
    assert result.exit_code == 0 and (out / "hospital-z" / "cert.crt").is_file()
    result = invoke("--revoke", "hospital-z", "-o", out)
    assert result.exit_code == 0 and "revoked hospital-z" in result.output
    assert_clean_error(invoke("--add-site", "hospital-y", "-o", out), "--add-site needs --org")


def test_errors_are_one_line_and_exit_1(tmp_path, project):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**PROJECT, "colour": 1}))
    assert_clean_error(invoke("create", bad, "-o", tmp_path / "k"),
                       "colour: Extra inputs are not permitted")
    assert_clean_error(invoke(bad, "-o", tmp_path / "k"), "bad.yaml")
    out = tmp_path / "kits"
    assert invoke(project, "-o", out).exit_code == 0
    assert_clean_error(invoke(project, "-o", out), "already holds a federation")
    assert_clean_error(invoke("revoke", out, "nobody"), "no participant named 'nobody'")
    assert_clean_error(invoke("add-site", out, "alice", "--org", "X"), "must be unique")
    assert_clean_error(invoke("add-site", tmp_path / "empty", "x", "--org", "X"),
                       "holds no provisioned federation")


def test_help_lists_the_subcommands():
    result = invoke("--help")
    assert result.exit_code == 0
    for name in ("create", "add-site", "revoke"):
        assert name in result.output
