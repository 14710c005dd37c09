"""Kill -9 during a turn: the memory database holds every completed turn, whole, and nothing of the cut one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from assistant.memory import Memory

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import asyncio, sys
from collections.abc import Mapping
from typing import Any
from assistant.config import Config
from assistant.conversation import Conversation
from assistant.engines import Engines
from assistant.memory import Memory
from assistant.tools.registry import Tool, Toolbox
from tests.pipeline.doubles import FakeSink, RuleVad, ToolChat, WordTranscriber, WordTts

CALL = '<tool_call>{"name": "wait", "arguments": {}}</tool_call>'

async def forever(_: Mapping[str, Any]) -> str:
    print("in the tool", flush=True)
    await asyncio.Event().wait()
    return ""

async def main() -> None:
    memory = Memory(__import__("pathlib").Path(sys.argv[1]))
    chat = ToolChat([["One", " two."], ["Three", " four."], ["Let me", " wait. ", CALL]])
    engines = Engines(WordTranscriber(), chat, WordTts(), None, lambda c: RuleVad(c))
    tool = Tool("wait", "Waits.", {"type": "object", "properties": {}}, forever, timeout_s=600)
    c = Conversation(Config(), engines, None, FakeSink(), toolbox=Toolbox([tool]), memory=memory)
    await c.prepare()
    await c.ask("first")
    await c.ask("second")
    await c.ask("third")

asyncio.run(main())
"""


def test_kill_during_a_turn_keeps_the_completed_ones(tmp_path: Path) -> None:
    """Two turns complete, the third is cut by SIGKILL inside its tool round: the database has exactly the two."""
    db = tmp_path / "memory.sqlite3"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "in the tool"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(30)
    memory = Memory(db)
    turns = [[(m.role, m.content) for m in turn] for turn in memory.turns()]
    memory.close()
    assert turns == [[("user", "first"), ("assistant", "One two.")], [("user", "second"), ("assistant", "Three four.")]]
