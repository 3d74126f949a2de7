"""``fedcare dashboard``: which kits it takes, the role it reads, the port it binds."""

import socket

import pytest

pytest.importorskip("fastapi")

from typer.testing import CliRunner

from fedcare.cli.main import app
from fedcare.cli.poc import PocFederation
from fedcare.core.errors import ConfigError
from fedcare.dashboard.client import GrpcAdminApi
from fedcare.dashboard.serve import bind


@pytest.fixture(scope="module")
def kits(tmp_path_factory):
    fed = PocFederation(tmp_path_factory.mktemp("kits") / "poc", ["site-1"], admins=[
        {"name": "vic", "role": "viewer"}, {"name": "sam", "role": "site_admin", "site": "site-1"}])
    fed.provision()
    return fed.kits


def test_the_role_is_read_from_the_admin_s_certificate(kits):
    roles = {}
    for name in ["admin", "vic", "sam"]:
        api = GrpcAdminApi(kits[name], server="127.0.0.1:1")  # a channel connects lazily
        roles[name] = api.role
        api.close()
    assert roles == {"admin": "project_admin", "vic": "viewer", "sam": "site_admin:site-1"}


def test_a_site_kit_is_refused_with_its_kind_named(kits):
    result = CliRunner().invoke(app, ["dashboard", str(kits["site-1"])])
    assert result.exit_code == 1
    assert "is a site kit, not an admin kit" in " ".join(result.output.split())


def test_a_taken_port_is_named():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            bind(port)
    sock = bind(0)
    assert sock.getsockname()[0] == "127.0.0.1"
    sock.close()
