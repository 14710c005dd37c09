"""Fair compute: does a maximal native `ask` delay another client's voice reply? (headless daemon, tiny engines)

    PYTHONPATH=$PWD python -m benchmarks.server_fairness [--runs 3] [--json FILE]

The real ControlServer, pipeline, Realtime sessions and compute thread over the tiny random-weight engines of
tests/tiny_engines.py. A Realtime client asks for a spoken reply (a text item, then response.create) and times
response.create -> its first `response.output_audio.delta` (first audio) and the median gap between its audio
deltas (one TTS chunk step). Conditions: alone; with a concurrent `ask` of the longest text allowed (4,000
characters) from a native client, at the server's default priority for text commands (below the voice loop)
and at the priority replies had before (equal). The issue's bound: first-audio delay < one TTS chunk step.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from assistant.compute import Priority
from assistant.server.protocol import MAX_TEXT_CHARS
from tests import tiny_engines
from tests.server.test_headless_e2e import TOKEN, daemon

BEARER = {"Authorization": f"Bearer {TOKEN}"}
ASK = ("Tell me everything about the history of the bicycle. " * 100)[:MAX_TEXT_CHARS]


async def voice_reply(port: int, ask_port: int | None) -> dict[str, float]:
    """One spoken Realtime reply, with a maximal native ask sent just before it when `ask_port` is given."""
    async with connect(f"ws://127.0.0.1:{port}/v1/realtime", additional_headers=BEARER, max_size=None) as rt:
        assert json.loads(await rt.recv())["type"] == "session.created"
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say something."}]}
        await rt.send(json.dumps({"type": "conversation.item.create", "item": item}))
        asker = None
        if ask_port is not None:
            asker = asyncio.create_task(_ask(ask_port))
            await asyncio.sleep(0.05)  # the ask's prefill is on the compute thread first
        t0 = time.monotonic()
        await rt.send(json.dumps({"type": "response.create"}))
        stamps: list[float] = []
        while True:
            msg = json.loads(await asyncio.wait_for(rt.recv(), 300))
            if msg["type"] == "response.output_audio.delta":
                stamps.append(time.monotonic())
            elif msg["type"] == "response.done":
                break
        ask_s = await asker if asker is not None else 0.0
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return {
        "first_audio_ms": (stamps[0] - t0) * 1000 if stamps else float("nan"),
        "chunk_step_ms": statistics.median(gaps) * 1000 if gaps else float("nan"),
        "ask_s": ask_s,
    }


async def _ask(port: int) -> float:
    t = time.monotonic()
    async with connect(f"ws://127.0.0.1:{port}/v1/control", additional_headers=BEARER) as ws:
        await ws.recv()  # hello
        await ws.send(json.dumps({"type": "ask", "id": 1, "text": ASK}))
        while json.loads(await asyncio.wait_for(ws.recv(), 300)).get("type") != "reply":
            pass
    return time.monotonic() - t


async def main(runs: int, prefill_step: int | None) -> dict[str, Any]:
    if prefill_step:
        from assistant import llm

        llm.PREFILL_STEP = prefill_step
    with tempfile.TemporaryDirectory() as root:
        cfg = tiny_engines.tiny_config(
            Path(root), {"pipeline.mode": "hands_free", "server.port": 0, "server.token": TOKEN}
        )
        out: dict[str, Any] = {}
        async with daemon(cfg) as (server, _pipeline):
            await voice_reply(server.port, None)  # warm-up
            for name, ask, priority in (
                ("alone", False, Priority.BACKGROUND),
                ("with ask, text below voice (default)", True, Priority.BACKGROUND),
                ("with ask, text equal to voice (before)", True, Priority.REPLY),
            ):
                server.text_priority = priority
                rows = [await voice_reply(server.port, server.port if ask else None) for _ in range(runs)]
                out[name] = {k: round(statistics.median(r[k] for r in rows), 1) for k in rows[0]}
                print(name, out[name], flush=True)
        base = out["alone"]["first_audio_ms"]
        for row in out.values():
            row["delay_ms"] = round(row["first_audio_ms"] - base, 1)
            row["delay_in_chunk_steps"] = round(row["delay_ms"] / out["alone"]["chunk_step_ms"], 2)
        return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--prefill-step", type=int, help="override llm.PREFILL_STEP (prompt tokens per compute step)")
    a = ap.parse_args()
    result = asyncio.run(main(a.runs, a.prefill_step))
    print(json.dumps(result, indent=2))
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")
