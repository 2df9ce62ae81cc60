"""A trivial fast stand-in for InLoox's OData writes, so end_to_end.py and stack.py measure our own cost.

    python bench/sink.py --port P [--latency-ms 0]

Raw asyncio HTTP/1.1 with keep-alive, one process. `POST /api/odata/<Set>` answers 201 with the
body back plus a new `<Set>Id`-style key (TaskItemId for Task); `GET UserInfo/Me()` answers a user
(so /readyz is green); any other OData call answers 200 `{"value": []}`. With `--latency-ms`
every OData answer (not the /_sink/ ones) is sent that long after the request was read, without
holding up other connections (a slow InLoox). `GET /_sink/stats` returns what was written: per
entity set the POST count, the number of distinct `Name`s (or `DisplayName`s: one per event when
the bench writes something unique per event), how many of them were posted more than once
(`duplicated`; duplicates = posts - distinct) and the first and last write's time (time.time());
`GET /_sink/at/<Set>` each Name's first write's time; `POST /_sink/reset` forgets all but that. It checks no token and stores nothing else.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

KEYS = {"Task": "TaskItemId", "TimeEntry": "TimeEntryId", "Project": "ProjectId"}
ME = "5b1f1d0e-0000-4000-8000-000000000b07"
LATENCY = 0.0  # seconds before each OData answer (--latency-ms)


class Writes:
    """What the sink was sent, per entity set."""

    def __init__(self):
        self.at = {}  # per entity set: each Name's first write, time.time(), kept through resets (stack.py --neighbour)
        self.reset()

    def reset(self):
        # names: per entity set, how many times each Name (or DisplayName) was posted
        self.posts, self.names, self.first, self.last = {}, {}, None, None

    def record(self, entity_set: str, body: dict) -> None:
        now = time.time()
        self.first = self.first or now
        self.last = now
        self.posts[entity_set] = self.posts.get(entity_set, 0) + 1
        names = self.names.setdefault(entity_set, {})
        name = body.get("Name") or body.get("DisplayName")
        names[name] = names.get(name, 0) + 1
        self.at.setdefault(entity_set, {}).setdefault(name, now)

    def stats(self) -> dict:
        return {"posts": self.posts, "distinct": {k: len(v) for k, v in self.names.items()},
                "duplicated": {k: sum(1 for n in v.values() if n > 1) for k, v in self.names.items()},
                "first": self.first, "last": self.last}


WRITES = Writes()


def answer(method: str, path: str, body: bytes) -> tuple[int, dict]:
    if path == "/_sink/stats":
        return 200, WRITES.stats()
    if path.startswith("/_sink/at/"):  # /_sink/at/<entity set>: each Name's first write
        return 200, WRITES.at.get(path.rsplit("/", 1)[-1], {})
    if path == "/_sink/reset":
        WRITES.reset()
        return 200, {}
    entity_set = path.split("?", 1)[0].rsplit("/", 1)[-1]
    if method == "GET" and entity_set == "Me()":  # UserInfo/Me(): who the token belongs to
        return 200, {"value": [{"ContactId": ME, "DisplayName": "Automation Bot (sink)"}]}
    if method == "POST" and "(" not in entity_set:
        values = json.loads(body or b"{}")
        WRITES.record(entity_set, values)
        return 201, {"@odata.context": f"$metadata#{entity_set}/$entity", **values,
                     KEYS.get(entity_set, f"{entity_set}Id"): str(uuid.uuid4())}
    return 200, {"value": []}


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            request_line = await reader.readline()
            if not request_line:
                break
            method, path, _ = request_line.decode().split(" ", 2)
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length) if length else b""
            status, payload = answer(method, path, body)
            if LATENCY and not path.startswith("/_sink/"):
                await asyncio.sleep(LATENCY)  # this connection waits; the others go on
            data = json.dumps(payload).encode()
            reason = {200: "OK", 201: "Created"}[status]
            writer.write(f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                         f"content-length: {len(data)}\r\n\r\n".encode() + data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass  # the client went away; its writes are already recorded
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(serve_connection, "127.0.0.1", port, backlog=1024)
    print(f"sink: http://127.0.0.1:{port}/api/odata/", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="answer OData requests this much later")
    args = parser.parse_args()
    LATENCY = args.latency_ms / 1000
    asyncio.run(main(args.port))
