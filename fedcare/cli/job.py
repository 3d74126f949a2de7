"""``fedcare job pack|inspect``: signed job packages, made by a project admin, read by anyone.

::

    fedcare job pack my_job/ --kit kits/alice      # -> my_job-<id12>.fcjob
    fedcare job inspect my_job-3f2a9c01b7d4.fcjob --kit kits/hospital-a
    fedcare admin kits/alice submit my_job-3f2a9c01b7d4.fcjob

The job folder holds a job file (``job.yaml``, ``job.toml`` or ``job.json``: ``entry_point``
and ``params``) and the code it needs. The package is signed with the admin kit's key; a site
that lists the signer (or the package id) in its kit's ``code`` policy runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from fedcare.cli.output import console, fail
from fedcare.core.config import read_job_file
from fedcare.core.errors import ConfigError, FedcareError
from fedcare.core.package import collect_files, pack, read_package
from fedcare.provision import load_kit

job_app = typer.Typer(no_args_is_help=True, help="Make and inspect signed job packages.")
JOB_FILES = ("job.yaml", "job.yml", "job.toml", "job.json")


@job_app.command("pack")
def pack_command(
    folder: Annotated[Path, typer.Argument(help="the job's folder: a job file and its code")],
    kit: Annotated[Path, typer.Option(help="your project admin kit: the package's signer")],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="package file (default: FOLDER-<id>.fcjob beside the folder)")] = None,
) -> None:
    """Pack and sign a job folder; prints the package id (what sites may list)."""
    try:
        job_files = [folder / name for name in JOB_FILES if (folder / name).is_file()]
        if len(job_files) != 1:
            raise ConfigError(f"job folder {folder} needs exactly one of {', '.join(JOB_FILES)}"
                              f" (found {len(job_files)})")
        spec = read_job_file(job_files[0])
        admin = load_kit(kit)
        if admin.config.role != "project_admin":
            raise ConfigError(f"kit {kit} is not a project admin's; only a project admin signs "
                              "job packages")
        package_id, data = pack(spec.entry_point, dict(spec.params), collect_files(folder),
                                cert_pem=admin.read_cert(), key_pem=admin.read_key())
        target = out or folder.resolve().parent / f"{folder.resolve().name}-{package_id[:12]}.fcjob"
        target.write_bytes(data)
    except (FedcareError, OSError) as exc:
        raise fail(exc) from None
    console.print(f"packed {target} ({len(data)} bytes), signed by {admin.config.name}")
    print(package_id)


@job_app.command("inspect")
def inspect_command(
    package: Annotated[Path, typer.Argument(help="a .fcjob package file")],
    kit: Annotated[Path, typer.Option(help="any kit of the federation (for its CA)")],
) -> None:
    """Verify a package against the federation's CA and show what it holds and who signed it."""
    try:
        pkg = read_package(package.read_bytes(), load_kit(kit).read_ca())
    except (FedcareError, OSError) as exc:
        raise fail(exc) from None
    print(f"package {pkg.package_id}")  # whole, on one line: to copy into a code policy
    table = Table()
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for name, value in [("signed by", f"{pkg.signer} ({pkg.signer_org})"),
                        ("entry point", pkg.entry_point), ("params", str(pkg.params))]:
        table.add_row(name, Text(value))
    for name, content in sorted(pkg.files.items()):
        table.add_row("file", Text(f"{name} ({len(content)} bytes)"))
    console.print(table)
    console.print("signature and content verified against the federation's CA")
