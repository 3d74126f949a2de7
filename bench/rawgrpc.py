"""The transport's own floor: plain gRPC over the same mutual TLS, no fedcare at all.

One server process streams ``total_bytes`` to one client as 2 MiB ``bytes`` messages and takes
as much back (no protobuf, no checksum, no reassembly, nothing kept). The MB/s it reaches is
the most any framework built on Python gRPC can move over loopback mTLS on this machine, so
``bytes per round / this`` is a lower bound on a real federation's round time.

    .venv/bin/python bench/rawgrpc.py KITS_DIR SERVER_KIT   # server (prints its port)
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from fedcare.transport.grpc.chunks import CHUNK_BYTES, GRPC_MESSAGE_LIMIT
from fedcare.transport.grpc.tls import TlsFiles, channel_credentials, server_credentials

_OPTIONS = [("grpc.max_receive_message_length", GRPC_MESSAGE_LIMIT),
            ("grpc.max_send_message_length", GRPC_MESSAGE_LIMIT)]


def _tls(kit: Path) -> TlsFiles:
    return TlsFiles((kit / "ca.crt").read_bytes(), (kit / "cert.crt").read_bytes(),
                    (kit / "key.pem").read_bytes())


def serve(server_kit: Path) -> None:
    payload = b"\x00" * CHUNK_BYTES

    def down(request: bytes, context: object):
        for _ in range(int(request)):
            yield payload

    def up(requests, context: object) -> bytes:
        return str(sum(len(r) for r in requests)).encode()

    server = grpc.server(ThreadPoolExecutor(4), options=_OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("raw.Raw", {
        "Down": grpc.unary_stream_rpc_method_handler(down),
        "Up": grpc.stream_unary_rpc_method_handler(up)}),))
    port = server.add_secure_port("127.0.0.1:0", server_credentials(_tls(server_kit)))
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def measure(server_kit: Path, client_kit: Path, total_bytes: int = 512 * 1024**2
            ) -> dict[str, float]:
    """MB/s one way and the other between two processes, over mTLS on 127.0.0.1."""
    proc = subprocess.Popen([sys.executable, __file__, str(server_kit)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        channel = grpc.secure_channel(f"127.0.0.1:{port}", channel_credentials(_tls(client_kit)),
                                      options=_OPTIONS)
        down = channel.unary_stream("/raw.Raw/Down")
        up = channel.stream_unary("/raw.Raw/Up")
        chunks = total_bytes // CHUNK_BYTES
        for _ in down(b"4"):  # connect and warm up
            pass
        start = time.perf_counter()
        received = sum(len(m) for m in down(str(chunks).encode()))
        down_s = time.perf_counter() - start
        payload = b"\x01" * CHUNK_BYTES
        start = time.perf_counter()
        sent = int(up(payload for _ in range(chunks)))
        up_s = time.perf_counter() - start
        channel.close()
    finally:
        proc.kill()
        proc.wait()
    return {"server_to_site_MBps": received / down_s / 1e6,
            "site_to_server_MBps": sent / up_s / 1e6}


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
