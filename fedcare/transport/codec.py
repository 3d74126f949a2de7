"""Binary encoding of Tasks and Replies without pickle.

A message is ``MAGIC | u32 header length | JSON header | raw tensor bytes``. The header lists
every tensor's name, dtype and shape in payload order and the payload's checksum (XXH3-128,
see :mod:`fedcare.transport.checksum`); decoding checks
each field against a schema, each dtype against an allow-list, that the shapes account for every
payload byte, and the checksum. Nothing in a message can make the decoder run code. Arrays are
decoded as zero-copy read-only views of the received buffer.

Everything a peer sends is bounded before it is used: the header's length, every id, text and
list in it, the count and names of metrics and settings, and every tensor's shape (each
dimension and their product, in Python integers, before numpy sees them: see
:func:`fedcare.core.weights.shape_problem`). A message that breaks a bound is refused with a
:class:`~fedcare.core.errors.TransportError` that names the tensor or field and the sender;
``decode`` raises nothing else, whatever the bytes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import mmap
import struct
from typing import Annotated, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)
from pydantic import ValidationError as _PydanticValidationError

from fedcare.core.errors import TransportError
from fedcare.core.message import (
    KIND_PATTERN,
    EvalResult,
    JobRef,
    Reply,
    Result,
    StatsResult,
    Task,
    TrainResult,
    task_kind,
)
from fedcare.core.text import one_line
from fedcare.core.weights import ALLOWED_DTYPES, MAX_TENSOR_DIMS, Weights, shape_problem
from fedcare.transport import checksum

#: Format version 2: the payload checksum is XXH3-128 (version 1 had SHA-256).
MAGIC = b"FCM2"
_HEADER_LEN = struct.Struct("<I")
#: Where the JSON header starts in a message.
HEADER_AT = len(MAGIC) + _HEADER_LEN.size
#: Default refusal size for one decoded message (the gRPC transport streams larger models).
DEFAULT_MAX_MESSAGE_BYTES = 2 * 1024**3
#: The longest JSON header a message may have (a header lists names, not values: a model of a
#: hundred thousand tensors needs a few MiB).
MAX_HEADER_BYTES = 64 * 1024**2
#: The most tensors one message may carry.
MAX_TENSORS = 100_000
#: The most metrics one result, and settings one task, may carry on the wire (the server
#: accepts fewer metrics: ``fedcare.server.checks.MAX_METRICS``).
MAX_WIRE_METRICS = 1024
#: The longest text value of a task setting.
MAX_SETTING_CHARS = 65536

_DTYPES = {d.str: d for d in ALLOWED_DTYPES} | {d.name: d for d in ALLOWED_DTYPES}
_Scalar = (StrictBool | StrictInt | StrictFloat
           | Annotated[StrictStr, Field(max_length=MAX_SETTING_CHARS)])
_Name = Annotated[str, Field(min_length=1, max_length=1024)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")


class _TensorHeader(_Model):
    name: _Name
    dtype: Annotated[str, Field(max_length=64)]
    # each dimension and the product are checked by shape_problem, naming the tensor
    shape: list[StrictInt] = Field(max_length=2 * MAX_TENSOR_DIMS)


class _ResultHeader(_Model):
    # The result's shape (a model, metrics, or statistics), not the task's kind: any task
    # kind answers with one of these three.
    kind: Literal["train", "evaluate", "statistics"]
    num_samples: Annotated[int, Field(ge=0)]
    metrics: dict[_Name, float] = Field(default_factory=dict, max_length=MAX_WIRE_METRICS)


class _JobHeader(_Model):
    entry_point: Annotated[str, Field(max_length=1024)]
    params_json: Annotated[str, Field(max_length=1_000_000)] = "{}"
    site_index: Annotated[int, Field(ge=0, lt=2**31)] = 0
    num_sites: Annotated[int, Field(ge=1, lt=2**31)] = 1
    package: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None


#: An id in a message (task, site, job): fedcare's own are far shorter; a longer one is refused
#: before it can reach a log line or a database row.
_Id = Annotated[str, Field(max_length=1024)]
#: The longest error text a reply may carry (a site's one-line reason is at most 2000).
MAX_ERROR_BYTES = 65536


class _Header(_Model):
    type: Literal["task", "reply", "hello"]
    task_id: _Id = ""
    site_id: _Id = ""
    job_id: _Id = ""
    round_num: int = 0
    kind: Annotated[str, Field(pattern=KIND_PATTERN)] | None = None
    config: dict[_Name, _Scalar] = Field(default_factory=dict, max_length=MAX_WIRE_METRICS)
    job: _JobHeader | None = None
    local_names: list[_Name] = Field(default_factory=list, max_length=100_000)
    result: _ResultHeader | None = None
    error: Annotated[str, Field(max_length=MAX_ERROR_BYTES)] | None = None
    tensors: list[_TensorHeader] | None = Field(default=None, max_length=MAX_TENSORS)
    payload_checksum: Annotated[str, Field(max_length=128)]
    instance: Annotated[str, Field(max_length=64)] | None = None


class Hello(_Model):
    """First message of a site connection: who is there, or why it cannot serve."""

    site_id: str
    error: str | None = None
    #: Random per site process: tells a reconnect (same process) from a second process that
    #: uses a copy of the same kit (refused while the first is connected).
    instance: str | None = None


def _tensors(weights: Weights | None) -> tuple[list[_TensorHeader] | None, list[memoryview]]:
    if weights is None:
        return None, []
    headers, buffers = [], []
    for name, array in weights.items():
        # not np.ascontiguousarray: it would turn a 0-d array into shape (1,)
        contiguous = array if array.flags.c_contiguous else np.array(array, order="C")
        headers.append(
            _TensorHeader(name=name, dtype=contiguous.dtype.str, shape=list(contiguous.shape))
        )
        buffers.append(contiguous.reshape(-1).data.cast("B"))
    return headers, buffers


def _frame(header: _Header, buffers: list[memoryview]) -> list[bytes | memoryview]:
    head = header.model_dump_json(exclude_none=True).encode()
    return [MAGIC, _HEADER_LEN.pack(len(head)), head, *buffers]


_last_digest: tuple[Weights, str] | None = None


def _digest(buffers: list[memoryview], weights: Weights | None = None) -> str:
    """Checksum of the payload; the same model sent to N sites is hashed once, not N times.

    Weights are immutable, so the digest of the last model encoded can be reused.
    """
    global _last_digest
    cached = _last_digest
    if weights is not None and cached is not None and cached[0] is weights:
        return cached[1]
    digest = checksum.of(buffers)
    if weights is not None:
        _last_digest = (weights, digest)
    return digest


def encode(message: Task | Reply | Hello) -> bytes:
    """One message as bytes; the tensors are copied once, into the output."""
    return b"".join(encode_parts(message))


def encode_parts(message: Task | Reply | Hello) -> list[bytes | memoryview]:
    """One message as a list of buffers, the tensors as zero-copy views (for streaming)."""
    if isinstance(message, Hello):
        header = _Header(type="hello", site_id=message.site_id, error=message.error,
                         instance=message.instance, payload_checksum=_digest([]))
        return _frame(header, [])
    if isinstance(message, Task):
        tensors, buffers = _tensors(message.weights)
        header = _Header(
            type="task", task_id=message.task_id, job_id=message.job_id,
            round_num=message.round_num, kind=str(message.kind), config=dict(message.config),
            job=(_JobHeader(**dataclasses.asdict(message.job)) if message.job is not None
                 else None),
            local_names=list(message.local_names),
            tensors=tensors, payload_checksum=_digest(buffers, message.weights),
        )
        return _frame(header, buffers)
    result = message.result
    weights = None
    result_header = None
    if result is not None:
        kind: Literal["train", "evaluate", "statistics"]
        if isinstance(result, TrainResult):
            kind, weights, metrics = "train", result.weights, dict(result.metrics)
        elif isinstance(result, EvalResult):
            kind, metrics = "evaluate", dict(result.metrics)
        else:
            kind, weights, metrics = "statistics", result.values, {}
        result_header = _ResultHeader(kind=kind, num_samples=result.num_samples, metrics=metrics)
    tensors, buffers = _tensors(weights)
    header = _Header(
        type="reply", task_id=message.task_id, site_id=message.site_id, result=result_header,
        error=message.error, tensors=tensors, payload_checksum=_digest(buffers),
    )
    return _frame(header, buffers)


def tensor_layout(name: str, dtype_name: str, shape: list[int], origin: str = ""
                  ) -> tuple[np.dtype, int]:
    """The dtype and element count a tensor header describes, or a TransportError naming the
    tensor (after ``origin``, e.g. "reply 't' from site a") if it cannot describe one.

    Nothing is allocated and nothing reaches numpy before this passes.
    """
    where = f"{origin}: " if origin else ""
    # Look the dtype up instead of handing an untrusted string to np.dtype().
    dtype = _DTYPES.get(dtype_name)
    if dtype is None:
        raise TransportError(f"{where}tensor {one_line(name, 200)!r}: dtype "
                             f"{one_line(dtype_name, 64)!r} is not allowed")
    problem = shape_problem(shape)
    if problem is not None:
        raise TransportError(f"{where}tensor {one_line(name, 200)!r}: bad shape: {problem}")
    return dtype, math.prod(shape)


def _decode_tensors(specs: list[_TensorHeader], payload: memoryview, adopt: bool,
                    origin: str) -> Weights:
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for spec in specs:
        dtype, count = tensor_layout(spec.name, spec.dtype, spec.shape, origin)
        if spec.name in arrays:
            raise TransportError(f"{origin}: tensor {one_line(spec.name, 200)!r} appears twice")
        nbytes = count * dtype.itemsize
        if offset + nbytes > len(payload):
            raise TransportError(
                f"{origin}: tensor {one_line(spec.name, 200)!r}: shape {spec.shape} needs "
                f"{nbytes} bytes, only {len(payload) - offset} left in the message"
            )
        flat = np.frombuffer(payload, dtype=dtype, count=count, offset=offset)
        arrays[spec.name] = flat.reshape(spec.shape)
        offset += nbytes
    if offset != len(payload):
        raise TransportError(f"{origin}: {len(payload) - offset} payload bytes not described by "
                             "the header")
    return Weights.adopt(arrays) if adopt else Weights(arrays)


def _origin(header: _Header, sender: str | None) -> str:
    """What a message is and who sent it, for an error about it: "reply 't' from site a"."""
    claimed = f"site {one_line(header.site_id, 80)}" if header.site_id else ""
    source = sender or claimed
    return (f"{header.type} {one_line(header.task_id, 200)!r}" if header.task_id
            else header.type) + (f" from {source}" if source else "")


def header_size(parts: list[bytes | memoryview]) -> int:
    """How many leading bytes of a message from :func:`encode_parts` are its header."""
    return HEADER_AT + len(parts[2])


def payload_offset(head: memoryview) -> int | None:
    """Where the payload starts in a message beginning with ``head`` (None: cannot tell yet)."""
    start = HEADER_AT
    if len(head) < start or bytes(head[:len(MAGIC)]) != MAGIC:
        return None
    length: int = _HEADER_LEN.unpack_from(head, len(MAGIC))[0]
    return start + length


def peek_task_id(data: bytes | bytearray | memoryview | mmap.mmap) -> str | None:
    """The task id a message that could not be decoded says it answers or carries, if it says
    one at all, so the receiver can still answer that task with an error (never raises)."""
    try:
        view = memoryview(data)
        at = payload_offset(view)
        if at is None or at > len(view) or at - HEADER_AT > MAX_HEADER_BYTES:
            return None
        header = json.loads(bytes(view[HEADER_AT:at]))
    except (ValueError, TypeError, RecursionError):
        return None
    task_id = header.get("task_id") if isinstance(header, dict) else None
    return task_id if isinstance(task_id, str) and 0 < len(task_id) <= 1024 else None


def decode(data: bytes | bytearray | memoryview | mmap.mmap, *,
           max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, adopt: bool = False,
           payload_checksum: str | None = None, sender: str | None = None
           ) -> Task | Reply | Hello:
    """Parse one message, refusing anything malformed with a TransportError saying what.

    Raises only TransportError, whatever ``data`` holds, and allocates nothing in proportion to
    what the message *says* (only to its actual length). ``sender``: who the transport knows
    sent it (a verified site name, "the server"), named in errors; else the claimed site id.

    The tensors are views of ``data``. With ``adopt`` the caller hands ``data`` over for good
    (a buffer nobody else will write, like a freshly reassembled message) and the tensors are
    not copied even when ``data`` is writable. ``payload_checksum``: the payload's digest, already
    computed by the caller over these very bytes (the gRPC reassembler hashes as chunks arrive).
    """
    view = memoryview(data)
    if len(view) > max_bytes:
        raise TransportError(f"message of {len(view)} bytes exceeds the limit of {max_bytes}")
    if len(view) < len(MAGIC) + _HEADER_LEN.size or bytes(view[:4]) != MAGIC:
        if len(view) >= 4 and bytes(view[:3]) == MAGIC[:3] and bytes(view[:4]) != MAGIC:
            raise TransportError(f"message format {bytes(view[:4]).decode(errors='replace')}, "
                                 f"this side speaks {MAGIC.decode()}: the two run different "
                                 "fedcare versions")
        raise TransportError("not a fedcare message (bad magic or truncated)")
    (head_len,) = _HEADER_LEN.unpack_from(view, 4)
    start = 4 + _HEADER_LEN.size
    if head_len > MAX_HEADER_BYTES:
        raise TransportError(f"header of {head_len} bytes announced, at most "
                             f"{MAX_HEADER_BYTES} allowed")
    if start + head_len > len(view):
        raise TransportError(f"truncated message: header of {head_len} bytes announced")
    try:
        header = _Header.model_validate(json.loads(bytes(view[start:start + head_len])))
    except (ValueError, RecursionError, _PydanticValidationError) as exc:
        # the peer's own bytes may be quoted in the message: one bounded line of them
        raise TransportError(f"malformed message header: {one_line(exc, 1000)}") from None
    payload = view[start + head_len:]
    digest = payload_checksum or checksum.of([payload])
    if digest != header.payload_checksum:
        raise TransportError("payload checksum mismatch (corrupted or truncated message)")
    weights = (_decode_tensors(header.tensors, payload, adopt, _origin(header, sender))
               if header.tensors is not None else None)
    if header.type == "hello":
        return Hello(site_id=header.site_id, error=header.error, instance=header.instance)
    if header.type == "task":
        if header.kind is None:
            raise TransportError("task message without a kind")
        job = JobRef(**header.job.model_dump()) if header.job is not None else None
        return Task(task_id=header.task_id, job_id=header.job_id, round_num=header.round_num,
                    kind=task_kind(header.kind), weights=weights, config=header.config,
                    job=job, local_names=tuple(header.local_names))
    return _decode_reply(header, weights)


def _decode_reply(header: _Header, weights: Weights | None) -> Reply:
    r = header.result
    if (r is None) == (header.error is None):
        raise TransportError("reply must hold exactly one of result and error")
    if r is None:
        return Reply(task_id=header.task_id, site_id=header.site_id, error=header.error)
    result: Result
    if r.kind == "evaluate":
        result = EvalResult(num_samples=r.num_samples, metrics=r.metrics)
    elif weights is None:
        raise TransportError(f"{r.kind} reply without tensors")
    elif r.kind == "train":
        result = TrainResult(weights=weights, num_samples=r.num_samples, metrics=r.metrics)
    else:
        result = StatsResult(values=weights, num_samples=r.num_samples)
    return Reply(task_id=header.task_id, site_id=header.site_id, result=result)
