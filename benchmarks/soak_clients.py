"""Soak: clients that come and go through the headless daemon with tiny random-weight engines, watching for leaks.

Each round opens a /v1/realtime session that asks for a spoken reply (every other one is closed mid-reply), a
native client that subscribes, registers a tool and asks (every other one gone mid-ask), one Wyoming transcription
and one /v1/audio/speech request. Tasks, threads, fds, resident memory, MLX's buffer cache and the live
conversations, chats and sessions are sampled after the first rounds and after the last. JSON on stdout.

    PYTHONPATH=. python benchmarks/soak_clients.py --rounds 50
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from websockets.asyncio.client import connect

from benchmarks.soak import rss_bytes
from tests import tiny_engines

TOKEN = "soak-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WAIT_S = 120.0  # one event, on a loaded machine: a safety net, never a measurement


def fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1  # not Linux


async def until(ws: Any, kind: str) -> dict[str, Any]:
    while True:
        msg: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
        if msg["type"] == kind:
            return msg


async def realtime(port: int, leave_mid_reply: bool) -> None:
    async with connect(f"ws://127.0.0.1:{port}/v1/realtime", additional_headers=AUTH) as ws:
        await until(ws, "session.created")
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello there."}]}
        await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
        await ws.send(json.dumps({"type": "response.create"}))
        await until(ws, "response.created" if leave_mid_reply else "response.done")


async def native(port: int, leave_mid_ask: bool) -> None:
    async with connect(f"ws://127.0.0.1:{port}/v1/control", additional_headers=AUTH) as ws:
        await until(ws, "hello")
        tool = {"name": "lamp", "description": "Switch the lamp.", "parameters": {"type": "object", "properties": {}}}
        for msg in (
            {"type": "subscribe", "id": 1},
            {"type": "tools.register", "id": 2, "timeout_s": 5, "tools": [tool]},
            {"type": "ask", "id": 3, "text": "Hi."},
        ):
            await ws.send(json.dumps(msg))
        if leave_mid_ask:
            await until(ws, "reply")  # subscribe's: the ask is under way
            ws.transport.abort()
            return
        while (msg := await until(ws, "reply")).get("id") != 3:
            pass


async def wyoming_asr(port: int) -> None:
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient

    async with AsyncTcpClient("127.0.0.1", port) as c:
        await c.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        await c.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=bytes(32000)).event())
        await c.write_event(AudioStop().event())
        while (event := await asyncio.wait_for(c.read_event(), WAIT_S)) is not None and event.type != "transcript":
            pass


async def http_speech(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = b'{"input": "Hello there.", "response_format": "pcm"}'
    head = f"POST /v1/audio/speech HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
    writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    answer = await asyncio.wait_for(reader.read(), WAIT_S)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    writer.close()


def census(server: Any, compute: Any) -> dict[str, Any]:
    from assistant.conversation import Conversation
    from assistant.llm import Chat
    from assistant.sessions import RealtimeSession

    gc.collect()
    objects = gc.get_objects()
    return {
        "tasks": len(asyncio.all_tasks()),
        "threads": threading.active_count(),
        "fds": fds(),
        "rss_bytes": rss_bytes(),
        "mlx_cache_bytes": compute.submit(lambda: __import__("mlx.core").core.get_cache_memory()).result(),
        "conversations": sum(type(o) is Conversation for o in objects),
        "chats": sum(type(o) is Chat for o in objects),
        "realtime_sessions": sum(type(o) is RealtimeSession for o in objects),
        "server_clients": len(server.clients),
        "server_http_tasks": len(server.http_tasks),
    }


KINDS = ("realtime", "native", "wyoming", "http")


async def soak(rounds: int, early: int, root: Path, kinds: tuple[str, ...] = KINDS) -> dict[str, Any]:
    from assistant import cli
    from assistant.audio.sinks import NullSink
    from assistant.compute import Compute
    from assistant.conversation import Conversation
    from assistant.daemon import DaemonControl
    from assistant.oneshot import OneShot
    from assistant.server.ws import ControlServer
    from assistant.sessions import Sessions
    from assistant.wyoming import WyomingServices, speech_engines
    from tests.llm.servers import free_port

    changes = {"server.port": 0, "server.token": TOKEN, "llm.max_tokens": 8}
    cfg = tiny_engines.tiny_config(root, {**changes, "wyoming.asr_port": free_port(), "wyoming.tts_port": 0})
    out: dict[str, Any] = {"rounds": rounds, "kinds": list(kinds)}
    compute = Compute()
    began = time.monotonic()
    try:
        engines = await compute.run(cli.build_engines, cfg)
        pipeline = Conversation(cfg, engines, None, NullSink(), compute)
        backend = Sessions(pipeline, cli.SharedEngines(cfg, engines), cfg.server.realtime_sessions)
        audio = OneShot(cfg, engines, compute)
        speech = speech_engines(engines.transcriber, engines.tts)
        async with (
            ControlServer(cfg.server, DaemonControl(pipeline), backend, audio=audio) as server,
            WyomingServices(cfg, speech, compute) as wyoming,
        ):
            assert wyoming.asr_port is not None
            out["rss_mb_every_10"] = []
            for i in range(1, rounds + 1):
                if "realtime" in kinds:
                    await realtime(server.port, leave_mid_reply=i % 2 == 0)
                if "native" in kinds:
                    await native(server.port, leave_mid_ask=i % 2 == 0)
                if "wyoming" in kinds:
                    await wyoming_asr(wyoming.asr_port)
                if "http" in kinds:
                    await http_speech(server.port)
                if i % 10 == 0:
                    out["rss_mb_every_10"].append(round(rss_bytes() / 2**20, 1))
                if i in (early, rounds):
                    await asyncio.sleep(1.0)  # what the last clients left is torn down
                    out[f"after_{i}"] = census(server, compute)
        await pipeline.aclose()
    finally:
        await asyncio.to_thread(compute.close, 5.0)
    out["seconds"] = round(time.monotonic() - began, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--early", type=int, default=5, help="the round whose census is the baseline")
    parser.add_argument("--only", default=",".join(KINDS), help=f"the clients of each round, of {','.join(KINDS)}")
    args = parser.parse_args()
    kinds = tuple(k for k in args.only.split(",") if k)
    with tempfile.TemporaryDirectory() as root:
        result = asyncio.run(soak(args.rounds, min(args.early, args.rounds), Path(root), kinds))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
