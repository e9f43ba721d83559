#!/usr/bin/env python3
"""A TCP proxy on 127.0.0.1 that adds a round-trip time, for scripts/bench.py:
every byte is held RTT/2 in each direction (a link with that latency and
no bandwidth limit: data keeps flowing while earlier data is in transit).
Opening a connection costs one more round trip (the TCP handshake with
the far end). It forwards TLS untouched, so clients talk to the server
behind it as to a distant one, and it counts the TCP connections it
accepts and, from each server's ServerHello, the TLS handshakes: full ones
(the server signs, the client checks its certificate) and resumed ones (a
session ticket, no signature).

Usage: delay_proxy.py LISTEN_PORT TARGET_PORT RTT_MS COUNT_FILE
COUNT_FILE holds "CONNECTIONS FULL RESUMED" so far, rewritten at each
change. Loopback only; it runs until killed.
"""

import asyncio
import os
import signal
import sys
import time

CHUNK = 256 << 10

# TLS record and handshake message types, extensions (RFC 8446).
HANDSHAKE, CHANGE_CIPHER_SPEC = 22, 20
SERVER_HELLO, CERTIFICATE = 2, 11
PRE_SHARED_KEY, SUPPORTED_VERSIONS = 41, 43


def resumed(data):
    """Whether the TLS server stream starting with `data` resumes a session:
    True or False, None while `data` is too short to tell, or "not TLS"."""
    if len(data) < 5:
        return None
    if data[0] != HANDSHAKE:
        return "not TLS"
    end = 5 + int.from_bytes(data[3:5], "big")
    if len(data) < end:
        return None
    record = data[5:end]
    if record[0] != SERVER_HELLO:
        return "not TLS"
    hello_end = 4 + int.from_bytes(record[1:4], "big")
    at = 4 + 2 + 32  # header, legacy version, random
    at += 1 + record[at] + 2 + 1  # session id, cipher suite, compression
    extensions_end = at + 2 + int.from_bytes(record[at:at + 2], "big")
    at += 2
    extensions = set()
    while at + 4 <= extensions_end:
        extensions.add(int.from_bytes(record[at:at + 2], "big"))
        at += 4 + int.from_bytes(record[at + 2:at + 4], "big")
    if SUPPORTED_VERSIONS in extensions:  # TLS 1.3
        return PRE_SHARED_KEY in extensions
    # TLS 1.2: a full handshake goes on with the server's Certificate, a
    # resumed one with its ChangeCipherSpec.
    if hello_end < len(record):
        return record[hello_end] != CERTIFICATE
    if len(data) <= end:
        return None
    return data[end] == CHANGE_CIPHER_SPEC


async def pipe(reader, writer, delay, watch=None):
    """Forward `reader` to `writer`, each chunk `delay` seconds after it
    arrived; end `writer` once `reader` ends. `watch`, if given, sees each
    chunk as it arrives."""
    if not delay:
        try:
            while data := await reader.read(CHUNK):
                if watch:
                    watch(data)
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
            if watch and data:
                watch(data)
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
    counts = {"connections": 0, "full": 0, "resumed": 0}

    def count(what):
        counts[what] += 1
        with open(count_file, "w") as f:
            f.write(f"{counts['connections']} {counts['full']} {counts['resumed']}\n")

    def handshake_watch():
        """A `pipe` watch that counts the server's handshake once it shows."""
        start = bytearray()
        told = False

        def watch(data):
            nonlocal told
            if told:
                return
            start.extend(data)
            verdict = resumed(bytes(start))
            told = verdict is not None or len(start) > 1 << 16
            if verdict in (True, False):
                count("resumed" if verdict else "full")
        return watch

    async def serve(client_reader, client_writer):
        count("connections")
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            client_writer.close()
            return
        # The TCP handshake with the far end costs one round trip too.
        if delay:
            await asyncio.sleep(2 * delay)
        await asyncio.gather(pipe(client_reader, server_writer, delay),
                             pipe(server_reader, client_writer, delay, handshake_watch()))
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
