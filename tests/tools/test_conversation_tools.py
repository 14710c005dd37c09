"""ConversationTools: the bookkeeping of a conversation's tools and of a Realtime client's function calls."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from assistant.errors import InputError
from assistant.events import FunctionCall
from assistant.tools.calls import AUTO, ToolCall, ToolChoice
from assistant.tools.registry import Tool, Toolbox
from assistant.tools.session import ConversationTools, OpenAnswer


def schema(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": "", "parameters": {}}}


async def noon(_: Mapping[str, Any]) -> str:
    return "12:00"


def test_handed_off_calls_are_continued_with_the_client_outputs() -> None:
    """Calls of the client's functions are published as FunctionCall events; the next reply continues that
    answer with each call's output (an error result for a call the client sent none for), and only once."""
    tools = ConversationTools(None)
    tools.set_functions([schema("get_weather"), schema("get_time")], AUTO)
    assert tools.for_reply(1) == (None, {"get_weather", "get_time"})
    weather, time_ = ToolCall("get_weather", {"city": "Zürich"}, id="c1"), ToolCall("get_time", {}, id="c2")
    published = tools.handed_off(1, [weather, time_], "Let me check.", 5.0)
    assert published[0] == FunctionCall(1, "c1", "get_weather", '{"city": "Zürich"}', 5.0)
    with pytest.raises(InputError, match=r"awaiting: c1, c2"):
        tools.add_output("c9", "?")
    tools.add_output("c1", "sunny")
    answer = tools.reply_starts(2, answers=True)
    missing = json.dumps({"error": "the client sent no function_call_output for this call"})
    assert answer == OpenAnswer("Let me check.", [(weather, "sunny"), (time_, missing)])
    assert tools.reply_starts(3, answers=True) is None


def test_response_create_tools_are_for_the_next_answer_alone() -> None:
    """response.create's tools go to the next reply the model makes (not a spoken text), and the session's
    come back when it is done; tool_choice "none" hands nothing to the client."""
    tools = ConversationTools(None)
    tools.set_functions([schema("get_time")], ToolChoice("none"))
    assert tools.for_reply(1) == (None, set())
    own = ([schema("book")], ToolChoice("required"))
    tools.functions_for_next_response(*own)
    tools.reply_starts(2, answers=False)  # a text to speak takes nothing
    tools.reply_starts(3, answers=True)
    assert tools.for_reply(3) == (own, {"book"})
    assert tools.reply_done(3) == ([schema("get_time")], ToolChoice("none"))
    assert tools.reply_done(4) is None and tools.for_reply(4) == (None, set())


def test_app_tools_take_no_taken_name_and_leave_with_their_app() -> None:
    """An app may not register a name the daemon or another app uses (nothing changes then); its tools join
    the toolbox, and go when it leaves."""
    tools = ConversationTools(Toolbox([Tool("get_time", "The time.", {}, noon)]))
    with pytest.raises(InputError, match="get_time"):
        tools.set_app_tools("lights", [schema("get_time")], 5.0, lambda *_: None)
    offered = tools.set_app_tools("lights", [schema("lights_on")], 5.0, lambda *_: None)
    assert [t.name for t in offered] == ["get_time", "lights_on"]
    with pytest.raises(InputError, match="lights_on"):
        tools.set_app_tools("other", [schema("lights_on")], 5.0, lambda *_: None)
    assert tools.toolbox is not None and [t.name for t in tools.toolbox.tools] == ["get_time", "lights_on"]
    assert tools.app_gone("other") is None
    assert [t.name for t in tools.app_gone("lights") or []] == ["get_time"]
