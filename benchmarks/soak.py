"""Soak: many synthetic turns through the real Conversation (scripted engine doubles), watching for leaks.

Every turn is spoken audio -> VAD -> STT -> LLM -> TTS -> sink; every 3rd turn the user resumes speaking after
a speculative start, every 5th interrupts the reply. Resident memory, thread and task counts are sampled after
turn 50 and after the last turn. JSON on stdout.

    PYTHONPATH=. python benchmarks/soak.py --turns 500
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assistant.events import BargeIn, ResponseDone
from tests.pipeline.doubles import FRAME, FakeSink, ScriptedChat
from tests.pipeline.harness import ANSWER, Harness, eventually


def rss_bytes() -> int:
    """Current resident set size (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def sample() -> dict[str, Any]:
    gc.collect()
    return {"rss_bytes": rss_bytes(), "threads": threading.active_count(), "tasks": len(asyncio.all_tasks())}


async def one_turn(h: Harness, i: int) -> None:
    resume, barge = i % 3 == 1, i % 5 == 2
    h.sink.auto = not barge
    h.speak("what", "time")
    if resume:
        h.silence(3)  # speculative start...
        h.speak("is", "it")  # ...cancelled: the same turn goes on
    h.silence(6)
    if barge:
        await eventually(lambda: h.sink.total >= 2 * FRAME)
        h.sink.played = FRAME
        h.speak("stop")
        await h.next_event(BargeIn)
        h.sink.auto = True
        h.silence(6)
    await h.next_event(ResponseDone, lambda e: not e.interrupted)
    h.seen.clear()


async def soak(turns: int, early: int = 50) -> dict[str, Any]:
    early = min(early, turns)
    out: dict[str, Any] = {"turns": turns}
    chat = ScriptedChat(list(ANSWER), max_history=40)
    began = time.monotonic()
    async with Harness(chat=chat, sink=FakeSink()) as h:
        for i in range(1, turns + 1):
            await one_turn(h, i)
            if i == early:
                out[f"after_{early}"] = sample()
        out[f"after_{turns}"] = sample()
        out["compute_jobs"] = h.p.compute.jobs_run
        out["compute_skipped"] = h.p.compute.jobs_skipped
    out["seconds"] = round(time.monotonic() - began, 2)
    a, b = out[f"after_{early}"], out[f"after_{turns}"]
    out["rss_growth"] = round(b["rss_bytes"] / a["rss_bytes"] - 1.0, 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--turns", type=int, default=500)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(soak(args.turns)), indent=2))


if __name__ == "__main__":
    main()
