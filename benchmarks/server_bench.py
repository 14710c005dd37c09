"""Control-server timings on loopback with the scripted test doubles: command round trip and event fan-out.

Run: PYTHONPATH=$PWD python benchmarks/server_bench.py [--clients 20] [--events 2000]
Prints the `status` round-trip latency (p50/p99, ms) and how long N events take to reach every subscriber.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from assistant import events
from tests.server.helpers import client, recv, request, running


async def main(n_clients: int, n_events: int) -> None:
    async with running(commands_per_s=10_000.0) as (server, ctl, _):
        async with client(server) as ws:
            rtts = []
            for i in range(500):
                t = time.perf_counter()
                await request(ws, {"type": "status", "id": i})
                rtts.append((time.perf_counter() - t) * 1000)
            rtts.sort()
            print(f"status round trip: p50 {statistics.median(rtts):.3f} ms, p99 {rtts[int(len(rtts) * 0.99)]:.3f} ms")

        clients = [client(server) for _ in range(n_clients)]
        sockets = [await c.__aenter__() for c in clients]
        for i, s in enumerate(sockets):
            await request(s, {"type": "subscribe", "id": i})

        async def drain(s: object) -> None:
            for _ in range(n_events):
                await recv(s, 30)  # type: ignore[arg-type]

        t = time.perf_counter()
        readers = [asyncio.create_task(drain(s)) for s in sockets]
        for i in range(n_events):
            ctl.emit(events.PartialTranscript(f"partial {i}", float(i)))
            if i % 100 == 0:
                await asyncio.sleep(0)
        await asyncio.gather(*readers)
        dt = time.perf_counter() - t
        total = n_events * n_clients
        print(f"fan-out: {n_events} events x {n_clients} clients in {dt:.2f} s = {total / dt:,.0f} deliveries/s")
        for c in clients:
            await c.__aexit__(None, None, None)
        print(json.dumps({"handler_errors": server.handler_errors}))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--events", type=int, default=2000)
    a = ap.parse_args()
    asyncio.run(main(a.clients, a.events))
