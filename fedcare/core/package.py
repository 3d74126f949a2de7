"""Signed job packages: a job's code and config in one content-hashed, signed file.

``fedcare job pack DIR`` makes one; the server stores and ships it; each site checks it against
its own policy and runs it from its own verified copy. The format is a zip archive holding only
data, nothing that runs when read (no pickle)::

    fedcare-job.json    the manifest: format, entry point, params, and every file's sha256
    signature.json      the signer's certificate (PEM) and an ECDSA-SHA256 signature of the
                        manifest's exact bytes
    files/<path>        the job's files (Python modules, YAML, small data), as listed

A package's id is the sha256 of its manifest bytes, which name every file's sha256: one id
stands for the whole content, so a policy can list the ids it accepts. Reading a package checks
everything before anything is extracted: the archive's size and entry count, every path (no
absolute paths, no ``..``, no links), every file against its hash, and the signature against
the federation's CA; a signer must be a project admin the CA certified.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedcare.core.errors import ConfigError

FORMAT = "fedcare-job/1"
MANIFEST = "fedcare-job.json"
SIGNATURE = "signature.json"
#: Largest package file (it travels as one gRPC message at submission); a job's code, not
#: its data.
MAX_PACKAGE_BYTES = 2 * 1024 * 1024
#: Largest package once unpacked.
MAX_UNPACKED_BYTES = 16 * 1024 * 1024
MAX_FILES = 2000
#: Who may sign a package: what the CA certified the signer to be.
SIGNER_ROLE = "project_admin"
PACKAGE_ID = re.compile(r"[0-9a-f]{64}")
_PATH_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
_SKIPPED = {"__pycache__", ".git", ".hg", ".svn", ".venv", ".mypy_cache", ".pytest_cache"}
#: Files Python would run without their source: compiled bytecode and native extensions. A
#: package holds source only, so what a reviewer reads is what runs.
_COMPILED = (".pyc", ".pyo", ".so", ".pyd", ".dylib", ".dll")


@dataclass(frozen=True)
class JobPackage:
    """A verified package: who signed it, what it runs, and its files' bytes."""

    package_id: str
    entry_point: str
    params: dict[str, Any]
    signer: str
    signer_org: str
    signer_serial: int
    files: dict[str, bytes]
    data: bytes  # the package file's bytes, as stored and shipped

    def extract(self, root: Path) -> Path:
        """Write the files under ``root/<package_id>`` (once; atomically) and return that folder.

        An existing folder is trusted only if it holds exactly the package's files with
        their hashes; anything else is replaced.
        """
        target = root / self.package_id
        if target.is_dir() and self._matches(target):
            return target
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.package_id[:12]}-", dir=root))
        try:
            for name, content in self.files.items():
                path = staging / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return target

    def _matches(self, folder: Path) -> bool:
        """Whether ``folder`` holds exactly the package's files (bytecode caches removed:
        Python writes them, and one planted there would run instead of its source)."""
        for cache in [p for p in folder.rglob("__pycache__") if p.is_dir()]:
            shutil.rmtree(cache)
        found = {p.relative_to(folder).as_posix() for p in folder.rglob("*")
                 if not p.is_dir()}
        if found != set(self.files):
            return False
        return all(hashlib.sha256((folder / n).read_bytes()).digest()
                   == hashlib.sha256(c).digest() for n, c in self.files.items())


def _canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _check_path(name: str, where: str) -> str:
    path = PurePosixPath(name)
    if (not name or name.startswith("/") or "\\" in name or len(path.parts) > 16
            or not all(_PATH_PART.fullmatch(part) for part in path.parts)):
        raise ConfigError(f"{where}: file name {name[:200]!r} is not allowed (relative paths "
                          "of letters, digits, '_', '-' and '.', no '..', at most 16 deep)")
    if "__pycache__" in path.parts or name.lower().endswith(_COMPILED):
        raise ConfigError(f"{where}: {name[:200]!r} is compiled code; a package holds source "
                          "only, so that what is reviewed is what runs")
    return name


def collect_files(folder: Path) -> dict[str, bytes]:
    """The files of a job folder to pack: everything but caches, hidden files and links."""
    if not folder.is_dir():
        raise ConfigError(f"job folder {folder} does not exist")
    files: dict[str, bytes] = {}
    total = 0
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part in _SKIPPED or part.startswith(".") for part in relative.parts):
            continue
        if path.is_symlink():
            raise ConfigError(f"job folder {folder}: {relative} is a symbolic link; a package "
                              "holds plain files only")
        if not path.is_file() or path.suffix in (".pyc", ".pyo"):
            continue  # bytecode Python made from the sources beside it
        name = _check_path(relative.as_posix(), f"job folder {folder}")
        content = path.read_bytes()
        total += len(content)
        if total > MAX_UNPACKED_BYTES or len(files) >= MAX_FILES:
            raise ConfigError(f"job folder {folder} holds more than {MAX_UNPACKED_BYTES} bytes "
                              f"or {MAX_FILES} files; a package carries code, not data")
        files[name] = content
    return files


def pack(entry_point: str, params: dict[str, Any], files: dict[str, bytes], *,
         cert_pem: bytes, key_pem: bytes) -> tuple[str, bytes]:
    """Sign and pack a job: ``(package id, package bytes)``.

    Args:
        entry_point: ``module:function`` of the job, a module among ``files`` or built in.
        params: The job's parameters (JSON values); part of the signed content.
        files: Relative path -> bytes.
        cert_pem: The signer's certificate (an admin kit's ``cert.crt``).
        key_pem: The signer's private key (the kit's ``key.pem``).
    """
    from fedcare.core.job import ENTRY_POINT_PATTERN

    if not re.fullmatch(ENTRY_POINT_PATTERN, entry_point):
        raise ConfigError(f"entry point {entry_point!r} is not module:function")
    for name in files:
        _check_path(name, "package")
    manifest = _canonical({
        "format": FORMAT, "entry_point": entry_point, "params": params,
        "files": {name: hashlib.sha256(content).hexdigest()
                  for name, content in sorted(files.items())},
    })
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError("the signing key is not an EC key from a fedcare kit")
    signature = key.sign(manifest, ec.ECDSA(hashes.SHA256()))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in [(MANIFEST, manifest), (SIGNATURE, _canonical({
                "signer_certificate": cert_pem.decode("ascii"),
                "signature": base64.b64encode(signature).decode("ascii")})),
                *((f"files/{n}", c) for n, c in sorted(files.items()))]:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, content)
    data = buffer.getvalue()
    if len(data) > MAX_PACKAGE_BYTES:
        raise ConfigError(f"package of {len(data)} bytes exceeds {MAX_PACKAGE_BYTES}")
    return hashlib.sha256(manifest).hexdigest(), data


def _read_entries(data: bytes) -> dict[str, bytes]:
    if len(data) > MAX_PACKAGE_BYTES:
        raise ConfigError(f"package of {len(data)} bytes exceeds {MAX_PACKAGE_BYTES}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
        if len(infos) > MAX_FILES + 2:
            raise ConfigError(f"package holds {len(infos)} entries, more than {MAX_FILES + 2}")
        if sum(i.file_size for i in infos) > MAX_UNPACKED_BYTES:
            raise ConfigError(f"package unpacks to more than {MAX_UNPACKED_BYTES} bytes")
        entries: dict[str, bytes] = {}
        for info in infos:
            if info.is_dir() or info.filename in entries:
                raise ConfigError(f"package entry {info.filename[:200]!r} is a folder or a "
                                  "duplicate")
            with archive.open(info) as handle:
                content = handle.read(info.file_size + 1)
            if len(content) != info.file_size:
                raise ConfigError(f"package entry {info.filename[:200]!r} is not the size "
                                  "it says")
            entries[info.filename] = content
        return entries
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
            NotImplementedError, RuntimeError) as exc:  # RuntimeError: an encrypted entry
        raise ConfigError(f"not a fedcare job package: {exc}") from None


def _check_signer(cert_pem: bytes, ca_pem: bytes) -> x509.Certificate:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as exc:
        raise ConfigError(f"package signer certificate unreadable: {exc}") from None
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ConfigError("package is signed by a certificate this federation's CA did not "
                          "issue") from None
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise ConfigError("package signer's certificate is expired or not yet valid")
    titles = cert.subject.get_attributes_for_oid(NameOID.TITLE)
    role = str(titles[0].value) if titles else ""
    if role != SIGNER_ROLE:
        raise ConfigError(f"package is signed by a {role or 'participant without role'}; only "
                          f"a {SIGNER_ROLE} may sign job packages")
    return cert


def read_package(data: bytes, ca_pem: bytes) -> JobPackage:
    """Verify a package completely and return its content.

    Raises:
        ConfigError: Anything wrong, named: not a package, a file missing, extra or altered,
            a bad path, a signature that does not verify, a signer the CA did not certify as
            a project admin.
    """
    entries = _read_entries(data)
    try:
        manifest_bytes = entries.pop(MANIFEST)
        signature = json.loads(entries.pop(SIGNATURE))
        manifest = json.loads(manifest_bytes)
    except KeyError as exc:
        raise ConfigError(f"not a fedcare job package: {exc.args[0]} is missing") from None
    except ValueError as exc:
        raise ConfigError(f"package manifest or signature is not JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConfigError(f"package format is not {FORMAT}")
    if not isinstance(signature, dict):
        raise ConfigError("package signature.json is not an object")
    cert = _check_signer(str(signature.get("signer_certificate", "")).encode(), ca_pem)
    try:
        raw_signature = base64.b64decode(str(signature.get("signature", "")), validate=True)
        public = cert.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise InvalidSignature
        public.verify(raw_signature, manifest_bytes, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise ConfigError("package signature does not verify: the package was altered after "
                          "it was signed, or signed with another key") from None
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        raise ConfigError("package manifest lists no files")
    files = {name[len("files/"):]: content for name, content in entries.items()
             if name.startswith("files/")}
    if set(files) != set(listed) or len(files) != len(entries):
        extra = sorted(set(entries) - {f"files/{n}" for n in listed})
        missing = sorted(set(listed) - set(files))
        raise ConfigError(f"package content does not match its manifest (extra {extra[:5]}, "
                          f"missing {missing[:5]})")
    for name, content in files.items():
        _check_path(name, "package")
        if hashlib.sha256(content).hexdigest() != listed[name]:
            raise ConfigError(f"package file {name} does not match its hash in the manifest")
    entry_point, params = manifest.get("entry_point"), manifest.get("params", {})
    if not isinstance(entry_point, str) or not isinstance(params, dict):
        raise ConfigError("package manifest needs an entry_point string and a params object")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return JobPackage(hashlib.sha256(manifest_bytes).hexdigest(), entry_point, params,
                      str(names[0].value) if names else "", str(orgs[0].value) if orgs else "",
                      cert.serial_number, files, data)
