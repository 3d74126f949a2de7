"""The wire codec: exact round trips, little overhead, and refusal of every malformed message."""

import json
import math
import struct
import tokenize

import numpy as np
import pytest
import xxhash

from fedcare.core.errors import TransportError
from fedcare.core.message import EvalResult, Reply, StatsResult, Task, TaskKind, TrainResult
from fedcare.core.weights import Weights
from fedcare.transport import codec
from fedcare.transport.codec import MAGIC, Hello, decode, encode

_PREFIX = struct.Struct("<I")


def _weights() -> Weights:
    return Weights({
        "w": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
        "b": np.array([1.5, -2.25, 1e300], dtype=np.float64),
        "steps": np.array([-(2**62), 0, 7], dtype=np.int64),
        "mask": np.array([[True, False], [False, True]]),
        "scale": np.array(0.5, dtype=np.float64),  # 0-d
        "empty": np.zeros(0, dtype=np.float32),
        "half": np.array([0.5, -1.0], dtype=np.float16),
        "bytes": np.array([0, 255], dtype=np.uint8),
    })


def _task(weights: Weights | None = None) -> Task:
    return Task(
        task_id="r3-site-a", job_id="heart", round_num=3, kind=TaskKind.TRAIN,
        weights=weights if weights is not None else _weights(),
        config={"shuffle": True, "local_steps": 5, "lr": 0.01, "optimizer": "sgd", "mu": 1.0},
    )


def _assert_same_weights(got: Weights, expected: Weights) -> None:
    assert list(got) == list(expected)
    for name, array in expected.items():
        assert got[name].dtype == array.dtype, name
        assert got[name].shape == array.shape, name
        np.testing.assert_array_equal(got[name], array)
        assert got[name].flags.writeable is False, name


def _split(data: bytes) -> tuple[dict, bytes]:
    (size,) = _PREFIX.unpack_from(data, len(MAGIC))
    start = len(MAGIC) + _PREFIX.size
    return json.loads(data[start:start + size]), data[start + size:]


def _join(header: dict, payload: bytes, *, fix_checksum: bool = True) -> bytes:
    if fix_checksum:
        header = {**header, "payload_checksum": xxhash.xxh3_128(payload).hexdigest()}
    head = json.dumps(header).encode()
    return MAGIC + _PREFIX.pack(len(head)) + head + payload


def _refused(data: bytes, match: str, **kwargs: int) -> TransportError:
    with pytest.raises(TransportError, match=match) as info:
        decode(data, **kwargs)
    return info.value


def test_task_round_trip_keeps_every_field_dtype_and_config_type():
    task = _task()
    got = decode(encode(task))
    assert isinstance(got, Task)
    assert (got.task_id, got.job_id, got.round_num, got.kind) == ("r3-site-a", "heart", 3,
                                                                  TaskKind.TRAIN)
    assert got.weights is not None
    _assert_same_weights(got.weights, task.weights)
    assert got.weights["scale"].shape == ()
    assert dict(got.config) == dict(task.config)
    # the JSON header must not turn True into 1, 5 into 5.0 or 1.0 into 1
    assert {k: type(v) for k, v in got.config.items()} == {
        "shuffle": bool, "local_steps": int, "lr": float, "optimizer": str, "mu": float,
    }
    with pytest.raises(ValueError, match="read-only"):
        got.weights["w"][0, 0] = 1.0


def test_task_without_weights_and_with_empty_weights_stay_distinct():
    none = Task("t", "j", 0, TaskKind.EVALUATE)
    got = decode(encode(none))
    assert isinstance(got, Task)
    assert got.weights is None and got.kind is TaskKind.EVALUATE and dict(got.config) == {}
    got = decode(encode(_task(Weights({}))))
    assert isinstance(got, Task) and got.weights is not None and len(got.weights) == 0


def test_non_contiguous_arrays_are_sent_in_c_order():
    base = np.arange(24, dtype=np.int32).reshape(4, 6)
    weights = Weights({"strided": base[:, ::2], "fortran": np.asfortranarray(base)})
    got = decode(encode(_task(weights)))
    assert isinstance(got, Task) and got.weights is not None
    _assert_same_weights(got.weights, weights)


def test_train_reply_round_trip():
    reply = Reply("t1", "site-a", result=TrainResult(_weights(), 120, {"loss": 0.25, "acc": 1.0}))
    got = decode(encode(reply))
    assert isinstance(got, Reply) and isinstance(got.result, TrainResult)
    assert (got.task_id, got.site_id, got.error) == ("t1", "site-a", None)
    assert got.result.num_samples == 120
    assert dict(got.result.metrics) == {"loss": 0.25, "acc": 1.0}
    _assert_same_weights(got.result.weights, reply.result.weights)


def test_eval_and_stats_reply_round_trips():
    got = decode(encode(Reply("t2", "site-b", result=EvalResult(33, {"auc": 0.875}))))
    assert isinstance(got, Reply) and isinstance(got.result, EvalResult)
    assert (got.task_id, got.site_id) == ("t2", "site-b")
    assert got.result.num_samples == 33 and dict(got.result.metrics) == {"auc": 0.875}
    values = Weights({"count": np.array(40, dtype=np.int64), "sum": np.array([1.5, 2.5])})
    got = decode(encode(Reply("t3", "site-c", result=StatsResult(values, 40))))
    assert isinstance(got, Reply) and isinstance(got.result, StatsResult)
    assert got.result.num_samples == 40
    _assert_same_weights(got.result.values, values)


def test_error_reply_and_hello_round_trips():
    got = decode(encode(Reply("t4", "site-d", error="trainer raised: ValueError: bad batch é")))
    assert isinstance(got, Reply)
    assert got.result is None and got.error == "trainer raised: ValueError: bad batch é"
    assert (got.task_id, got.site_id) == ("t4", "site-d")
    assert decode(encode(Hello(site_id="a"))) == Hello(site_id="a")
    assert decode(encode(Hello(site_id="a", error="no data"))) == Hello(site_id="a",
                                                                        error="no data")


def test_non_finite_metrics_survive_the_codec():
    # The controller rejects NaN metrics; the codec must carry them faithfully so it can.
    metrics = {"loss": math.nan, "up": math.inf, "down": -math.inf, "ok": 0.5}
    got = decode(encode(Reply("t", "s", result=TrainResult(_weights(), 1, metrics))))
    assert isinstance(got, Reply) and isinstance(got.result, TrainResult)
    m = got.result.metrics
    assert list(m) == ["loss", "up", "down", "ok"]
    assert math.isnan(m["loss"]) and m["up"] == math.inf and m["down"] == -math.inf
    assert m["ok"] == 0.5


def test_wire_overhead_is_under_one_percent_for_a_large_model():
    weights = Weights({"w": np.ones(1_000_000, dtype=np.float32)})
    data = encode(_task(weights))
    assert weights.nbytes == 4_000_000
    assert weights.nbytes < len(data) <= 1.01 * weights.nbytes
    got = decode(data)
    assert isinstance(got, Task) and got.weights is not None
    assert got.weights["w"].sum() == 1_000_000


def test_codec_never_uses_pickle():
    # The docstring says "without pickle", so look at code tokens, not at the raw text.
    with open(codec.__file__, encoding="utf-8") as source:
        tokens = list(tokenize.generate_tokens(source.readline))
    names = {t.string for t in tokens if t.type == tokenize.NAME}
    assert not {n for n in names if "pickle" in n or n in {"marshal", "dill", "eval", "exec"}}
    assert "json" in names and "frombuffer" in names  # the tokenizer did see the code


# --- refusals --------------------------------------------------------------------------------


def test_bad_magic_and_truncated_header_are_refused():
    data = encode(_task())
    _refused(b"XXXX" + data[4:], "not a fedcare message")
    _refused(b"", "bad magic or truncated")
    _refused(data[:6], "bad magic or truncated")
    _refused(b"FCM1" + data[4:], "message format FCM1, this side speaks FCM2: the two run "
             "different fedcare versions")
    (size,) = _PREFIX.unpack_from(data, 4)
    _refused(data[:8 + size // 2], f"truncated message: header of {size} bytes")


def test_truncated_or_corrupted_payload_is_refused():
    data = encode(_task())
    _refused(data[:-3], "checksum mismatch")
    corrupted = bytearray(data)
    corrupted[-5] ^= 0x01
    _refused(bytes(corrupted), "payload checksum mismatch")


def test_header_that_is_not_json_is_refused():
    _, payload = _split(encode(_task()))
    head = b'{"type": "task", not json'
    _refused(MAGIC + _PREFIX.pack(len(head)) + head + payload, "malformed message header")
    head = b"\xff\xfe\x00"
    _refused(MAGIC + _PREFIX.pack(len(head)) + head + payload, "malformed message header")


def test_header_with_an_unknown_field_is_refused():
    header, payload = _split(encode(_task()))
    err = _refused(_join({**header, "exec": "os.system('x')"}, payload),
                   "malformed message header")
    assert "exec" in str(err)


def test_header_of_the_wrong_shape_is_refused():
    header, payload = _split(encode(_task()))
    _refused(_join({**header, "round_num": [3]}, payload), "malformed message header")
    _refused(_join({**header, "config": {"nested": {"a": 1}}}, payload),
             "malformed message header")
    header["tensors"][0]["shape"] = [-3, -4]
    _refused(_join(header, payload), r"task 'r3-site-a': tensor 'w': bad shape: dimension 0 is -3")
    header["tensors"][0]["shape"] = [3, "4"]
    _refused(_join(header, payload), "malformed message header")
    header["tensors"][0].update(shape=[3, 4], dtype="float31")
    _refused(_join(header, payload), "dtype 'float31' is not allowed")


@pytest.mark.parametrize("dtype", ["object", "|O", "<U3", "|S8", ">f4", "<M8[s]"])
def test_header_declaring_a_forbidden_dtype_is_refused(dtype):
    header, payload = _split(encode(_task()))
    header["tensors"][0]["dtype"] = dtype
    err = _refused(_join(header, payload), "dtype .* is not allowed")
    assert "'w'" in str(err)


def test_shape_needing_more_bytes_than_present_is_refused():
    weights = Weights({"a": np.zeros(3, np.float32), "b": np.zeros(2, np.float32)})
    header, payload = _split(encode(_task(weights)))
    header["tensors"][1]["shape"] = [3]
    _refused(_join(header, payload, fix_checksum=False),
             r"tensor 'b': shape \[3\] needs 12 bytes, only 8 left")
    header["tensors"][1]["shape"] = [2**40, 2**40]  # no overflow, just refused
    _refused(_join(header, payload), r"tensor 'b': bad shape: dimensions \[1099511627776, "
             r"1099511627776\] hold more than 2\*\*40 elements")


def test_extra_undescribed_payload_bytes_are_refused():
    header, payload = _split(encode(_task()))
    _refused(_join(header, payload + b"\x00" * 7), "7 payload bytes not described")
    # tensors absent from the header but bytes present: still refused
    header, payload = _split(encode(_task(Weights({}))))
    _refused(_join(header, payload + b"\x01\x02"), "2 payload bytes not described")


def test_duplicate_tensor_names_are_refused():
    weights = Weights({"a": np.zeros(2, np.float32), "b": np.ones(2, np.float32)})
    header, payload = _split(encode(_task(weights)))
    header["tensors"][1]["name"] = "a"
    _refused(_join(header, payload), "tensor 'a' appears twice")


def test_reply_with_both_result_and_error_is_refused():
    header, payload = _split(encode(Reply("t", "s", result=EvalResult(3, {"auc": 0.5}))))
    _refused(_join({**header, "error": "also failed"}, payload), "exactly one of result and error")
    del header["result"]
    _refused(_join(header, payload), "exactly one of result and error")


def test_messages_missing_a_required_part_are_refused():
    header, payload = _split(encode(Reply("t", "s", result=TrainResult(_weights(), 3))))
    del header["tensors"]
    _refused(_join(header, b""), "train reply without tensors")
    header, payload = _split(encode(_task()))
    del header["kind"]
    _refused(_join(header, payload), "task message without a kind")


def test_message_above_max_bytes_is_refused():
    data = encode(_task())
    assert isinstance(decode(data, max_bytes=len(data)), Task)
    _refused(data, f"message of {len(data)} bytes exceeds the limit of {len(data) - 1}",
             max_bytes=len(data) - 1)


# --- hostile or unusual inputs: only TransportError ever leaves the codec -------------------


def test_multi_dimensional_empty_array_round_trips():
    weights = Weights({"e": np.zeros((0, 3), np.float32)})
    got = decode(encode(_task(weights)))
    assert isinstance(got, Task) and got.weights is not None
    _assert_same_weights(got.weights, weights)


_HOSTILE = {  # tensor index -> header changes; "empty" (index 5) has 0 elements, needs 0 bytes
    "dtype-ValueError": (0, {"dtype": "(-1,)f4"}),
    "zero-size-huge-dim": (5, {"shape": [0, 2**63]}),
    "zero-size-70-dims": (5, {"shape": [0] * 70}),
}


@pytest.mark.parametrize("case", [*_HOSTILE, "deeply-nested-json"])
def test_decode_refuses_hostile_headers_with_transport_error(case):
    header, payload = _split(encode(_task()))
    data = MAGIC + _PREFIX.pack(100_000) + b"[" * 100_000 + payload
    if case in _HOSTILE:
        header["tensors"][_HOSTILE[case][0]].update(_HOSTILE[case][1])
        data = _join(header, payload)
    with pytest.raises(TransportError):
        decode(data)


def test_typed_task_fields_and_open_task_kinds_round_trip():
    from fedcare.core.message import JobRef

    task = Task("t", "j", 2, "masked_collect", None, {"lr": 0.1},
                job=JobRef("pkg.job:make", '{"seed": 3}', 2, 5), local_names=("bn", "^x$"))
    got = decode(encode(task))
    assert got.kind == "masked_collect" and got.job == task.job
    assert got.local_names == ("bn", "^x$")
    builtin = decode(encode(Task("t", "j", 2, "validate")))
    assert builtin.kind is TaskKind.VALIDATE  # built-in kinds come back as TaskKind members
    header, payload = _split(encode(task))
    for kind in ("Train", "../x", "a b", "", "x" * 65):
        with pytest.raises(TransportError, match="malformed message header"):
            decode(_join({**header, "kind": kind}, payload))
    with pytest.raises(TransportError, match="malformed message header"):
        decode(_join({**header, "job": {**header["job"], "site_index": -1}}, payload))


def test_ids_and_error_texts_are_bounded_before_they_reach_a_log_or_a_row():
    reply = Reply("t", "site-a", error="disk full")
    header, payload = _split(encode(reply))
    for field, value in (("task_id", "x" * 50_000), ("site_id", "s" * 2000),
                         ("job_id", "j" * 1025), ("error", "e" * 70_000)):
        with pytest.raises(TransportError, match="malformed message header") as info:
            decode(_join({**header, field: value}, payload))
        message = str(info.value)
        assert len(message) <= 1100 and "\n" not in message  # one bounded line
    ok = decode(_join({**header, "task_id": "t" * 1024}, payload))
    assert ok.task_id == "t" * 1024


@pytest.mark.parametrize(("shape", "problem"), [
    ([0, 2**62], r"dimension 1 is 4611686018427387904, must be in 0..2\*\*40"),
    ([0, 2**40, 2**40], r"dimensions \[0, 1099511627776, 1099511627776\] hold more than"),
    ([0, *[2**20] * 3], r"dimensions \[0, 1048576, 1048576, 1048576\] hold more than"),
    ([2, -1], "dimension 1 is -1"),
    ([0, -(2**70)], r"dimension 1 is -2\*\*70\+"),
    ([0] * 33, "33 dimensions, at most 32"),
    ([0, 10**30], r"dimension 1 is 2\*\*99\+"),
])
def test_a_shape_from_the_wire_is_checked_before_numpy_sees_it(shape, problem):
    """Each dimension and the product of the non-zero ones are bounded: a zero dimension makes
    the tensor empty (0 bytes), but numpy would still refuse (0, 2**40, 2**40) with a
    ValueError ("array is too big"), which once became an internal error at the server."""
    weights = Weights({"e": np.zeros((0, 3), np.float32)})
    header, payload = _split(encode(Reply("t-1", "site-b", result=TrainResult(weights, 2))))
    header["tensors"][0]["shape"] = shape
    err = _refused(_join(header, payload), r"^reply 't-1' from site site-b: tensor 'e': bad "
                   r"shape: " + problem)
    assert len(str(err)) < 400
    # the transport names the sender it verified, not the one the header claims
    with pytest.raises(TransportError, match=r"^reply 't-1' from site verified-b: tensor 'e'"):
        decode(_join(header, payload), sender="site verified-b")


def test_the_largest_allowed_empty_shape_decodes_to_an_empty_array():
    weights = Weights({"e": np.zeros((0, 3), np.float32)})
    header, payload = _split(encode(_task(weights)))
    header["tensors"][0]["shape"] = [0, 2**20, 2**20]
    got = decode(_join(header, payload))
    assert got.weights["e"].shape == (0, 2**20, 2**20) and got.weights["e"].nbytes == 0


def test_counts_of_metrics_settings_tensors_and_the_header_length_are_bounded():
    reply = Reply("t", "s", result=EvalResult(3, {f"m{i}": 0.5 for i in range(1024)}))
    assert len(decode(encode(reply)).result.metrics) == 1024
    header, payload = _split(encode(reply))
    header["result"]["metrics"]["one-more"] = 1.0
    _refused(_join(header, payload), "malformed message header")
    header, payload = _split(encode(_task()))
    for config in ({f"k{i}": 1 for i in range(1025)}, {"k": "x" * 65537}, {"k" * 1025: 1}):
        _refused(_join({**header, "config": config}, payload), "malformed message header")
    data = MAGIC + _PREFIX.pack(codec.MAX_HEADER_BYTES + 1) + b"{}"
    _refused(data, "header of 67108865 bytes announced, at most 67108864")


def test_the_task_id_of_a_message_that_cannot_be_decoded_can_still_be_read():
    header, payload = _split(encode(_task()))
    header["tensors"][0]["shape"] = [0, 2**40, 2**40]
    assert codec.peek_task_id(_join(header, payload)) == "r3-site-a"
    for data in (b"", b"FCM2", MAGIC + _PREFIX.pack(5) + b"[1,2]", MAGIC + _PREFIX.pack(99),
                 _join({**header, "task_id": 7}, payload)):
        assert codec.peek_task_id(data) is None
