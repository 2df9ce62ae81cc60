"""Open-loop load generator: signed deliveries at a fixed rate, latency measured from the schedule.

    python bench/paced.py URL --rate 200 --count 2000 [--connections 16]

Each request has a start time fixed in advance (i / rate); its latency runs from that time, not
from when a connection was free, so a stalled server shows up as latency instead of a lower rate
("coordinated omission"). wrk has no fixed-rate mode (wrk2 is not in Debian), hence this client.
Prints one JSON line. It needs keep-alive: against gunicorn's sync workers (`--threads 1`), which
close every connection, most requests count as errors. Plain asyncio streams with keep-alive: ~2,000 req/s on one core is its
ceiling, plenty for the 200/s target but not for the max-rate run (wrk does that).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import signed_delivery  # noqa: E402


async def _send(reader, writer, host: str, path: str, raw: str, headers: dict) -> int:
    body = raw.encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{head}content-length: {len(body)}\r\n\r\n".encode() + body)
    status_line = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(status_line.split()[1])


async def run(url: str, rate: float, count: int, connections: int, prefix: str, redeliver: float = 0.0,
              spread: list[str] | None = None) -> dict:
    """Send `count` deliveries at `rate`/s; with `redeliver` (a fraction), that share of them is a
    sender's retry of a delivery made five before (same webhook-id and body), as in a soak test; with
    `spread`, the `{ws}` of the URL's path is each of those names in turn (a hosted service's workspaces)."""
    parts = urlsplit(url)
    pool: asyncio.Queue = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection(parts.hostname, parts.port))
    latencies, statuses, errors = [], {}, 0
    start = time.perf_counter() + 0.1

    async def one(i: int) -> None:
        nonlocal errors
        scheduled = start + i / rate
        again = redeliver and i >= 5 and i % max(1, round(1 / redeliver)) == 0
        n = i - 5 if again else i
        raw, headers = signed_delivery(f"{prefix}-{n}", {"n": n, "title": f"paced {n}"})
        conn = await pool.get()
        try:
            path = parts.path.replace("{ws}", spread[n % len(spread)]) if spread else parts.path
            status = await _send(*conn, parts.netloc, path, raw, headers)
            statuses[status] = statuses.get(status, 0) + 1
            latencies.append(time.perf_counter() - scheduled)
            pool.put_nowait(conn)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            errors += 1
            conn[1].close()
            pool.put_nowait(await asyncio.open_connection(parts.hostname, parts.port))

    tasks = []
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else None  # noqa: E731
    return {"requests": count, "seconds": round(elapsed, 3), "rate": round(count / elapsed, 1),
            "p50_ms": pick(0.50), "p99_ms": pick(0.99), "max_ms": latencies[-1] * 1000 if latencies else None,
            "statuses": {str(k): v for k, v in statuses.items()}, "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--prefix", default=f"paced-{int(time.time())}")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.url, args.rate, args.count, args.connections, args.prefix))))


if __name__ == "__main__":
    main()
