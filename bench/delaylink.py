"""A TCP relay on 127.0.0.1 that holds every byte back ``delay`` seconds each way: a distant
site's link, for the benchmark. TLS passes through untouched.

    python bench/delaylink.py LISTEN_PORT UPSTREAM_PORT DELAY_S    # prints "ready"
"""

from __future__ import annotations

import asyncio
import sys
import time


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                delay: float) -> None:
    queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()

    async def forward() -> None:
        while True:
            due, data = await queue.get()
            if data is None:
                writer.close()
                return
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    task = asyncio.create_task(forward())
    try:
        while data := await reader.read(1 << 16):
            await queue.put((time.monotonic() + delay, data))
    finally:
        await queue.put((0.0, None))
        await task


async def _main(listen_port: int, upstream_port: int, delay: float) -> None:
    async def handle(client_reader: asyncio.StreamReader,
                     client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        await asyncio.gather(_pipe(client_reader, server_writer, delay),
                             _pipe(server_reader, client_writer, delay),
                             return_exceptions=True)

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
