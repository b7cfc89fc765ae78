"""Load on `hpcl4sr serve`: requests/s and p50/p99 latency at 1, 8 and 32 concurrent clients, then a soak.

    python benchmarks/serve_load.py --model EXPORT_OR_RUN [--model ...] [--seconds 10] [--soak 180] > load.json

For each model it starts `hpcl4sr serve` on 127.0.0.1 (a free port, exact index), and for each endpoint
(GET /users/{id}/recommendations?n=20 with random known users; POST /recommendations with the history of a
random known user, as raw ids, n=20) and each client count runs that many clients for `--seconds`, each
sending its next request when the previous answer arrived (keep-alive HTTP/1.1 over asyncio streams, a
client far lighter than the server, though it shares the machine's cores). The soak then alternates both
endpoints at 8 clients for `--soak` seconds and samples the server's resident memory (VmRSS) every 5 s.
Every response must be 200: errors are counted. JSON out; no assertion on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from common import git_commit

import hpcl4sr
import hpcl4sr.serve.recommender

CLIENTS = (1, 8, 32)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def request_bytes(method: str, path: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
    if body:
        head += "Content-Type: application/json\r\n"
    return head.encode() + b"\r\n" + body


async def client(port: int, make_request, stop_at: float, latencies: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            writer.write(make_request())
            await writer.drain()
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if status != 200:
                errors.append(status)
    finally:
        writer.close()


async def load(port: int, make_request, clients: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[int] = []
    start = time.perf_counter()
    await asyncio.gather(*(client(port, make_request, start + seconds, latencies, errors) for _ in range(clients)))
    elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"clients": clients, "requests": len(latencies), "errors": len(errors), "seconds": round(elapsed, 2),
            "requests_per_s": round(len(latencies) / elapsed, 1), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2)}


class Requests:
    """Request bytes for random known users, and for their histories as raw item ids."""

    def __init__(self, rec: hpcl4sr.serve.recommender.Recommender, n: int, seed: int) -> None:
        self.rng, self.n = random.Random(seed), n
        self.users = rec.data.user_ids
        self.histories = [[rec.data.item_ids[i] for i in row[row > 0]] for row in rec.data.histories[:2000]]

    def user(self) -> bytes:
        return request_bytes("GET", f"/users/{self.rng.choice(self.users)}/recommendations?n={self.n}")

    def history(self) -> bytes:
        body = json.dumps({"history": self.rng.choice(self.histories), "n": self.n}).encode()
        return request_bytes("POST", "/recommendations", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, action="append", required=True, help="export or run; repeatable")
    parser.add_argument("--seconds", type=float, default=10.0, help="per endpoint and client count")
    parser.add_argument("--soak", type=float, default=180.0, help="soak seconds (0: none)")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    report = {"benchmark": "serve_load", "n": args.n, "seconds": args.seconds, "cpus": os.cpu_count(),
              "load_before": os.getloadavg(), "commit": git_commit(),
              "models": []}
    for model in args.model:
        requests = Requests(hpcl4sr.load(model), args.n, args.seed)
        user_request, history_request = requests.user, requests.history
        port = free_port()
        command = [sys.executable, "-m", "hpcl4sr", "serve", "--model", str(model), "--port", str(port)]
        server = subprocess.Popen(command)
        try:
            for _ in range(600):
                try:
                    health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health").read())
                    break
                except OSError:
                    time.sleep(0.1)
            entry = {"model": health["model"], "path": str(model), "items": health["items"], "runs": []}
            for endpoint, make in (("user", user_request), ("history", history_request)):
                asyncio.run(load(port, make, 8, 1.0))  # warm-up
                for clients in CLIENTS:
                    result = asyncio.run(load(port, make, clients, args.seconds))
                    entry["runs"].append({"endpoint": endpoint, **result})
                    print(json.dumps({"model": health["model"], "endpoint": endpoint, **result}), file=sys.stderr)
            if args.soak > 0:
                samples = [(0.0, rss_mb(server.pid))]
                start = time.perf_counter()
                totals = {"requests": 0, "errors": 0}
                while time.perf_counter() - start < args.soak:
                    for make in (user_request, history_request):
                        result = asyncio.run(load(port, make, 8, 2.5))
                        totals["requests"] += result["requests"]
                        totals["errors"] += result["errors"]
                    samples.append((round(time.perf_counter() - start, 1), round(rss_mb(server.pid), 1)))
                entry["soak"] = {"seconds": args.soak, "clients": 8, **totals, "rss_mb": samples}
            report["models"].append(entry)
        finally:
            server.terminate()
            server.wait(timeout=30)
    report["load_after"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
