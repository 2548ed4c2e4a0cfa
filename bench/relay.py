"""A TCP relay on 127.0.0.1 that makes a loopback server look like one across a network.

Each direction of each connection is capped at ``MBPS`` megabytes per second, and a request
(bytes from the client after a pause) reaches the server ``LATENCY`` seconds late: roughly one
S3 connection in a cloud region (about 100-200 MB/s and tens of milliseconds to first byte).

    python bench/relay.py LISTEN_PORT UPSTREAM_PORT MBPS LATENCY
"""

from __future__ import annotations

import asyncio
import sys
import time

PAUSE = 0.005  # a gap this long between a client's bytes starts a new request


async def pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rate: float, latency: float
) -> None:
    free_at = last = 0.0
    try:
        while data := await reader.read(1 << 16):
            now = time.monotonic()
            if latency and now - last > PAUSE:
                await asyncio.sleep(latency)
                now = time.monotonic()
            start = max(now, free_at)
            free_at = start + len(data) / rate
            if start > now:
                await asyncio.sleep(start - now)
            writer.write(data)
            await writer.drain()
            last = time.monotonic()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main(listen: int, upstream: int, rate: float, latency: float) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", upstream)
        await asyncio.gather(pump(client_r, server_w, rate, latency), pump(server_r, client_w, rate, 0.0))

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    port, up, mbps, lat = sys.argv[1:5]
    asyncio.run(main(int(port), int(up), float(mbps) * 1e6, float(lat)))
