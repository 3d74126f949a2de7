"""Choosing a simulation backend, and what is said when the Ray backend cannot run (no Ray)."""

from __future__ import annotations

import sys

import pytest
import regressionjob
from typer.testing import CliRunner

from fedcare import simulate
from fedcare.cli.main import app
from fedcare.core.errors import ConfigError
from fedcare.transport.resources import SiteResources

PIP = "pip install 'fedcare[ray]'"


@pytest.fixture
def no_ray(monkeypatch):
    """This process as if Ray were not installed (an import of it fails)."""
    monkeypatch.setitem(sys.modules, "ray", None)


def test_the_ray_backend_without_ray_says_how_to_install_it(no_ray):
    with pytest.raises(ConfigError, match=r"pip install 'fedcare\[ray\]'"):
        simulate(regressionjob.make_job(), num_sites=2, backend="ray")


def test_the_cli_says_it_in_one_line(no_ray):
    result = CliRunner().invoke(app, ["simulate", "regressionjob:make_job", "--sites", "2",
                                      "--backend", "ray"], terminal_width=60)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith(PIP)


def test_backend_choices_are_checked():
    job = regressionjob.make_job()
    with pytest.raises(ConfigError, match="backend must be one of threads, processes, ray"):
        simulate(job, num_sites=2, backend="dask")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="contradicts"):
        simulate(job, num_sites=2, processes=True, backend="threads")
    with pytest.raises(ConfigError, match="for backend='ray'"):
        simulate(job, num_sites=2, ray_address="127.0.0.1:6379")
    with pytest.raises(ConfigError, match="for backend='ray'"):
        simulate(job, num_sites=2, site_resources=SiteResources(num_cpus=2))


def test_threads_is_the_default_backend():
    chosen = simulate(regressionjob.make_job(num_rounds=2), num_sites=3, backend="threads")
    default = simulate(regressionjob.make_job(num_rounds=2), num_sites=3)
    assert {k: v.tobytes() for k, v in chosen.weights.items()} == {
        k: v.tobytes() for k, v in default.weights.items()}


@pytest.mark.parametrize(("cpus", "gpus", "free", "sites", "pool"), [
    (1.0, 0.0, {"CPU": 2.0}, 1000, 2),       # 1,000 sites on 2 cores: two actors
    (0.5, 0.0, {"CPU": 2.0}, 1000, 4),
    (1.0, 0.0, {"CPU": 16.0}, 3, 3),         # never more actors than sites
    (1.0, 0.25, {"CPU": 16.0, "GPU": 1.0}, 100, 4),  # four sites share the GPU
    (1.0, 0.5, {"CPU": 16.0}, 10, 0),        # no GPU at all
])
def test_the_pool_is_what_the_cluster_holds(cpus, gpus, free, sites, pool):
    assert SiteResources(cpus, gpus).pool_size(free, sites) == pool


@pytest.mark.parametrize(("cpus", "gpus"), [(0.0, 0.0), (-1.0, 0.0), (1.0, -0.5),
                                            (float("nan"), 0.0)])
def test_bad_site_resources_fail_at_construction(cpus, gpus):
    with pytest.raises(ConfigError, match="per site must be"):
        SiteResources(cpus, gpus)
