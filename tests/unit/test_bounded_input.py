"""Bounded input beyond the codec: shapes, site ids that name files, metric counts."""

import dataclasses

import pytest
import toyjob

from fedcare.core.errors import ConfigError
from fedcare.core.ids import site_id_problem
from fedcare.core.weights import MAX_TENSOR_ELEMENTS, shape_problem
from fedcare.server.checks import metrics_problem


@pytest.mark.parametrize("shape", [(), (0,), (2**40,), (0, 2**20, 2**20), [1, 2] * 16,
                                   (1,) * 32])
def test_shapes_a_model_can_have_pass(shape):
    assert shape_problem(shape) is None


@pytest.mark.parametrize(("shape", "problem"), [
    ((2**40 + 1,), "dimension 0 is 1099511627777, must be in 0..2**40"),
    ((0, 2**40, 2), "dimensions [0, 1099511627776, 2] hold more than 2**40 elements"),
    ((2**21,) * 2 + (2**20,) * 2, "dimensions [2097152, 2097152] hold more"),
    ((-1,), "dimension 0 is -1"),
    ((2**64,), "dimension 0 is 2**64+"),
    ((True, 2), "dimension 0 is bool, not an integer"),
    ((2.0,), "dimension 0 is float, not an integer"),
    ((1,) * 33, "33 dimensions, at most 32"),
    ("34", "shape must be a list of integers, got str"),
])
def test_shapes_no_tensor_can_have_are_refused_saying_why(shape, problem):
    assert problem in shape_problem(shape)


def test_the_element_bound_leaves_numpy_room():
    import numpy as np

    # the largest itemsize times the bound is far inside numpy's int64 byte count
    assert MAX_TENSOR_ELEMENTS * max(np.dtype(t).itemsize for t in ("f8", "i8")) < 2**62


@pytest.mark.parametrize("site_id", ["site-0", "cleveland", "VA.Long_Beach", "a" * 128])
def test_plain_site_ids_pass(site_id):
    assert site_id_problem(site_id) is None


@pytest.mark.parametrize("site_id", ["", ".", "..", "../x", "a/b", "a\\b", ".hidden", "-x",
                                     "a b", "a\nb", "a" * 129, 7, None])
def test_site_ids_that_could_leave_a_folder_are_refused(site_id):
    assert "is not a plain name" in site_id_problem(site_id)


def test_a_job_declaring_a_path_as_a_site_is_refused_before_it_runs():
    with pytest.raises(ConfigError, match=r"site id '\.\./\.\./etc' is not a plain name"):
        dataclasses.replace(toyjob.make_job(), site_ids=("site-0", "../../etc"))


def test_the_server_refuses_a_site_certificate_whose_name_is_not_plain(tmp_path):
    from fedcare.server.service import FederationServer
    from fedcare.transport.grpc.tls import PeerIdentity

    server = FederationServer.__new__(FederationServer)  # authorize_site reads revoked only
    server.revoked = set
    assert server.authorize_site(PeerIdentity("site-0", 1, "x", "site")) is None
    reason = server.authorize_site(PeerIdentity("../jobs", 2, "x", "site"))
    assert reason is not None and "site id '../jobs' is not a plain name" in reason


def test_metric_counts_are_bounded():
    assert metrics_problem({f"m{i}": 1.0 for i in range(64)}) is None
    assert metrics_problem({f"m{i}": 1.0 for i in range(1000)}) == (
        "reported 1000 metrics, at most 64 are taken")
