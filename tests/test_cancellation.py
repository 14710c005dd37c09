"""A cancelled task ends: no wait in the package swallows a cancellation.

Python 3.11's `asyncio.wait_for` returns the awaited result instead of raising CancelledError when the
cancellation lands in the loop iteration where the awaited future completes (fixed in 3.12). The listening loop
waits on a microphone block every 30 ms, so a daemon cancelled at shutdown went on reading (and reopened the
microphone) forever, and `asyncio.run` never returned. The package waits with `asyncio.timeout` instead.
"""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

from assistant.audio.capture import Capture
from assistant.config import AudioConfig
from tests import audio_doubles
from tests.audio_doubles import FakeSounddevice

PACKAGE = Path(__file__).resolve().parents[1] / "assistant"
BOUND_S = 5.0  # safety net: a swallowed cancellation never ends at all


def test_the_package_never_waits_with_asyncio_wait_for() -> None:
    """No module of the package calls asyncio.wait_for (on 3.11 it can swallow a cancellation)."""
    calls = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "wait_for":
                if isinstance(node.func.value, ast.Name) and node.func.value.id == "asyncio":
                    calls.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not calls, f"use `async with asyncio.timeout(s): await x` instead of asyncio.wait_for at {calls}"


def test_a_microphone_read_cancelled_as_its_block_arrives_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """Capture.read() cancelled in the loop iteration that delivers its block raises CancelledError."""
    sd = FakeSounddevice(running=False)  # blocks come only when the test ticks the stream
    audio_doubles.install(monkeypatch, sd)

    async def main() -> tuple[bool, str]:
        loop = asyncio.get_running_loop()
        async with Capture(AudioConfig()) as capture:
            reader = asyncio.create_task(capture.read())
            await asyncio.sleep(0.05)  # the reader waits for a block
            assert not reader.done()
            stream = sd.streams[-1]
            stream.tick(loop.time())  # queues the block's delivery on the loop (call_soon_threadsafe)...
            loop.call_soon(reader.cancel)  # ...and the cancellation right behind it, in the same iteration
            done, _ = await asyncio.wait([reader], timeout=BOUND_S)
            return reader in done and reader.cancelled(), repr(reader)  # a swallowed one returns the block

    try:
        ended, left = asyncio.run(main())
    finally:
        sd.release()
    assert ended, f"the read swallowed its cancellation: {left}"
