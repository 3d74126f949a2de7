import numpy as np
import pytest

from fedcare import Weights
from fedcare.core.validation import incompatibilities, non_finite


def test_weights_are_ordered_read_only_views():
    source = np.arange(6, dtype=np.float32).reshape(2, 3).copy()  # owns its memory
    w = Weights({"b": np.zeros(2), "a": source})
    assert list(w) == ["b", "a"]
    with pytest.raises(ValueError):
        w["a"][0, 0] = 5
    with pytest.raises(ValueError):  # taken over without a copy: read-only for its creator too
        source[0, 0] = 7
    assert np.shares_memory(w["a"], source)
    sliced = np.zeros((4, 3), np.float32)
    v = Weights({"a": sliced[:2]})  # a view of memory the caller can still write: copied
    sliced[0, 0] = 7
    assert v["a"][0, 0] == 0
    copy = w.copy()
    copy["a"][0, 0] = 1
    assert w["a"][0, 0] == 0
    assert w.nbytes == 6 * 4 + 2 * 8


def test_object_arrays_are_refused():
    with pytest.raises(TypeError, match="unsupported dtype"):
        Weights({"x": np.array([object()])})
    with pytest.raises(TypeError, match="names"):
        Weights({"": np.zeros(1)})


def test_incompatibilities_lists_every_problem():
    ref = Weights({"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)})
    got = {"w": np.zeros((3, 2), np.float64), "c": np.zeros(3, np.float32)}
    problems = incompatibilities(ref, got)
    assert "missing parameters ['b']" in problems
    assert "unexpected parameters ['c']" in problems
    assert "w: shape [3, 2], expected [2, 3]" in problems
    assert "w: dtype float64, expected float32" in problems
    assert incompatibilities(ref, ref) == []


def test_non_finite_names_the_parameters():
    w = {"a": np.array([1.0, np.nan]), "b": np.array([np.inf]), "c": np.array([1, 2]),
         "d": np.ones(3)}
    assert non_finite(w) == ["a", "b"]


def test_adopted_buffers_are_not_copied_and_stay_read_only():
    buffer = bytearray(np.arange(4, dtype=np.float32).tobytes())
    w = Weights.adopt({"x": np.frombuffer(buffer, np.float32)})
    assert np.shares_memory(w["x"], np.frombuffer(buffer, np.float32))
    with pytest.raises(ValueError):
        w["x"][0] = 1
    np.testing.assert_array_equal(w["x"], [0, 1, 2, 3])
