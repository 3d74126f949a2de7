"""Codec fuzzing benchmark: many generated inputs through ``decode``, and what became of each.

    .venv/bin/python bench/fuzz.py                 # 20,000 inputs per kind (about 15 s)
    .venv/bin/python bench/fuzz.py --per-kind 2000 --seed 3

The longer run of tests/unit/transport/test_codec_properties.py, with its own seeded generators
(no hypothesis, so every input is counted). Four kinds of input: random bytes (half of them
starting with the format's magic), valid messages of random content with random bytes flipped,
inserted, deleted or cut, headers of random content with a matching checksum (ids, counts,
dtypes, and shapes with zero, negative, huge and too many dimensions), and valid messages
(which must come back bit for bit). Outcomes: decoded, refused with TransportError (grouped by
reason), or crashed (anything else: a bug). On every 20th input the peak allocation of
``decode`` is measured (tracemalloc) against the input's size. Prints JSON, then a table; exits
1 if anything crashed, allocated beyond 2x its input + 1 MiB, or failed to round-trip.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import xxhash

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedcare.core.errors import TransportError  # noqa: E402
from fedcare.core.message import EvalResult, Reply, StatsResult, Task, TrainResult  # noqa: E402
from fedcare.core.weights import ALLOWED_DTYPES, Weights  # noqa: E402
from fedcare.transport.codec import MAGIC, Hello, decode, encode  # noqa: E402

DTYPES = sorted(d.str for d in ALLOWED_DTYPES)
BAD_DTYPES = ["|O", "<U3", "V8", "(2,)f4", ">f4", "<M8[s]", "float31", ""]
EDGE_DIMS = [0, 1, 2**31, 2**40, 2**40 + 1, 2**62, 2**63, 2**64, 2**70, -1, -(2**63)]


def _text(rng: np.random.Generator, most: int = 12) -> str:
    alphabet = "abc-_./\n\x1b\u00e9\u4e2d 0123456789"
    return "".join(rng.choice(list(alphabet), size=int(rng.integers(0, most + 1))))


def _weights(rng: np.random.Generator) -> Weights:
    arrays = {}
    for i in range(int(rng.integers(0, 4))):
        dtype = np.dtype(str(rng.choice(DTYPES)))
        shape = tuple(int(d) for d in rng.integers(0, 5, size=int(rng.integers(0, 4))))
        raw = rng.bytes(dtype.itemsize * int(np.prod(shape)))
        arrays[f"t{i}{_text(rng, 4)}"] = np.frombuffer(raw, dtype).reshape(shape)
    return Weights(arrays)


def _metrics(rng: np.random.Generator) -> dict[str, float]:
    return {f"m{i}": float(rng.standard_normal()) for i in range(int(rng.integers(0, 4)))}


def valid_message(rng: np.random.Generator) -> Task | Reply | Hello:
    pick = int(rng.integers(0, 6))
    if pick == 0:
        return Task(_text(rng), _text(rng), int(rng.integers(0, 100)), "train", _weights(rng),
                    {"lr": float(rng.random()), "steps": int(rng.integers(0, 9)), "x": "y"})
    if pick == 1:
        return Reply(_text(rng), _text(rng), result=TrainResult(
            _weights(rng), int(rng.integers(0, 2**53)), _metrics(rng)))
    if pick == 2:
        return Reply(_text(rng), _text(rng), result=EvalResult(int(rng.integers(0, 99)),
                                                               _metrics(rng)))
    if pick == 3:
        return Reply(_text(rng), _text(rng), result=StatsResult(_weights(rng), 3))
    if pick == 4:
        return Reply(_text(rng), _text(rng), error=_text(rng, 200))
    return Hello(site_id=_text(rng))


def random_bytes(rng: np.random.Generator) -> bytes:
    data = rng.bytes(int(rng.integers(0, 800)))
    return MAGIC + data if rng.random() < 0.5 else data


def mutated(rng: np.random.Generator) -> bytes:
    data = bytearray(encode(valid_message(rng)))
    for _ in range(int(rng.integers(1, 5))):
        at = int(rng.integers(0, max(len(data), 1)))
        action = int(rng.integers(0, 4))
        if action == 0 and data:
            data[at] ^= int(rng.integers(1, 256))
        elif action == 1:
            data[at:at] = rng.bytes(int(rng.integers(1, 8)))
        elif action == 2:
            del data[at:at + int(rng.integers(1, 16))]
        else:
            del data[at:]
    return bytes(data)


def _dim(rng: np.random.Generator) -> int:
    return int(rng.choice(EDGE_DIMS)) if rng.random() < 0.5 else int(rng.integers(0, 6))


def hostile_header(rng: np.random.Generator) -> bytes:
    payload = rng.bytes(int(rng.integers(0, 64)))
    header: dict[str, object] = {"type": str(rng.choice(["task", "reply", "hello", "x"]))}
    for field in ("task_id", "site_id", "job_id"):
        if rng.random() < 0.5:
            header[field] = _text(rng) * int(rng.choice([1] * 9 + [3000]))
    if rng.random() < 0.5:
        header["kind"] = str(rng.choice(["train"] * 4 + ["evaluate"] * 4 + ["../x", ""]))
    if rng.random() < 0.5:
        header["result"] = {"kind": str(rng.choice(["train", "evaluate", "statistics"])),
                            "num_samples": int(rng.choice([0, 5, 5, 5, 2**70])),
                            "metrics": {f"m{i}": 0.5 for i in range(int(rng.choice(
                                [0, 3, 3, 3, 1025])))}}
    if rng.random() < 0.3:
        header["error"] = "e" * int(rng.choice([0, 10, 10, 70_000]))
    if rng.random() < 0.8:
        header["tensors"] = [
            {"name": _text(rng, 4) or "t",
             "dtype": str(rng.choice(DTYPES if rng.random() < 0.8 else BAD_DTYPES)),
             "shape": [_dim(rng) for _ in range(int(rng.choice([0, 1, 2, 3, 33, 70])))]}
            for _ in range(int(rng.integers(0, 4)))]
    header["payload_checksum"] = xxhash.xxh3_128(payload).hexdigest()
    head = json.dumps(header).encode()
    return MAGIC + len(head).to_bytes(4, "little") + head + payload


def _same(got: object, sent: object) -> bool:
    """Bit for bit: arrays by dtype, shape and bytes, mappings with their JSON types."""
    if isinstance(sent, Weights):
        return isinstance(got, Weights) and list(got) == list(sent) and all(
            got[n].dtype == sent[n].dtype and got[n].shape == sent[n].shape
            and got[n].tobytes() == sent[n].tobytes() for n in sent)
    if dataclasses.is_dataclass(sent):
        return type(got) is type(sent) and all(
            _same(getattr(got, f.name), getattr(sent, f.name)) for f in dataclasses.fields(sent))
    if isinstance(sent, Mapping) and isinstance(got, Mapping):
        return json.dumps(dict(got), sort_keys=True) == json.dumps(dict(sent), sort_keys=True)
    return bool(got == sent)


def _reason(error: TransportError) -> str:
    """The kind of refusal, without its values: "tensor T: bad shape: dimension N is N..."."""
    text = str(error)
    if "malformed message header" in text:
        return "malformed message header"
    text = re.sub(r"^(task|reply|hello)( '.*?')?( from [^:]*)?: ", "", text)
    text = re.sub(r"tensor '.*?'", "tensor T", text)
    text = re.sub(r"-?\d+", "N", text)
    return text[:70]


def run(kind: str, make: Callable[[np.random.Generator], bytes], count: int,
        rng: np.random.Generator) -> dict[str, object]:
    outcomes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    crashes: list[str] = []
    worst = 0
    over_bound = 0
    started = time.perf_counter()
    for i in range(count):
        data = make(rng)
        measure = i % 20 == 0
        if measure:
            tracemalloc.start()
        try:
            decode(data)
            outcomes["decoded"] += 1
        except TransportError as exc:
            outcomes["refused"] += 1
            reasons[_reason(exc)] += 1
        except Exception as exc:  # a bug: decode must raise nothing else
            outcomes["crashed"] += 1
            if len(crashes) < 5:
                crashes.append(f"{type(exc).__name__}: {str(exc)[:200]} on {data[:120]!r}")
        finally:
            if measure:
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                worst = max(worst, peak)
                over_bound += peak > 2 * len(data) + 1024**2
    elapsed = time.perf_counter() - started
    return {"kind": kind, "inputs": count, "decoded": outcomes["decoded"],
            "refused": outcomes["refused"], "crashed": outcomes["crashed"],
            "allocation_over_bound": int(over_bound), "peak_alloc_kib_max": round(worst / 1024, 1),
            "us_per_input": round(elapsed / count * 1e6, 1),
            "top_refusals": dict(reasons.most_common(8)), "crash_examples": crashes}


def round_trips(count: int, rng: np.random.Generator) -> dict[str, object]:
    failed = 0
    started = time.perf_counter()
    for _ in range(count):
        message = valid_message(rng)
        failed += not _same(decode(encode(message)), message)
    return {"kind": "valid round trip", "inputs": count, "failed": failed,
            "us_per_input": round((time.perf_counter() - started) / count * 1e6, 1)}


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-kind", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    kinds = [("random bytes", random_bytes), ("mutated valid", mutated),
             ("hostile header", hostile_header)]
    cases = [run(kind, make, args.per_kind, rng) for kind, make in kinds]
    trips = round_trips(args.per_kind, rng)
    result = {"name": "fuzz", "git_sha": git_sha(),
              "params": {"per_kind": args.per_kind, "seed": args.seed,
                         "alloc_bound": "2 x input + 1 MiB, every 20th input"},
              "metrics": {"cases": cases, "round_trip": trips}}
    print(json.dumps(result, indent=1))
    print(f"\n{'input kind':<16} {'inputs':>7} {'decoded':>8} {'refused':>8} {'crashed':>8} "
          f"{'alloc>bound':>11} {'peak KiB':>10} {'us/input':>9}")
    for c in cases:
        print(f"{c['kind']:<16} {c['inputs']:>7} {c['decoded']:>8} {c['refused']:>8} "
              f"{c['crashed']:>8} {c['allocation_over_bound']:>11} "
              f"{c['peak_alloc_kib_max']:>10} {c['us_per_input']:>9}")
    print(f"{'valid round trip':<16} {trips['inputs']:>7} {'':>8} {'':>8} "
          f"{'failed ' + str(trips['failed']):>8} {'':>11} {'':>10} {trips['us_per_input']:>9}")
    bad = sum(c["crashed"] + c["allocation_over_bound"] for c in cases)  # type: ignore[operator]
    if bad or trips["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
