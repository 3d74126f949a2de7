"""Process transport: each site is a child process spoken to over its stdin/stdout pipes.

Frames are ``u64 length | codec message``. Pipes to our own children need no authentication, and
the codec means nothing that crosses them is unpickled. A site process first says Hello (or why
it cannot serve); the controller waits for that readiness instead of sleeping. A site that dies
turns each of its outstanding tasks into an error Reply, so a round goes on without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import BinaryIO

from fedcare.core.errors import TransportError
from fedcare.core.message import Reply, Task
from fedcare.core.text import one_line
from fedcare.transport.base import Transport
from fedcare.transport.codec import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Hello,
    decode,
    encode,
    encode_parts,
    peek_task_id,
)

log = logging.getLogger(__name__)
_LEN = struct.Struct("<Q")


def write_frame(stream: BinaryIO, data: bytes | Sequence[bytes | memoryview]) -> None:
    """One length-prefixed frame; ``data`` may be a list of buffers (written without joining)."""
    parts = [data] if isinstance(data, bytes | bytearray | memoryview) else data
    stream.write(_LEN.pack(sum(memoryview(p).nbytes for p in parts)))
    for part in parts:
        stream.write(part)
    stream.flush()


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(stream: BinaryIO, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> bytes | None:
    """The next frame, or None at a clean end of stream."""
    head = _read_exact(stream, _LEN.size)
    if not head:
        return None
    if len(head) < _LEN.size:
        raise TransportError("stream ended inside a frame header")
    (size,) = _LEN.unpack(head)
    if size > max_bytes:
        raise TransportError(f"frame of {size} bytes exceeds the limit of {max_bytes}")
    data = _read_exact(stream, size)
    if len(data) != size:
        raise TransportError(f"truncated frame: {len(data)} of {size} bytes")
    return data


class PipeTransport(Transport):
    """One child process per site, started from a command line each."""

    def __init__(
        self,
        commands: Mapping[str, Sequence[str]],
        *,
        env: Mapping[str, str] | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        super().__init__()
        self._max = max_message_bytes
        self._replies: queue.Queue[Reply] = queue.Queue()
        self._outstanding: dict[str, set[str]] = {s: set() for s in commands}
        self._lock = threading.Lock()
        self._dead: set[str] = set()
        self._outboxes: dict[str, queue.Queue[list[bytes | memoryview] | None]] = {}
        self.failures: dict[str, str] = {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        for site_id, command in commands.items():
            proc = subprocess.Popen(
                list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                env=dict(env) if env is not None else None,
            )
            self.processes[site_id] = proc
            outbox: queue.Queue[list[bytes | memoryview] | None] = queue.Queue()
            self._outboxes[site_id] = outbox
            threading.Thread(target=self._write, args=(proc, outbox), daemon=True,
                             name=f"pipe-write-{site_id}").start()
            threading.Thread(target=self._read, args=(site_id, proc), daemon=True,
                             name=f"pipe-read-{site_id}").start()

    def _write(self, proc: subprocess.Popen[bytes],
               outbox: queue.Queue[list[bytes | memoryview] | None]) -> None:
        assert proc.stdin is not None
        while (data := outbox.get()) is not None:
            try:
                write_frame(proc.stdin, data)  # type: ignore[arg-type]
            except (BrokenPipeError, OSError):
                return  # the reader reports the dead site
        with contextlib.suppress(OSError):
            proc.stdin.close()

    def _read(self, site_id: str, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        reason = "site process closed its connection"
        try:
            self._read_messages(site_id, proc.stdout)  # type: ignore[arg-type]
        except Exception as exc:  # anything unreadable: this site is out, the others go on
            detail = str(exc) if isinstance(exc, TransportError) else f"{type(exc).__name__}: {exc}"
            reason = f"protocol violation: {detail}"
            log.error("site %s: %s; stopping it", site_id, reason)
            proc.kill()
        finally:
            proc.stdout.close()
        code = proc.wait()
        reason = f"{reason} (exit code {code})"
        with self._changed:
            self.failures.setdefault(site_id, reason)
        with self._lock:  # send() checks liveness under the same lock: no task slips through
            self._dead.add(site_id)
            lost, self._outstanding[site_id] = self._outstanding[site_id], set()
        self._set_connected(site_id, False)
        for task_id in sorted(lost):
            self._replies.put(Reply(task_id, site_id, error=reason, connection_lost=True))

    def _read_messages(self, site_id: str, stream: BinaryIO) -> None:
        first = True
        while (frame := read_frame(stream, self._max)) is not None:
            message = decode(frame, max_bytes=self._max, sender=f"site {site_id}")
            if first:
                if not isinstance(message, Hello) or message.site_id != site_id:
                    raise TransportError(f"expected Hello from {site_id}, got {message!r:.200}")
                if message.error:
                    log.error("site %s cannot serve: %s", site_id, message.error)
                    with self._changed:
                        self.failures[site_id] = message.error
                        self._changed.notify_all()
                    return
                self._set_connected(site_id, True)
                first = False
                continue
            if not isinstance(message, Reply) or message.site_id != site_id:
                raise TransportError(f"expected a Reply from {site_id}, got {message!r:.200}")
            with self._lock:
                if message.task_id not in self._outstanding[site_id]:
                    log.warning("site %s: discarding reply to unknown task %s",
                                site_id, one_line(message.task_id, 200))
                    continue
                self._outstanding[site_id].discard(message.task_id)
            self._replies.put(message)

    def _may_still_connect(self) -> bool:
        return any(s not in self._connected and s not in self.failures for s in self.processes)

    def send(self, site_id: str, task: Task) -> None:
        # Views of the model, not a copy: the same model sent to N sites stays one model in memory.
        data = encode_parts(task)
        with self._lock:
            if site_id in self._dead or site_id not in self.site_ids():
                raise TransportError(f"unknown or disconnected site, task {task.task_id}",
                                     site_id=site_id)
            self._outstanding[site_id].add(task.task_id)
        self._outboxes[site_id].put(data)

    def receive(self, timeout_s: float) -> Reply | None:
        try:
            return self._replies.get(timeout=max(timeout_s, 0.0))
        except queue.Empty:
            return None

    def close(self, timeout_s: float = 10.0) -> None:
        for outbox in self._outboxes.values():
            outbox.put(None)  # closes stdin: the site process exits at end of input
        for site_id, proc in self.processes.items():
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("site %s (pid %d) did not exit; killing it", site_id, proc.pid)
                proc.kill()
                proc.wait()
            self._set_connected(site_id, False)


def serve_stdio(site_id: str, build_handler: Callable[[], Callable[[Task], Reply]]) -> int:
    """Site-process side: answer tasks from stdin on stdout until stdin ends.

    The protocol keeps the real stdout; ``print`` in user code goes to stderr instead, so a
    trainer that prints cannot corrupt the stream.
    """
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    stdin = sys.stdin.buffer
    try:
        handler = build_handler()
    except Exception as exc:
        write_frame(out, encode(Hello(site_id=site_id, error=f"{type(exc).__name__}: {exc}")))
        return 1
    write_frame(out, encode(Hello(site_id=site_id)))
    while (frame := read_frame(stdin)) is not None:
        reply = _answer(site_id, handler, frame)
        if reply is not None:
            write_frame(out, reply)
    return 0


def _answer(site_id: str, handler: Callable[[Task], Reply], frame: bytes) -> bytes | None:
    """The encoded reply to one frame: a task that cannot be decoded, handled or answered costs
    that task (an error reply), never the site process; None if the frame names no task."""
    try:
        task = decode(frame, sender="the controller")
    except TransportError as exc:
        task_id = peek_task_id(frame)
        log.error("site %s: refused a task: %s", site_id, exc)
        return (encode(Reply(task_id, site_id, error=one_line(f"task refused: {exc}")))
                if task_id is not None else None)
    if not isinstance(task, Task):
        log.error("site %s: got a %s, not a task; ignored", site_id, type(task).__name__)
        return None
    try:
        reply = handler(task)
    except Exception as exc:  # a failing handler costs one task, not the site
        reply = Reply(task.task_id, site_id, error=one_line(f"{type(exc).__name__}: {exc}"))
    try:
        return encode(reply)
    except (TransportError, ValueError) as exc:  # e.g. a metric name the codec refuses
        return encode(Reply(task.task_id, site_id,
                            error=one_line(f"the site's result cannot be sent: {exc}")))
