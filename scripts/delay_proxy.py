#!/usr/bin/env python3
"""A TCP proxy on 127.0.0.1 that adds a round-trip time, for scripts/bench.py:
every byte is held RTT/2 in each direction (a link with that latency and
no bandwidth limit: data keeps flowing while earlier data is in transit).
It forwards TLS untouched, so clients talk to the server behind it as
to a distant one, and it counts the TCP connections it accepts.

Usage: delay_proxy.py LISTEN_PORT TARGET_PORT RTT_MS COUNT_FILE
COUNT_FILE holds the number of connections accepted so far, rewritten at
each one. Loopback only; it runs until killed.
"""

import asyncio
import os
import signal
import sys
import time

CHUNK = 256 << 10


async def pipe(reader, writer, delay):
    """Forward `reader` to `writer`, each chunk `delay` seconds after it
    arrived; end `writer` once `reader` ends."""
    if not delay:
        try:
            while data := await reader.read(CHUNK):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            pass
        return
    queue = asyncio.Queue()

    async def receive():
        while True:
            data = await reader.read(CHUNK)
            queue.put_nowait((time.monotonic() + delay, data))
            if not data:
                return

    async def send():
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    try:
        await asyncio.gather(receive(), send())
    except (ConnectionError, OSError):
        pass


async def main(listen_port, target_port, rtt_ms, count_file):
    delay = rtt_ms / 2000
    accepted = 0

    async def serve(client_reader, client_writer):
        nonlocal accepted
        accepted += 1
        with open(count_file, "w") as f:
            f.write(f"{accepted}\n")
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            client_writer.close()
            return
        # The TCP handshake with the far end costs one round trip too.
        if delay:
            await asyncio.sleep(2 * delay)
        await asyncio.gather(pipe(client_reader, server_writer, delay),
                             pipe(server_reader, client_writer, delay))
        for w in (client_writer, server_writer):
            w.close()

    server = await asyncio.start_server(serve, "127.0.0.1", listen_port, backlog=512)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    # Stopped by SIGTERM, at once, with nothing to flush.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    listen, target, rtt, counts = sys.argv[1:]
    asyncio.run(main(int(listen), int(target), float(rtt), counts))
