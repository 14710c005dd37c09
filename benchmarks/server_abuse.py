"""Load and abuse of the WebSocket server from outside, on loopback: memory, file descriptors, fairness.

    PYTHONPATH=$PWD python -m benchmarks.server_abuse [--only nonreader,handshakes,oversized,audio] [--mib 150]
        [--audio-s 20] [--json FILE]

Three processes, so each one's CPU is its own: the daemon (the real ControlServer over the scripted test doubles
of tests/server/fakes.py), an attacker, and this orchestrator, which runs a well-behaved native client sending
`status` every 20 ms and samples the daemon's RSS and open file descriptors from /proc every 50 ms. Each
scenario reports the client's latency and the daemon's RSS/fds before, during and after the attack.

Scenarios (each bounded in count and time):
- nonreader: a client with a 4 KiB receive buffer that never reads sends MiB of hostile frames (huge unknown
  types, bad JSON, huge integers, deep nesting, binary and oversized frames), reconnecting when closed.
- handshakes: 32 concurrent /v1/realtime handshakes with server.realtime_sessions = 2.
- oversized: frames over the message limit, over 4x the limit (1009 close), nested 100,000 deep, 5,000-digit ints.
- audio: a Realtime client appending 1 MiB of audio back to back.
tests/server/test_abuse.py runs short versions of each in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

TOKEN = "abuse-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
MIB = 1 << 20
PROBE_EVERY_S = 0.02
SAMPLE_EVERY_S = 0.05
QUIET_S = 2.0  # before the attack (baseline) and after it (recovery)
PY = sys.executable
REPO = Path(__file__).resolve().parents[1]

# ---- the daemon process -----------------------------------------------------------------------------------


async def _serve(realtime_sessions: int) -> None:
    from assistant.config import ServerConfig
    from assistant.server.ws import ControlServer
    from tests.server.fakes import FakeBackend, FakeController

    cfg = replace(ServerConfig(), port=0, token=TOKEN, realtime_sessions=realtime_sessions, idle_timeout_s=60.0)
    backend = FakeBackend()
    backend.keep_audio = False  # a real session keeps a bounded ring; the double would keep everything
    async with ControlServer(cfg, FakeController(), backend) as server:
        print(server.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the orchestrator closes it


@dataclass
class Daemon:
    proc: asyncio.subprocess.Process
    port: int

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


async def start_daemon(realtime_sessions: int = 2) -> Daemon:
    proc = await asyncio.create_subprocess_exec(
        PY, "-m", "benchmarks.server_abuse", "serve", "--sessions", str(realtime_sessions),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    return Daemon(proc, int(line))


async def stop_daemon(d: Daemon) -> tuple[int, str]:
    """Its exit code and its log."""
    assert d.proc.stdin is not None
    d.proc.stdin.close()
    _, err = await asyncio.wait_for(d.proc.communicate(), 30)
    return d.proc.returncode or 0, err.decode(errors="replace")


# ---- the attackers (run in their own process) ---------------------------------------------------------------


def _small_buffer_socket(port: int) -> socket.socket:
    """A connected socket whose receive buffer is tiny, so a client that does not read backs up at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


def hostile_frames(max_bytes: int = MIB) -> list[str | bytes]:
    """One round of hostile frames (about 3.5 MiB in 2,008 frames): every kind the server must answer cheaply."""
    return [
        json.dumps({"type": "x" * (max_bytes - 20)}),  # an unknown type the old server echoed whole
        json.dumps({"type": "status", "y" * 60_000: 1}),  # a huge unknown field name
        '{"type": "status", "id": ' + "9" * 5000 + "}",  # over the 4,300-digit int limit
        '{"type": "status", "x": ' + "[" * 100_000 + "]" * 100_000 + "}",  # nested past the recursion limit
        "{" * 60_000,  # not JSON
        b"\x00" * 60_000,  # binary
        json.dumps({"type": "say", "text": "z" * 500_000}),  # over the text limit
        json.dumps({"type": "ask", "text": "z" * (max_bytes + 1000)}),  # over the message limit: too_large
        *['{"type": "nope"}'] * 2000,  # small frames, each answered: the replies back up at a client that never reads
    ]


async def attack_nonreader(port: int, mib: float) -> dict[str, Any]:
    """Send `mib` MiB of hostile frames without reading; reconnect whenever the server closes the connection."""
    frames = hostile_frames()
    sent, connections, closes = 0, 0, []
    while sent < mib * MIB:
        connections += 1
        try:
            async with connect(
                f"ws://127.0.0.1:{port}/v1/control",
                sock=_small_buffer_socket(port),
                additional_headers=BEARER,
                max_queue=1,  # stop reading from the socket after one message: the client never reads
                close_timeout=1,
            ) as ws:
                while sent < mib * MIB:
                    for f in frames:
                        await ws.send(f)
                        sent += len(f)
        except (ConnectionClosed, OSError) as e:
            code = e.rcvd.code if isinstance(e, ConnectionClosed) and e.rcvd is not None else None
            closes.append(code)
    return {"sent_mib": round(sent / MIB, 1), "connections": connections, "close_codes": sorted(set(map(str, closes)))}


async def attack_handshakes(port: int, n: int = 32, hold_s: float = 1.0) -> dict[str, Any]:
    """`n` concurrent Realtime handshakes; each holds its session for `hold_s`. Counts sessions granted."""

    async def one() -> str:
        try:
            async with connect(f"ws://127.0.0.1:{port}/v1/realtime", additional_headers=BEARER) as ws:
                first = json.loads(await ws.recv())
                if first["type"] == "session.created":
                    await asyncio.sleep(hold_s)
                    return "session"
                return str(first.get("error", {}).get("code", first["type"]))
        except (ConnectionClosed, InvalidStatus, OSError) as e:
            return type(e).__name__

    got = await asyncio.gather(*(one() for _ in range(n)))
    return {"handshakes": n, "sessions": got.count("session"), "refused": got.count("session_unavailable")}


async def attack_oversized(port: int, rounds: int) -> dict[str, Any]:
    """Oversized and deeply nested input from a client that reads its errors; counts the error codes."""
    codes: dict[str, int] = {}
    hard_closes = 0
    url = f"ws://127.0.0.1:{port}/v1/control"
    for _ in range(rounds):
        async with connect(url, additional_headers=BEARER, max_size=None) as ws:
            await ws.recv()  # hello
            for f in hostile_frames()[2:8]:
                await ws.send(f)
                reply = json.loads(await ws.recv())
                codes[reply.get("code", "?")] = codes.get(reply.get("code", "?"), 0) + 1
        # not `async with`: closing again a connection the server already failed trips over its dead transport
        ws = await connect(url, additional_headers=BEARER, max_size=None)
        await ws.recv()
        try:
            await ws.send(json.dumps({"type": "say", "text": "q" * (5 * MIB)}))  # over 4x the limit
            await ws.recv()
        except ConnectionClosed as e:
            hard_closes += e.rcvd is not None and e.rcvd.code == 1009
        else:
            await ws.close()
    return {"rounds": rounds, "error_codes": codes, "closed_1009": hard_closes}


async def attack_audio(port: int, seconds: float) -> dict[str, Any]:
    """A Realtime client appending 1 MiB of audio back to back for `seconds`; it reads what comes back."""
    raw = (MIB - 100) * 3 // 4 // 2 * 2  # the most pcm16 whose base64 fits a 1 MiB message (~16 s at 24 kHz)
    chunk = base64.b64encode(os.urandom(raw)).decode()  # noise
    msg = json.dumps({"type": "input_audio_buffer.append", "audio": chunk})
    codes: list[str] = []
    appended = 0
    async with connect(f"ws://127.0.0.1:{port}/v1/realtime", additional_headers=BEARER, max_size=None) as ws:
        await ws.recv()  # session.created

        async def read() -> None:
            async for raw in ws:
                got = json.loads(raw)
                if got["type"] == "error":
                    codes.append(got["error"]["code"])

        reader = asyncio.create_task(read())
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await ws.send(msg)
            appended += 1
        await asyncio.sleep(0.5)
        reader.cancel()
    return {
        "appends_1mib": appended,
        "errors": {c: codes.count(c) for c in sorted(set(codes))},
    }


ATTACKS: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
    "nonreader": attack_nonreader,
    "handshakes": attack_handshakes,
    "oversized": attack_oversized,
    "audio": attack_audio,
}


# ---- the orchestrator -------------------------------------------------------------------------------------


@dataclass
class Phase:
    rtt_ms: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        r = sorted(self.rtt_ms)
        return {
            "status_n": len(r),
            "status_p50_ms": round(statistics.median(r), 2) if r else None,
            "status_p95_ms": round(r[int(0.95 * (len(r) - 1))], 2) if r else None,
            "status_max_ms": round(r[-1], 2) if r else None,
            "rss_mb_max": round(max(self.rss_mb), 1) if self.rss_mb else None,
            "rss_mb_last": round(self.rss_mb[-1], 1) if self.rss_mb else None,
            "fds_max": max(self.fds) if self.fds else None,
            "fds_last": self.fds[-1] if self.fds else None,
        }


async def run_scenario(name: str, args: list[str], sessions: int = 2) -> dict[str, Any]:
    """Baseline, attack (in its own process), recovery; the well-behaved client probes `status` throughout."""
    daemon = await start_daemon(sessions)
    phases = {"before": Phase(), "during": Phase(), "after": Phase()}
    current = ["before"]
    try:
        async with connect(f"ws://127.0.0.1:{daemon.port}/v1/control", additional_headers=BEARER) as ws:
            await ws.recv()

            async def probe() -> None:
                i = 0
                while True:
                    t = time.perf_counter()
                    await ws.send(json.dumps({"type": "status", "id": i}))
                    while json.loads(await ws.recv()).get("id") != i:
                        pass
                    phases[current[0]].rtt_ms.append((time.perf_counter() - t) * 1000)
                    i += 1
                    await asyncio.sleep(PROBE_EVERY_S)

            async def sample() -> None:
                while True:
                    phases[current[0]].rss_mb.append(daemon.rss_mb())
                    phases[current[0]].fds.append(daemon.fds())
                    await asyncio.sleep(SAMPLE_EVERY_S)

            tasks = [asyncio.create_task(probe()), asyncio.create_task(sample())]
            await asyncio.sleep(QUIET_S)
            current[0] = "during"
            t0 = time.monotonic()
            attacker = await asyncio.create_subprocess_exec(
                PY, "-m", "benchmarks.server_abuse", "attack", name, "--port", str(daemon.port), *args,
                stdout=asyncio.subprocess.PIPE, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
            )  # fmt: skip
            out, _ = await attacker.communicate()
            attack_s = time.monotonic() - t0
            current[0] = "after"
            await asyncio.sleep(QUIET_S)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        code, log = await stop_daemon(daemon)
    result: dict[str, Any] = {"scenario": name, "attack_s": round(attack_s, 1), "daemon_exit": code}
    result["daemon_closed"] = {c: log.count(f"({c}):") for c in ("1008", "1013") if f"({c}):" in log}
    result["daemon_tracebacks"] = log.count("Traceback")
    result["attack"] = json.loads(out.decode().strip().splitlines()[-1]) if out.strip() else None
    result.update({k: v.summary() for k, v in phases.items()})
    before = result["before"]["rss_mb_last"]
    result["rss_growth_mb"] = round(max(result["during"]["rss_mb_max"] or before, before) - before, 1)
    result["rss_after_minus_before_mb"] = round(result["after"]["rss_mb_last"] - before, 1)
    return result


def scenario_args(name: str, mib: float, audio_s: float, rounds: int) -> list[str]:
    return {
        "nonreader": ["--mib", str(mib)],
        "handshakes": [],
        "oversized": ["--rounds", str(rounds)],
        "audio": ["--seconds", str(audio_s)],
    }[name]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="role")
    serve = sub.add_parser("serve")
    serve.add_argument("--sessions", type=int, default=2)
    attack = sub.add_parser("attack")
    attack.add_argument("name", choices=sorted(ATTACKS))
    attack.add_argument("--port", type=int, required=True)
    attack.add_argument("--mib", type=float, default=150.0)
    attack.add_argument("--seconds", type=float, default=20.0)
    attack.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", default="nonreader,handshakes,oversized,audio")
    ap.add_argument("--mib", type=float, default=150.0)
    ap.add_argument("--audio-s", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.role == "serve":
        asyncio.run(_serve(a.sessions))
        return
    if a.role == "attack":
        kwargs: dict[str, Any] = {
            "nonreader": {"mib": a.mib},
            "handshakes": {},
            "oversized": {"rounds": a.rounds},
            "audio": {"seconds": a.seconds},
        }[a.name]
        print(json.dumps(asyncio.run(ATTACKS[a.name](a.port, **kwargs))))
        return
    results = []
    for name in a.only.split(","):
        r = asyncio.run(run_scenario(name, scenario_args(name, a.mib, a.audio_s, a.rounds)))
        print(json.dumps(r), flush=True)
        results.append(r)
    if a.json:
        a.json.write_text(json.dumps({"machine": os.uname().machine, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
