"""Tool calls, memory and reminders wired into the conversation, with scripted engine doubles."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from assistant.config import Config
from assistant.conversation import Conversation
from assistant.daemon import DaemonControl
from assistant.engines import Engines
from assistant.events import ResponseDone, SpeculationCancelled, SpeculationStarted
from assistant.memory import Memory
from assistant.tools.registry import Tool, Toolbox
from assistant.tools.timers import ReminderScheduler, speak_reminders
from tests.pipeline.doubles import FakeSink, RuleVad, ToolChat, WordTranscriber, WordTts
from tests.pipeline.harness import Harness, eventually

CALL = ["Let me", " see. ", "<tool", "_call>", '{"name": "clock", ', '"arguments": {}}', "</tool_call>", " junk"]
AFTER = ["It is", " noon."]


def conversation(chat: ToolChat, tools: list[Tool], memory: Memory | None = None, **cfg: Any) -> Conversation:
    engines = Engines(WordTranscriber(), chat, WordTts(), None, lambda c: RuleVad(c))
    config = Config().replace({"pipeline.mode": "hands_free", "vad.preroll_ms": 0, **cfg})
    return Conversation(config, engines, None, FakeSink(), toolbox=Toolbox(tools), memory=memory)


def clock_tool(delay: float = 0.0, log: list[str] | None = None) -> Tool:
    async def run(_: Mapping[str, Any]) -> dict[str, str]:
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            if log is not None:
                log.append("cancelled")
            raise
        return {"time": "12:00"}

    return Tool("clock", "The time.", {"type": "object", "properties": {}}, run)


def spoken(c: Conversation) -> str:
    tts = c.engines.tts
    assert isinstance(tts, WordTts)
    return "".join(t for u in tts.utterances for t in u.consumed)


def test_tool_call_runs_and_the_answer_continues() -> None:
    """A call in the answer runs the tool, its result goes back, the answer goes on; no call text is spoken."""

    async def main() -> None:
        chat = ToolChat([CALL, AFTER])
        c = conversation(chat, [clock_tool()])
        await c.prepare()
        answer = await c.ask("what time is it")
        assert answer == "Let me see. It is noon."
        assert "tool" not in spoken(c) and "clock" not in spoken(c) and "junk" not in spoken(c)
        assert "It is noon." in spoken(c) and spoken(c).startswith("Let me see.")
        ((call, result),) = chat.results[0]
        assert call.name == "clock" and json.loads(result) == {"time": "12:00"}
        assert [m.role for m in chat.history] == ["user", "assistant", "tool", "assistant"]
        assert chat.tools[0]["function"]["name"] == "clock" and "Today is" in chat.system_prompt
        await c.aclose()

    asyncio.run(main())


def test_slow_tool_gets_a_filler() -> None:
    """A tool slower than tools.filler_after_ms makes the assistant say a filler phrase before the answer."""

    async def main() -> None:
        chat = ToolChat([CALL, AFTER])
        c = conversation(chat, [clock_tool(0.5)], **{"tools.filler_after_ms": 20, "tools.filler": ["Hold on."]})
        await c.prepare()
        await c.ask("what time is it")
        assert "Let me see. Hold on. It is noon." == spoken(c).replace("  ", " ").strip()
        await c.aclose()

    asyncio.run(main())


def test_barge_in_cancels_a_running_tool() -> None:
    """An interruption while a tool runs cancels it; the history keeps what was heard, not the call text."""

    async def main() -> None:
        log: list[str] = []
        chat = ToolChat([CALL, AFTER])
        c = conversation(chat, [clock_tool(30.0, log)])
        await c.prepare()
        asked = asyncio.ensure_future(c.ask("what time is it"))
        await eventually(lambda: any(r.tool_round is not None for r in c._replies.values()))
        c.command("interrupt")
        heard = await asked
        await eventually(lambda: log == ["cancelled"])
        assert "tool_call" not in heard and chat.results == []
        assert chat.history[-1].role == "assistant" and chat.history[-1].interrupted
        await c.aclose()

    asyncio.run(main())


def test_unknown_and_malformed_calls_are_fed_back_as_errors() -> None:
    """A call to a missing tool and an unparsable call reach the model as error results; the reply goes on."""

    async def main() -> None:
        bad = ['<tool_call>{"name": "weather", "arguments": {}}</tool_call>', '<tool_call>{"name": </tool_call>']
        chat = ToolChat([bad, AFTER])
        c = conversation(chat, [clock_tool()])
        await c.prepare()
        assert await c.ask("what time is it") == "It is noon."
        errors = [json.loads(text)["error"] for _, text in chat.results[0]]
        assert "no tool `weather`" in errors[0] and "could not be parsed" in errors[1]
        await c.aclose()

    asyncio.run(main())


def test_rounds_past_the_limit_are_refused() -> None:
    """A model that keeps calling gets refusals after tools.max_rounds and must answer."""

    async def main() -> None:
        call = ['<tool_call>{"name": "clock", "arguments": {}}</tool_call>']
        chat = ToolChat([call, call, AFTER])
        c = conversation(chat, [clock_tool()], **{"tools.max_rounds": 1})
        await c.prepare()
        assert await c.ask("what time is it") == "It is noon."
        assert "12:00" in chat.results[0][0][1] and "at most 1 rounds" in chat.results[1][0][1]
        await c.aclose()

    asyncio.run(main())


def test_turns_are_stored_and_restored(tmp_path: Path) -> None:
    """Each completed turn (with its tool round) is in the database and a new daemon starts from it."""

    async def main() -> None:
        memory = Memory(tmp_path / "m.sqlite3")
        chat = ToolChat([CALL, AFTER, ["Bye."]])
        c = conversation(chat, [clock_tool()], memory)
        await c.prepare()
        await c.ask("what time is it")
        await c.ask("goodbye")
        await c.aclose()
        assert [m.role for t in memory.turns() for m in t] == ["user", "assistant", "tool", "assistant"] * 1 + [
            "user",
            "assistant",
        ]
        memory.close()
        again = Memory(tmp_path / "m.sqlite3")
        chat2 = ToolChat([])
        c2 = conversation(chat2, [clock_tool()], again)
        await c2.prepare()
        assert [m.content for m in chat2.history][-2:] == ["goodbye", "Bye."]
        DaemonControl(c2).history_reset()
        assert again.turns() == []
        await c2.aclose()
        again.close()

    asyncio.run(main())


def test_a_due_reminder_is_spoken_while_idle(tmp_path: Path) -> None:
    """A reminder that fell due (e.g. while the daemon was down) is spoken at start and then marked fired."""

    async def main() -> None:
        memory = Memory(tmp_path / "m.sqlite3")
        memory.add_reminder(time.time() - 5, "call mum", time.time() - 60)
        c = conversation(ToolChat([]), [clock_tool()], memory)
        await c.prepare()
        speaking = asyncio.create_task(speak_reminders(ReminderScheduler(memory), c))
        await eventually(lambda: memory.pending_reminders() == [])
        assert "Reminder:" in spoken(c) and "mum" in spoken(c)
        speaking.cancel()
        await c.aclose()
        memory.close()

    asyncio.run(main())


def test_a_speculative_answer_never_runs_a_tool() -> None:
    """A tool call in an answer started at the first silence waits for the turn to be confirmed; when speech
    resumes the answer is dropped and the tool never ran; the confirmed answer runs it once."""

    async def main() -> None:
        ran: list[str] = []

        async def clock(_: Mapping[str, Any]) -> str:
            ran.append("clock")
            return "12:00"

        chat = ToolChat([CALL, CALL, AFTER])
        async with Harness(chat=chat) as h:  # type: ignore[arg-type]
            h.p.tools.toolbox = Toolbox([Tool("clock", "The time.", {"type": "object", "properties": {}}, clock)])
            h.speak("what", "time")
            h.silence(3)
            await h.next_event(SpeculationStarted)
            await eventually(lambda: len(chat.scripts) == 2)  # the speculative answer reached its call
            await asyncio.sleep(0.1)
            assert ran == []
            h.speak("is", "it")
            await h.next_event(SpeculationCancelled)
            h.silence(6)
            done = await h.next_event(ResponseDone)
            assert ran == ["clock"] and done.text == "Let me see. It is noon."

    asyncio.run(main())


def test_history_reset_during_a_turn_stores_nothing_of_it(tmp_path: Path) -> None:
    """history.reset while a tool runs: the cut answer is not written to the memory database after the erase."""

    async def main() -> None:
        memory = Memory(tmp_path / "m.sqlite3")
        chat = ToolChat([["Hi."], CALL, AFTER])
        c = conversation(chat, [clock_tool(30.0)], memory)
        await c.prepare()
        await c.ask("hello")
        assert len(memory.turns()) == 1
        asked = asyncio.ensure_future(c.ask("what time is it"))
        await eventually(lambda: any(r.tool_round is not None for r in c._replies.values()))
        DaemonControl(c).history_reset()
        await asked
        await asyncio.sleep(0.1)
        assert memory.turns() == []
        await c.aclose()
        memory.close()

    asyncio.run(main())
