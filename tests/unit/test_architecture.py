"""Layering rules from STYLE.md, checked on the source: imports flow one way."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import fedcare

PACKAGE = Path(fedcare.__file__).parent

# layer -> fedcare layers it may import
ALLOWED = {
    "core": {"core"},
    "algorithms": {"core", "algorithms"},
    "transport": {"core", "transport"},
    "site": {"core", "site"},
    "server": {"core", "algorithms", "transport", "server"},
    "sim": {"core", "algorithms", "transport", "server", "site", "sim", "provision"},
    "datasets": {"datasets"},
    "provision": {"core", "provision"},
    "analytics": {"core", "analytics"},
    # MONAI trainers: core's Trainer protocol over the torch adapter and the packaged data;
    # MedMNIST's site shares come from the simulator's partitioners (pure numpy, sim.partition)
    "medical": {"core", "medical", "datasets", "pytorch", "algorithms", "sim"},
}
#: Optional libraries, each imported (lazily) by its one writer only.
TRACKING_LIBRARIES = {"tensorboard": "server/tracking/tensorboard.py",
                      "mlflow": "server/tracking/mlflow.py"}
#: Ray, the simulator's optional backend: only its transport imports it (lazily chosen).
RAY_IMPORTER = "transport/ray.py"
TORCH_FREE = {"core", "algorithms", "transport", "site", "server", "sim", "datasets",
              "provision", "analytics"}


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(layer: str) -> list[Path]:
    return sorted((PACKAGE / layer).rglob("*.py"))


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layers_import_only_what_is_below_them(layer):
    for path in modules(layer):
        for name in imports(path):
            parts = name.split(".")
            if parts[0] == "fedcare" and len(parts) > 1:
                assert parts[1] in ALLOWED[layer], f"{path.relative_to(PACKAGE)} imports {name}"


@pytest.mark.parametrize("layer", sorted(TORCH_FREE))
def test_core_layers_never_import_torch_or_pickle(layer):
    for path in modules(layer):
        found = {n.split(".")[0] for n in imports(path)} & {"torch", "pickle", "dill"}
        assert not found, f"{path.relative_to(PACKAGE)} imports {found}"


def test_nothing_imports_the_dashboard_but_itself_and_the_cli():
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE).parts[0]
        if where in ("dashboard", "cli"):
            continue
        found = {n for n in imports(path) if n.startswith("fedcare.dashboard")}
        assert not found, f"{path.relative_to(PACKAGE)} imports {found}"


def test_tracking_libraries_are_imported_only_by_their_writers():
    for path in sorted(PACKAGE.rglob("*.py")):
        for name in imports(path):
            owner = TRACKING_LIBRARIES.get(name.split(".")[0])
            assert owner in (None, path.relative_to(PACKAGE).as_posix()), (
                f"{path.relative_to(PACKAGE)} imports {name}")


def test_ray_is_imported_by_its_transport_only():
    for path in sorted(PACKAGE.rglob("*.py")):
        if any(name.split(".")[0] == "ray" for name in imports(path)):
            assert path.relative_to(PACKAGE).as_posix() == RAY_IMPORTER, (
                f"{path.relative_to(PACKAGE)} imports ray")


def test_importing_fedcare_and_its_tracker_loads_no_tracking_library():
    code = ("import sys, fedcare, fedcare.server.tracking, fedcare.sim.simulator; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorboard', 'mlflow', "
            "'torch', 'ray'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("package", ["fedcare", "fedcare.core", "fedcare.server",
                                     "fedcare.server.tracking", "fedcare.transport",
                                     "fedcare.site", "fedcare.algorithms", "fedcare.provision",
                                     "fedcare.analytics", "fedcare.dashboard"])
def test_public_names_are_exported(package):
    module = __import__(package, fromlist=["__all__"])
    assert sorted(module.__all__) == list(module.__all__)
    for name in module.__all__:
        assert hasattr(module, name), f"{package}.{name}"


def test_only_fedcare_medical_imports_monai():
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(PACKAGE / "medical"):
            continue
        found = {n.split(".")[0] for n in imports(path)} & {"monai"}
        assert not found, f"{path.relative_to(PACKAGE)} imports MONAI"


@pytest.mark.parametrize("server_half", ["heart.py", "hippocampus.py"])
def test_job_server_halves_import_no_torch_or_medical(server_half):
    for name in imports(PACKAGE / "jobs" / server_half):
        assert name.split(".")[0] not in {"torch", "monai"}, f"{server_half} imports {name}"
        assert not name.startswith("fedcare.medical"), f"{server_half} imports {name}"
