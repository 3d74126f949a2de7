"""Signed job packages: what a site or the server accepts, and every tampering it refuses."""

import io
import json
import zipfile

import pytest
from certs import ThrowawayCA

from fedcare.core.config import build_package_job
from fedcare.core.errors import ConfigError
from fedcare.core.package import MAX_PACKAGE_BYTES, MAX_UNPACKED_BYTES, pack, read_package
from fedcare.core.policy import CodePolicy

JOB = b'''
import numpy as np
from fedcare import FedAvg, Job, Weights
from helper import OFFSET

def make_job(num_rounds=1):
    return Job(name="pkg", initial_weights=lambda: Weights({"w": np.zeros(2, np.float32)}),
               trainer="pkgjob:make_trainer", strategy=FedAvg(), num_rounds=num_rounds)

def value():
    return OFFSET
'''
FILES = {"pkgjob.py": JOB, "helper.py": b"OFFSET = 7\n", "conf/extra.yaml": b"a: 1\n"}


@pytest.fixture(scope="module")
def ca():
    return ThrowawayCA()


def make(ca, files=FILES, role="project_admin", params=None):
    tls, _ = ca.issue("alice", role)
    return pack("pkgjob:make_job", params or {"num_rounds": 3}, files, cert_pem=tls.cert,
                key_pem=tls.key)


def rezip(data, change):
    """The package with its entries passed through ``change(name, bytes) -> bytes | None``."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as old, zipfile.ZipFile(out, "w") as new:
        for info in old.infolist():
            content = change(info.filename, old.read(info))
            if content is not None:
                new.writestr(info.filename, content)
    return out.getvalue()


def test_a_package_round_trips_and_names_its_signer(ca):
    package_id, data = make(ca)
    pkg = read_package(data, ca.pem)
    assert pkg.package_id == package_id and len(package_id) == 64
    assert (pkg.signer, pkg.entry_point, pkg.params) == ("alice", "pkgjob:make_job",
                                                         {"num_rounds": 3})
    assert pkg.files == FILES
    # The id is the content: the same files and params give the same id, whoever signs;
    # other params (signed with the code) another.
    assert make(ca)[0] == package_id
    assert make(ca, params={"num_rounds": 4})[0] != package_id


def test_the_job_runs_from_its_own_extracted_copy(ca, tmp_path):
    pkg = read_package(make(ca)[1], ca.pem)
    folder = pkg.extract(tmp_path)
    assert folder == tmp_path / pkg.package_id
    assert (folder / "conf" / "extra.yaml").read_bytes() == b"a: 1\n"
    job = build_package_job(folder, pkg.entry_point, pkg.params)
    assert job.num_rounds == 3 and job.trainer == "pkgjob:make_trainer"
    import pkgjob  # imported from the package's folder, helper module included
    assert pkgjob.value() == 7 and pkgjob.__file__.startswith(str(folder))
    # A second package with modules of the same names replaces the first one's modules.
    other = read_package(make(ca, {**FILES, "helper.py": b"OFFSET = 8\n"})[1], ca.pem)
    build_package_job(other.extract(tmp_path), other.entry_point, other.params)
    import pkgjob as again
    assert again.value() == 8


@pytest.mark.parametrize("tamper, message", [
    (lambda n, c: c.replace(b"OFFSET = 7", b"OFFSET = 9") if n == "files/helper.py" else c,
     "package file helper.py does not match its hash"),
    (lambda n, c: c.replace(b'"num_rounds":3', b'"num_rounds":9') if n == "fedcare-job.json"
     else c, "signature does not verify"),
    (lambda n, c: None if n == "files/helper.py" else c, "does not match its manifest"),
    (lambda n, c: None if n == "signature.json" else c, "signature.json is missing"),
])
def test_any_change_after_signing_is_refused(ca, tamper, message):
    _, data = make(ca)
    with pytest.raises(ConfigError, match=message):
        read_package(rezip(data, tamper), ca.pem)


def test_an_added_file_is_refused(ca):
    _, data = make(ca)
    out = io.BytesIO(data)
    with zipfile.ZipFile(out, "a") as archive:
        archive.writestr("files/sitecustomize.py", b"import os")
    with pytest.raises(ConfigError, match="does not match its manifest"):
        read_package(out.getvalue(), ca.pem)


def test_only_a_project_admin_of_this_federation_signs(ca):
    with pytest.raises(ConfigError, match="signed by a viewer; only a project_admin"):
        read_package(make(ca, role="viewer")[1], ca.pem)
    with pytest.raises(ConfigError, match="signed by a site"):
        read_package(make(ca, role="site")[1], ca.pem)
    with pytest.raises(ConfigError, match="CA did not issue"):
        read_package(make(ThrowawayCA("other"))[1], ca.pem)
    # A valid signature by someone else's key over a certificate naming alice: refused too.
    _, data = make(ca)
    mallory, _ = ThrowawayCA("other").issue("alice", "project_admin")
    forged = rezip(data, lambda n, c: json.dumps({**json.loads(c), "signer_certificate":
                                                  mallory.cert.decode()}).encode()
                   if n == "signature.json" else c)
    with pytest.raises(ConfigError, match="CA did not issue"):
        read_package(forged, ca.pem)


@pytest.mark.parametrize("name", ["../evil.py", "/etc/passwd", "a/../../b.py", "a\\b.py",
                                  ".hidden/x.py", ""])
def test_paths_that_could_leave_the_package_folder_are_refused(ca, name):
    with pytest.raises(ConfigError, match="is not allowed"):
        make(ca, {**FILES, name: b"x"})


@pytest.mark.parametrize("name", ["__pycache__/pkgjob.cpython-311.pyc", "pkgjob.pyc",
                                  "native.so", "lib/helper.PYD"])
def test_compiled_code_is_refused_so_that_what_is_reviewed_is_what_runs(ca, name):
    with pytest.raises(ConfigError, match="is compiled code"):
        make(ca, {**FILES, name: b"\x00"})
    # nor can it be slipped into a signed package's archive afterwards
    _, data = make(ca)
    out = io.BytesIO(data)
    with zipfile.ZipFile(out, "a") as archive:
        archive.writestr(f"files/{name}", b"\x00")
    with pytest.raises(ConfigError):
        read_package(out.getvalue(), ca.pem)


def test_a_reused_copy_loses_bytecode_planted_in_it(ca, tmp_path):
    pkg = read_package(make(ca)[1], ca.pem)
    folder = pkg.extract(tmp_path)
    planted = folder / "__pycache__" / "helper.cpython-311.pyc"
    planted.parent.mkdir()
    planted.write_bytes(b"not python")
    (folder / "extra.py").write_text("x = 1\n")  # and a file the package does not list
    assert pkg.extract(tmp_path) == folder
    assert not planted.exists() and not (folder / "extra.py").exists()
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file()) == sorted(FILES)


def test_oversized_and_garbage_input_is_refused(ca):
    with pytest.raises(ConfigError, match="not a fedcare job package"):
        read_package(b"PK\x03\x04 garbage", ca.pem)
    with pytest.raises(ConfigError, match="exceeds"):
        read_package(b"\0" * (MAX_PACKAGE_BYTES + 1), ca.pem)
    bomb = io.BytesIO()  # small packed, huge unpacked
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("files/zeros.py", b"\0" * (MAX_UNPACKED_BYTES + 1))
    assert len(bomb.getvalue()) < 100_000
    with pytest.raises(ConfigError, match="unpacks to more than"):
        read_package(bomb.getvalue(), ca.pem)


def test_code_policy_decisions():
    policy = CodePolicy(signers=["alice"], packages=["a" * 64],
                        entry_points=["lab.jobs:make_job"])
    assert policy.refuses_entry_point("lab.jobs:make_job") is None
    assert policy.refuses_entry_point("fedcare.jobs.heart:make_job") is None  # built in
    assert "neither a built-in job" in policy.refuses_entry_point("os:system")
    assert policy.refuses_package("b" * 64, "alice") is None
    assert policy.refuses_package("a" * 64, "mallory") is None
    assert "signed by mallory is not allowed" in policy.refuses_package("b" * 64, "mallory")
    assert "builtin_jobs: false" in CodePolicy(builtin_jobs=False).refuses_entry_point(
        "fedcare.jobs.heart:make_job")
