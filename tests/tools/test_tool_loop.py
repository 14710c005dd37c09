"""The whole tool loop over a tiny real Gemma 4-format model: the forced call is detected in the stream, run by
the toolbox on the event loop (the built-in clock, or a slow tool that wants a filler and is cancelled by
barge-in), its result enters the chat as a tool message, and the answer continues like a full re-prefill."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from mlx_lm.sample_utils import greedy_sampler

from assistant import config
from assistant.llm import Message
from assistant.memory import Memory
from assistant.tools.calls import Speech, ToolCall
from assistant.tools.registry import Tool, Toolbox, refused
from assistant.tools.setup import build_toolbox
from tests.llm.test_chat import reference
from tests.llm.test_tool_chat import force, load, split
from tests.llm.tiny import make_tiny
from tests.tools.test_tools import NOW, Clock


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("g4t"), "gemma4-tools", seed=5, window=4096)


def test_spoken_question_to_clock_tool_to_continued_answer(gemma: Path, tmp_path: Path) -> None:
    """'What time is it?': the model's call runs the built-in clock, whose result is what the model reads next;
    no call text is spoken, and the answer after the result equals a re-prefill of the history."""
    cfg = config.Config().replace({"tools.timezone": "Europe/Paris"})
    box, _ = build_toolbox(cfg, Memory(tmp_path / "m.sqlite3"), Clock(NOW))
    chat = load(gemma)
    assert chat.set_tools(box.schemas())
    force(chat, "<|tool_call>call:get_time{}<tool_call|><|tool_response>")
    segments, detector = split(chat, chat.respond("What time is it?"))
    assert not [s for s in segments if isinstance(s, Speech)]
    calls = [s for s in segments if isinstance(s, ToolCall)]

    async def run_round() -> list[Any]:
        return await box.start(calls).results()

    results = asyncio.run(run_round())
    assert json.loads(results[0].content)["time"] == "14:05"
    chat._sampler = greedy_sampler
    "".join(chat.continue_with_results(detector.speech, [(r.call, r.content) for r in results]))
    assert chat.history[2] == Message("tool", results[0].content, tool_call_id=calls[0].id, name="get_time")
    assert chat.answer_tokens == reference(chat, chat.history, chat.cfg.max_tokens)
    prompt = chat.tokenizer.decode(chat.render(chat.history, add_generation_prompt=True))
    assert prompt.endswith(
        '<|tool_response>response:get_time{value:<|"|>' + results[0].content + '<|"|>}<tool_response|>'
    )


def test_slow_tool_filler_then_barge_in_cancel_then_next_turn(gemma: Path) -> None:
    """A slow tool is not done within the filler delay; barge-in cancels it; the turn is recorded with what was
    heard, and the next turn still equals a re-prefill. Past max_rounds, calls get a refusal result instead."""
    cancelled = []

    async def slow(_: Mapping[str, Any]) -> str:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return "late"

    box = Toolbox([Tool("get_time", "The time.", {"type": "object", "properties": {}}, slow, timeout_s=60)])
    chat = load(gemma)
    chat.set_tools(box.schemas())
    force(chat, "One moment. <|tool_call>call:get_time{}<tool_call|><|tool_response>")
    segments, detector = split(chat, chat.respond("What time is it?"))
    assert "".join(s.text for s in segments if isinstance(s, Speech)) == "One moment. " and [
        c.name for c in detector.calls
    ] == ["get_time"]

    async def pump() -> bool:
        round_ = box.start(detector.calls)
        filler_due = not await round_.done_within(0.05)
        round_.cancel()  # the user spoke
        with pytest.raises(asyncio.CancelledError):
            await round_.results()
        return filler_due

    assert asyncio.run(pump()) and cancelled == [True]
    chat.finish_turn(detector.speech)  # what the user heard: the speech before the call
    assert chat.history[-1] == Message("assistant", "One moment.", interrupted=True)
    chat._sampler = greedy_sampler
    expected = reference(chat, [*chat.history, Message("user", "Never mind.")], chat.cfg.max_tokens)
    "".join(chat.respond("Never mind."))
    assert chat.answer_tokens == expected
    (refusal,) = refused([ToolCall("get_time")], "no more tool calls in this answer; answer with what you know")
    assert json.loads(refusal.content) == {"error": "no more tool calls in this answer; answer with what you know"}
