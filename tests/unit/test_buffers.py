"""Model memory handed out again only once nothing can see it change."""

import gc

import numpy as np

from fedcare import FedAvg, Weights
from fedcare.core.buffers import BufferPool
from fedcare.core.weights import TensorSpec

SPECS = [TensorSpec("w", "<f4", (300, 7)), TensorSpec("half", "<f2", (3,)),
         TensorSpec("d", "<f8", (5,)), TensorSpec("empty", "<f4", (0,))]


def test_arrays_are_disjoint_aligned_and_of_the_asked_shapes():
    arrays = BufferPool().arrays(SPECS)
    assert [(a.dtype.str, a.shape) for a in arrays] == [(s.dtype, s.shape) for s in SPECS]
    assert all(a.ctypes.data % 64 == 0 for a in arrays if a.size)
    for i, a in enumerate(arrays):
        a[...] = i + 1
    assert [float(a.reshape(-1)[0]) for a in arrays[:3]] == [1.0, 2.0, 3.0]
    assert (arrays[0] == 1).all()


def test_memory_is_reused_only_when_no_array_views_it():
    pool = BufferPool(keep=2)
    first = pool.arrays(SPECS)
    first[0][...] = 7
    second = pool.arrays(SPECS)  # the first is still in use
    assert not np.may_share_memory(first[0], second[0])
    assert (first[0] == 7).all()
    kept = first[0][3:5]  # any view, however small, keeps it in use
    del first
    gc.collect()
    third = pool.arrays(SPECS)
    assert not np.may_share_memory(third[0], kept) and (kept == 7).all()
    second_address = second[0].ctypes.data
    del kept, second
    gc.collect()
    again = pool.arrays(SPECS)
    assert again[0].ctypes.data == second_address  # free again: handed out, not fresh


def stream_round(strategy, start, values):
    aggregator = strategy.aggregator(1, start)
    stream = aggregator.stream("s", 2, start.specs())
    for index, array in enumerate(values.values()):
        stream.write(index, 0, array.reshape(-1))
    stream.commit()
    return aggregator.finish()


def test_fedavg_writes_each_new_model_into_the_memory_of_one_no_longer_used():
    strategy = FedAvg()
    start = Weights({"w": np.zeros(4096, np.float32)})
    models = [start]
    for r in range(1, 5):
        models.append(stream_round(strategy, models[-1],
                                   Weights({"w": np.full(4096, r, np.float32)})))
    # each model still held keeps its own values: no reuse while anything views it
    assert [float(m["w"][0]) for m in models] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert len({m["w"].ctypes.data for m in models}) == 5
    addresses = {m["w"].ctypes.data for m in models[1:]}
    del models[:-1]  # only the newest model is still in use
    gc.collect()
    newer = stream_round(strategy, models[-1], Weights({"w": np.full(4096, 9, np.float32)}))
    assert newer["w"].ctypes.data in addresses  # an old model's memory, not fresh pages
    assert float(newer["w"][0]) == 9.0 and float(models[-1]["w"][0]) == 4.0
    assert not newer["w"].flags.writeable


def test_a_streamed_round_gives_a_model_nobody_can_make_writable_again():
    import pytest

    start = Weights({"w": np.zeros((30, 7), np.float32), "d": np.zeros(4),
                     "n": np.zeros((), np.int64)})
    out = stream_round(FedAvg(), start, Weights({"w": np.ones((30, 7), np.float32),
                                                  "d": np.full(4, 3.0), "n": np.array(5)}))
    assert [float(out[k].reshape(-1)[0]) for k in out] == [1.0, 3.0, 5.0]
    for name in out:
        with pytest.raises(ValueError):
            out[name].flags.writeable = True
