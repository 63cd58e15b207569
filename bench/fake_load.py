"""The loopback fake alone: how many requests/s it answers on this machine with no labeler.

`stepdpo label`'s zero-latency throughput is bounded by the fake it talks to, which shares the
same cores. To say whether a target (500 responses/s) is reachable at all, this drives the fake
with the cheapest client we can write: raw asyncio sockets on keep-alive connections, the
labeler's own request bodies pre-encoded once, responses read by content-length and dropped.
It also reads the fake's CPU seconds from /proc, so a figure can be split into "fake CPU per
request" and "client CPU per request".

    .venv/bin/python bench/fake_load.py BODIES.jsonl PORT [--seconds 5] [--connections 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc), the fake's share of the cores."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def encode_requests(bodies: list[dict], port: int, path: str = "/v1/chat/completions") -> list[bytes]:
    """Each body as one complete HTTP/1.1 request (keep-alive), built once before the clock starts."""
    out = []
    for body in bodies:
        data = json.dumps(body).encode()
        head = (f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
                f"authorization: Bearer sk-bench\r\ncontent-length: {len(data)}\r\n\r\n").encode()
        out.append(head + data)
    return out


async def _connection(port: int, requests: list[bytes], offset: int, deadline: float, done: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    try:
        while time.perf_counter() < deadline:
            writer.write(requests[i % len(requests)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                status = head.split(b"\r\n")[0]
                raise RuntimeError(f"fake answered {status!r}: {body[:200]!r}")
            done[0] += 1
    finally:
        writer.close()


def hammer(port: int, bodies: list[dict], seconds: float = 5.0, connections: int = 64,
           fake_pid: int | None = None) -> dict:
    """Requests/s the fake answers to `connections` keep-alive clients for `seconds` seconds."""
    requests = encode_requests(bodies, port)
    done = [0]

    async def go() -> None:
        deadline = time.perf_counter() + seconds
        await asyncio.gather(*(_connection(port, requests, k * 7, deadline, done) for k in range(connections)))

    fake_cpu0 = process_cpu_s(fake_pid) if fake_pid else None
    cpu0, t0 = time.process_time(), time.perf_counter()
    asyncio.run(go())
    elapsed, client_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    n = done[0]
    out = {"connections": connections, "requests": n, "elapsed_s": round(elapsed, 3),
           "requests_per_s": round(n / elapsed, 1),
           "client_cpu_ms_per_request": round(client_cpu / n * 1000, 3)}
    if fake_pid:
        fake_cpu = process_cpu_s(fake_pid) - fake_cpu0
        out["fake_cpu_ms_per_request"] = round(fake_cpu / n * 1000, 3)
        out["fake_cpu_share_of_one_core"] = round(fake_cpu / elapsed, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bodies", help="JSONL of request bodies")
    ap.add_argument("port", type=int)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--fake-pid", type=int, default=None)
    args = ap.parse_args()
    bodies = [json.loads(line) for line in Path(args.bodies).read_text().splitlines() if line.strip()]
    print(json.dumps(hammer(args.port, bodies, args.seconds, args.connections, args.fake_pid)))


if __name__ == "__main__":
    main()
