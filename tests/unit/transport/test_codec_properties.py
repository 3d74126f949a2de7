"""Properties of the codec over generated input (hypothesis; bench/fuzz.py runs many more).

For any bytes at all, for valid messages with bytes changed, and for headers saying anything
(shapes, dtypes, ids, counts), ``decode`` returns a message or raises TransportError, nothing
else, and allocates in proportion to the bytes it was given, not to what they claim. Valid
messages come back bit for bit.
"""

import json
import tracemalloc

import numpy as np
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedcare.core.errors import TransportError
from fedcare.core.message import EvalResult, JobRef, Reply, StatsResult, Task, TrainResult
from fedcare.core.weights import ALLOWED_DTYPES, Weights
from fedcare.transport.codec import HEADER_AT, MAGIC, Hello, decode, encode

FAST = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DTYPES = sorted(d.str for d in ALLOWED_DTYPES)
names = st.text(min_size=1, max_size=12)
ids = st.text(max_size=30)


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    raw = draw(st.binary(min_size=dtype.itemsize * int(np.prod(shape)),
                         max_size=dtype.itemsize * int(np.prod(shape))))
    return np.frombuffer(raw, dtype).reshape(shape)  # any bits: NaNs, infinities, -0.0


weights = st.dictionaries(names, arrays(), max_size=4).map(Weights)
metrics = st.dictionaries(names, st.floats(allow_nan=False), max_size=4)
scalars = st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(), ids)
kinds = st.sampled_from(["train", "evaluate", "statistics", "prepare", "masked_collect"])
jobs = st.builds(JobRef, st.text(max_size=20), st.just('{"seed": 1}'), st.integers(0, 9),
                 st.integers(1, 10))
tasks = st.builds(Task, ids, ids, st.integers(-5, 10**6), kinds, st.none() | weights,
                  st.dictionaries(names, scalars, max_size=4), st.none() | jobs,
                  st.lists(names, max_size=3).map(tuple))
results = st.one_of(st.builds(TrainResult, weights, st.integers(0, 2**53), metrics),
                    st.builds(EvalResult, st.integers(0, 2**53), metrics),
                    st.builds(StatsResult, weights, st.integers(0, 2**53)))
replies = st.one_of(st.builds(lambda t, s, r: Reply(t, s, result=r), ids, ids, results),
                    st.builds(lambda t, s, e: Reply(t, s, error=e), ids, ids,
                              st.text(max_size=200)))
messages = st.one_of(tasks, replies, st.builds(Hello, site_id=ids, error=st.none() | ids))


def same_weights(got: Weights | None, sent: Weights | None) -> bool:
    if got is None or sent is None:
        return got is sent
    return list(got) == list(sent) and all(
        got[n].dtype == sent[n].dtype and got[n].shape == sent[n].shape
        and got[n].tobytes() == sent[n].tobytes() for n in sent)


def decoded_or_refused(data: bytes) -> object:
    """decode's answer, checking it allocated at most twice what it was given (+ 1 MiB for
    the interpreter's own odds and ends); None if refused with a TransportError."""
    tracemalloc.start()
    try:
        return decode(data)
    except TransportError:
        return None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak <= 2 * len(data) + 1024**2, f"decode of {len(data)} bytes allocated {peak}"


@FAST
@given(messages)
def test_valid_messages_round_trip_bit_exactly(message):
    got = decode(encode(message))
    assert type(got) is type(message)
    if isinstance(message, Task):
        assert (got.task_id, got.job_id, got.round_num, got.kind, got.job, got.local_names) == (
            message.task_id, message.job_id, message.round_num, message.kind, message.job,
            message.local_names)
        assert json.dumps(dict(got.config)) == json.dumps(dict(message.config))  # types too
        assert same_weights(got.weights, message.weights)
    elif isinstance(message, Reply):
        assert (got.task_id, got.site_id, got.error) == (message.task_id, message.site_id,
                                                         message.error)
        if message.result is not None:
            assert type(got.result) is type(message.result)
            assert got.result.num_samples == message.result.num_samples
            assert dict(getattr(got.result, "metrics", {})) == dict(
                getattr(message.result, "metrics", {}))
            sent = getattr(message.result, "weights", getattr(message.result, "values", None))
            back = getattr(got.result, "weights", getattr(got.result, "values", None))
            assert same_weights(back, sent)
    else:
        assert got == message


@FAST
@given(st.one_of(st.binary(max_size=600), st.binary(max_size=600).map(lambda b: MAGIC + b)))
def test_any_bytes_are_a_message_or_a_transport_error(data):
    decoded_or_refused(data)


@FAST
@given(messages, st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete", "cut"]),
                                    st.integers(0, 2**16), st.integers(1, 255)),
                          min_size=1, max_size=4))
def test_valid_messages_with_bytes_changed_are_a_message_or_a_transport_error(message, edits):
    data = bytearray(encode(message))
    for action, at, value in edits:
        at %= max(len(data), 1)
        if action == "flip" and data:
            data[at] ^= value
        elif action == "insert":
            data[at:at] = bytes([value])
        elif action == "delete":
            del data[at:at + value]
        elif action == "cut":
            del data[at:]
    decoded_or_refused(bytes(data))


dims = st.one_of(st.integers(0, 5), st.integers(-(2**70), 2**70), st.just(0),
                 st.sampled_from([2**40, 2**40 + 1, 2**62, 2**63, 2**64]))
tensor_headers = st.fixed_dictionaries({
    "name": st.one_of(names, st.text(max_size=3)),
    "dtype": st.one_of(st.sampled_from(DTYPES), st.sampled_from(["|O", "<U3", "V8", "(2,)f4",
                                                                 "f4", "float31", ""])),
    "shape": st.lists(dims, max_size=40),
})
headers = st.fixed_dictionaries(
    {"type": st.sampled_from(["task", "reply", "hello", "other"])},
    optional={"task_id": ids, "site_id": ids, "job_id": ids,
              "round_num": st.integers(-(2**70), 2**70),
              "kind": kinds, "config": st.dictionaries(names, scalars, max_size=3),
              "result": st.fixed_dictionaries({
                  "kind": st.sampled_from(["train", "evaluate", "statistics"]),
                  "num_samples": st.integers(-5, 2**70),
                  "metrics": st.dictionaries(names, st.floats(), max_size=3)}),
              "error": st.text(max_size=20),
              "tensors": st.lists(tensor_headers, max_size=4)})


@FAST
@given(headers, st.binary(max_size=200))
def test_headers_saying_anything_are_a_message_or_a_transport_error(header, payload):
    header = {**header, "payload_checksum": xxhash.xxh3_128(payload).hexdigest()}
    head = json.dumps(header).encode()
    data = MAGIC + len(head).to_bytes(4, "little") + head + payload
    message = decoded_or_refused(data)
    tensors = (getattr(message, "weights", None)
               or getattr(getattr(message, "result", None), "weights", None)
               or getattr(getattr(message, "result", None), "values", None))
    if tensors is not None:  # what was decoded is exactly the payload, viewed, never more
        assert sum(a.nbytes for a in tensors.values()) == len(data) - HEADER_AT - len(head)
