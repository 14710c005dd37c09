"""Is a late `status` the daemon's fault or the machine's? The daemon side by side with a bare echo process.

    PYTHONPATH=. python -m benchmarks.status_latency [--idle-s 15] [--turns 3]

Starts the virtual PulseAudio room and the real daemon (`assistant run`, tiny engines) exactly as the room fault
tests do (tests/pipeline/test_room_faults.py), plus a process that does nothing but answer the same WebSocket
messages (websockets, no audio, no models). One poller asks both every 50 ms, first while idle, then through
spoken turns (question into the microphone, reply out of the speaker), and times its own event loop's lag.
Prints per phase, for each: polls, the share answered in >= 100 ms, p99 and max. When the daemon is no worse
than the bare process, late answers come from the machine (CPU time shared with other processes), not from
work of ours on the daemon's event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from tests import tiny_engines
from tests.audio_room import start_room
from tests.pipeline import test_room_faults as faults

ECHO = """
import asyncio, json
from websockets.asyncio.server import serve
async def answer(ws):
    async for m in ws:
        await ws.send(json.dumps({"type": "reply", "id": json.loads(m)["id"]}))
async def main():
    async with serve(answer, "127.0.0.1", 0) as s:
        print(s.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()
asyncio.run(main())
"""
Samples = list[tuple[float, float]]  # (seconds, when)


async def poll(ws: ClientConnection, out: Samples, stop: asyncio.Event) -> None:
    """Ask `ws` for status every STATUS_EVERY_S until `stop`; append (round trip, sent at) to `out`."""
    sent: dict[int, float] = {}

    async def read() -> None:
        async for raw in ws:
            msg = json.loads(raw)
            if msg.get("type") == "reply" and msg.get("id") in sent:
                at = sent.pop(msg["id"])
                out.append((time.monotonic() - at, at))

    reader = asyncio.create_task(read())
    n = 0
    while not stop.is_set():
        n += 1
        sent[n] = time.monotonic()
        await ws.send(json.dumps({"type": "status", "id": n}))
        await asyncio.sleep(faults.STATUS_EVERY_S)
    reader.cancel()


async def loop_lag(out: Samples, stop: asyncio.Event, every_s: float = 0.01) -> None:
    """How late this process's own event loop wakes up (its stalls count against both sides alike)."""
    last = time.monotonic()
    while not stop.is_set():
        await asyncio.sleep(every_s)
        now = time.monotonic()
        out.append((now - last - every_s, now))
        last = now


def summary(name: str, samples: Samples, begin: float, end: float) -> str:
    r = sorted(x for x, t in samples if begin <= t < end)
    if not r:
        return f"{name}: none"
    late = sum(x >= faults.STATUS_WITHIN_S for x in r) / len(r)
    p99, worst = 1000 * r[int(0.99 * len(r))], 1000 * r[-1]
    return f"{name}: n={len(r)} >=100ms {100 * late:.1f}% p99 {p99:.0f} ms max {worst:.0f} ms"


async def main(idle_s: float, turns: int) -> None:
    tmp = Path(tempfile.mkdtemp())
    faults.question()  # espeak once, before any timing (it blocks its caller)
    changes: dict[str, Any] = {
        "pipeline.mode": "hands_free",
        "server.port": 0,
        "server.token": faults.TOKEN,
        "llm.max_tokens": 48,
        "tts.max_frames": 120,
        "vad.barge_in_energy_margin_db": 0.0,
    }
    cfg = tiny_engines.tiny_config(tmp / "models", changes)
    room = await asyncio.to_thread(start_room, tmp / "room")
    echo = await asyncio.create_subprocess_exec(sys.executable, "-c", ECHO, stdout=asyncio.subprocess.PIPE)
    assert echo.stdout is not None
    port = int(await echo.stdout.readline())
    daemon = await faults.start_daemon(cfg, tmp, room)
    bare: Samples = []
    lag: Samples = []
    stop = asyncio.Event()
    ws = await connect(f"ws://127.0.0.1:{port}")
    tasks = [asyncio.create_task(poll(ws, bare, stop)), asyncio.create_task(loop_lag(lag, stop))]
    try:
        t0 = time.monotonic()
        await asyncio.sleep(idle_s)
        t1 = time.monotonic()
        for _ in range(turns):
            await faults.ask_and_hear(daemon, room)
        t2 = time.monotonic()
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await daemon.stop()
        echo.kill()
        await echo.wait()
        await asyncio.to_thread(room.close)
    for phase, a, b in (("idle", t0, t1), (f"{turns} spoken turns", t1, t2)):
        parts = [
            summary("daemon", daemon.status_rtt, a, b),
            summary("bare echo", bare, a, b),
            summary("poller's own loop lag", lag, a, b),
        ]
        print(f"{phase}: " + " | ".join(parts))
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle-s", type=float, default=15.0)
    ap.add_argument("--turns", type=int, default=3)
    args = ap.parse_args()
    asyncio.run(main(args.idle_s, args.turns))
