"""Tool rounds through the whole conversation with a real tiny mlx-lm model (Gemma 4's and Qwen 3's formats):
the model's call (teacher-forced) runs the tool on the event loop, no call text reaches the TTS, the answer
continues, and the completed turn is stored in the memory database."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from assistant.compute import Compute
from assistant.config import Config, LlmConfig
from assistant.conversation import Conversation
from assistant.engines import Engines
from assistant.llm import Chat
from assistant.memory import Memory
from assistant.tools.registry import Tool, Toolbox
from tests.llm.test_tool_chat import RESULT, SCRIPTS, TIME_TOOL, force
from tests.llm.tiny import make_tiny
from tests.pipeline.doubles import FakeSink, RuleVad, WordTranscriber, WordTts


@pytest.mark.parametrize("family", ["gemma4-tools", "qwen3"])
def test_spoken_answer_with_a_tool_call(family: str, tmp_path: Path) -> None:
    """The call in the model's own format runs get_time with its arguments; the TTS gets only the speech."""
    folder = make_tiny(tmp_path / family, family, seed=3, window=4096)
    llm = LlmConfig(model=str(folder), temperature=0.0, max_tokens=120, system_prompt="Be brief.")
    compute = Compute()  # MLX streams are per thread: the model is loaded where it runs, as the daemon does
    chat = compute.submit(Chat.load, llm).result()
    calls: list[Mapping[str, Any]] = []

    async def get_time(args: Mapping[str, Any]) -> str:
        calls.append(dict(args))
        return RESULT

    fn = TIME_TOOL["function"]
    tool = Tool(fn["name"], fn["description"], fn["parameters"], get_time)
    call_text, after = SCRIPTS[family]
    force(chat, "Let me check. " + call_text + after)
    tts = WordTts()
    engines = Engines(WordTranscriber(), chat, tts, None, lambda c: RuleVad(c))
    cfg = dataclasses.replace(Config(), llm=chat.cfg)

    async def main() -> None:
        memory = Memory(tmp_path / "memory.sqlite3")
        c = Conversation(cfg, engines, None, FakeSink(), compute, toolbox=Toolbox([tool]), memory=memory)
        await c.prepare()
        answer = await c.ask("What time is it in Paris?")
        await c.aclose()
        spoken = "".join(t for u in tts.utterances for t in u.consumed)
        assert calls == [{"zone": "Europe/Paris"}]
        assert spoken.startswith("Let me check.") and answer.startswith("Let me check.")
        for marker in ("tool_call", "get_time", "Europe/Paris", "<|"):
            assert marker not in spoken
        stored = [m for turn in memory.turns() for m in turn]
        assert [m.role for m in stored if m.role != "assistant"] == ["user", "tool"]
        assert any(m.tool_calls and m.tool_calls[0].name == "get_time" for m in stored)
        assert [m.template_dict() for m in stored] == [m.template_dict() for m in chat.history]
        memory.close()

    try:
        asyncio.run(main())
    finally:
        compute.close(5.0)
