"""Function calling over /v1/realtime, driven by the official `openai` SDK against a headless daemon: session.update
with tools, a user item, response.create -> a function_call item with its arguments streamed, a
function_call_output item, response.create -> the final answer, which the model wrote with that output in its
history. Every received event parses strictly into the SDK's models. With a scripted chat (Hermes JSON calls), a
tiny real Gemma 4 model whose chat template renders the tools and the result, and an OpenAI-compatible server.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import openai
import pytest

from assistant.config import Config
from assistant.llm import Chat, Message
from tests import tiny_engines
from tests.llm.servers import ScriptedServer, sse, text_chunk
from tests.llm.test_remote import scripted
from tests.llm.test_tool_chat import force
from tests.llm.tiny import make_tiny
from tests.pipeline.doubles import ToolChat
from tests.server.scripted_daemon import scripted_daemon
from tests.server.test_conformance import strict

TOKEN = "tools-token"
WAIT_S = 180.0  # safety net for a loaded shared CPU; never a timing assertion
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city now.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
OUTPUT = json.dumps({"sky": "sunny", "celsius": 21})


async def until(conn: Any, kind: str, errors_ok: bool = False) -> list[dict[str, Any]]:
    """Raw events up to and including the next `kind`, each parsed strictly into the SDK's GA model."""
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(WAIT_S):
        while True:
            msg = json.loads(await conn.recv_bytes())
            strict(msg, beta=False)
            got.append(msg)
            if msg["type"] == kind:
                return got
            assert errors_ok or msg["type"] != "error", f"waiting for {kind}: {msg['error']}"


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


async def round_trip(port: int, first_response: dict[str, Any] | None = None) -> dict[str, Any]:
    """The SDK's function-calling round trip; returns what each step received."""
    got: dict[str, Any] = {}
    sdk = openai.AsyncOpenAI(api_key=TOKEN, websocket_base_url=f"ws://127.0.0.1:{port}/v1", max_retries=0)
    async with sdk.realtime.connect(model="assistant") as conn:
        await until(conn, "session.created")
        audio = {"input": {"turn_detection": None}}
        await conn.session.update(
            session={"type": "realtime", "tools": [WEATHER], "tool_choice": "auto", "audio": audio}
        )  # type: ignore[typeddict-item]
        got["updated"] = (await until(conn, "session.updated"))[-1]["session"]
        await conn.conversation.item.create(item=user("What is the weather in Paris?"))  # type: ignore[arg-type]
        await until(conn, "conversation.item.done")
        await conn.response.create(response=first_response or {})  # type: ignore[arg-type]
        got["first"] = await until(conn, "response.done")
        call = next(m for m in got["first"] if m["type"] == "response.function_call_arguments.done")
        # a user message while the call awaits its output is refused; an unknown call id too
        await conn.conversation.item.create(item=user("Never mind."))  # type: ignore[arg-type]
        got["early_user"] = (await until(conn, "error", errors_ok=True))[-1]["error"]
        bogus = {"type": "function_call_output", "call_id": "call_nope", "output": "{}"}
        await conn.conversation.item.create(item=bogus)  # type: ignore[arg-type]
        got["bogus"] = (await until(conn, "error", errors_ok=True))[-1]["error"]
        output = {"type": "function_call_output", "call_id": call["call_id"], "output": OUTPUT}
        await conn.conversation.item.create(item=output)  # type: ignore[arg-type]
        got["output_item"] = (await until(conn, "conversation.item.done"))[-1]["item"]
        await conn.response.create()
        got["second"] = await until(conn, "response.done")
        # an unsupported tool_choice is an error naming the field, and changes nothing
        await conn.session.update(session={"type": "realtime", "tool_choice": {"type": "mcp", "server_label": "x"}})  # type: ignore[typeddict-item]
        got["bad_choice"] = (await until(conn, "error", errors_ok=True))[-1]["error"]
    return got


def check_call_response(first: list[dict[str, Any]]) -> dict[str, Any]:
    """The function call is streamed as the GA protocol does; returns the function_call item."""
    kinds = [m["type"] for m in first]
    added = next(m for m in first if m["type"] == "response.output_item.added" and m["item"]["type"] == "function_call")
    index = added["output_index"]
    deltas = [m for m in first if m["type"] == "response.function_call_arguments.delta"]
    done = next(m for m in first if m["type"] == "response.function_call_arguments.done")
    item_done = next(m for m in first if m["type"] == "response.output_item.done" and m["output_index"] == index)
    assert added["item"]["name"] == done["name"] == "get_weather" and added["item"]["call_id"] == done["call_id"]
    assert "".join(d["delta"] for d in deltas) == done["arguments"] == item_done["item"]["arguments"]
    assert {d["item_id"] for d in deltas} == {added["item"]["id"]} and done["output_index"] == index
    assert json.loads(done["arguments"]) == {"city": "Paris"}
    assert (
        kinds.index("response.output_item.added")
        < kinds.index("response.function_call_arguments.delta")
        < kinds.index("response.function_call_arguments.done")
        < kinds.index("response.done")
    )
    response = first[-1]["response"]
    assert response["status"] == "completed" and response["output"][-1] == item_done["item"]
    assert item_done["item"]["status"] == "completed"
    transcripts = [m.get("delta", "") for m in first if m["type"] == "response.output_audio_transcript.delta"]
    assert "tool_call" not in "".join(transcripts)  # no call text is ever spoken
    return item_done["item"]


def check_common(got: dict[str, Any]) -> None:
    assert got["updated"]["tools"] == [WEATHER] and got["updated"]["tool_choice"] == "auto"
    assert got["output_item"]["type"] == "function_call_output" and got["output_item"]["output"] == OUTPUT
    assert "function_call_output" in got["early_user"]["message"]
    assert "call_nope" in got["bogus"]["message"]
    assert "session.tool_choice" in got["bad_choice"]["message"]
    second = got["second"][-1]["response"]
    assert second["status"] == "completed" and [i["type"] for i in second["output"]] == ["message"]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Config:
    changes = {"pipeline.mode": "hands_free", "server.port": 0, "server.token": TOKEN}
    return tiny_engines.tiny_config(tmp_path_factory.mktemp("rt_tools_models"), changes)


def test_sdk_function_call_round_trip_with_scripted_chat(base: Config) -> None:
    """A scripted model says a few words and calls get_weather: the words are the message item, the call is a
    function_call item whose arguments stream; the client's output goes back to the model as a tool result in
    its history and the next response speaks the answer written after it."""
    chats: list[ToolChat] = []
    call = ['<tool_call>{"name": "get_weather", ', '"arguments": {"city": "Paris"}}', "</tool_call>"]

    def make_chat(_: Any) -> ToolChat:
        chats.append(ToolChat([["Let me look. ", *call], ["It is sunny, ", "21 degrees."]]))
        return chats[-1]

    async def body() -> dict[str, Any]:
        async with scripted_daemon(base, make_chat) as (server, _):
            return await round_trip(server.port)

    got = asyncio.run(body())
    check_common(got)
    item = check_call_response(got["first"])
    first = got["first"][-1]["response"]["output"]
    assert [i["type"] for i in first] == ["message", "function_call"]
    assert first[0]["content"][0]["transcript"] == "Let me look."
    (chat,) = chats
    assert chat.tools == [{"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}]
    ((call_made, result),) = chat.results[0]
    assert (call_made.id, call_made.name, dict(call_made.arguments), result) == (
        item["call_id"],
        "get_weather",
        {"city": "Paris"},
        OUTPUT,
    )
    assert [m.role for m in chat.history] == ["user", "assistant", "tool", "assistant"]
    assert chat.history[1].content == "Let me look." and chat.history[2] == Message(
        "tool", OUTPUT, tool_call_id=item["call_id"], name="get_weather"
    )
    assert got["second"][-1]["response"]["output"][0]["content"][0]["transcript"] == "It is sunny, 21 degrees."


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("rt_g4t"), "gemma4-tools", seed=5, window=4096)


def test_sdk_function_call_round_trip_with_tiny_gemma4(base: Config, gemma: Path) -> None:
    """A tiny real Gemma 4 model: response.create's tool_choice names get_weather, so the answer begins with the
    opening of that call in Gemma 4's own syntax and (teacher-forced) the model writes its arguments; the call is
    parsed from the stream, and the output enters the prompt as Gemma 4's tool response before the answer."""
    cfg = base.replace({"llm.model": str(gemma), "llm.max_tokens": 32})
    chats: list[Chat] = []

    def make_chat(chat: Chat) -> Chat:
        force(chat, 'city:<|"|>Paris<|"|>}<tool_call|>')  # after the forced opening `<|tool_call>call:get_weather{`
        chats.append(chat)
        return chat

    async def body() -> dict[str, Any]:
        async with scripted_daemon(cfg, make_chat) as (server, _):
            choice = {"tool_choice": {"type": "function", "name": "get_weather"}}
            return await round_trip(server.port, choice)

    got = asyncio.run(body())
    check_common(got)
    item = check_call_response(got["first"])
    assert [i["type"] for i in got["first"][-1]["response"]["output"]] == ["function_call"]
    (chat,) = chats
    history = chat.history
    assert [m.role for m in history] == ["user", "assistant", "tool", "assistant"]
    assert history[2] == Message("tool", OUTPUT, tool_call_id=item["call_id"], name="get_weather")
    prompt = chat.tokenizer.decode(chat.render(history[:3], add_generation_prompt=True))
    assert "get_weather" in prompt.split("<|tool_call>")[0]  # the tool's schema is in the prompt
    assert prompt.endswith('<|tool_response>response:get_weather{value:<|"|>' + OUTPUT + '<|"|>}<tool_response|>')
    said = got["second"][-1]["response"]["output"][0]["content"][0]["transcript"]
    assert said == history[3].content


def test_a_call_of_a_function_not_offered_is_answered_inside_the_response(base: Config) -> None:
    """The model calls a function the client did not offer: it gets an error result naming the offered ones
    within the same response (never handed to the client), and its corrected call is the one the client gets."""
    chats: list[ToolChat] = []
    wrong = ['<tool_call>{"name": "get_wether", "arguments": {"city": "Paris"}}</tool_call>']
    right = ['<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>']

    def make_chat(_: Any) -> ToolChat:
        chats.append(ToolChat([wrong, right, ["Sunny."]]))
        return chats[-1]

    async def body() -> dict[str, Any]:
        async with scripted_daemon(base, make_chat) as (server, _):
            return await round_trip(server.port)

    got = asyncio.run(body())
    check_common(got)
    check_call_response(got["first"])
    calls = [m["name"] for m in got["first"] if m["type"] == "response.function_call_arguments.done"]
    assert calls == ["get_weather"]
    (chat,) = chats
    ((refused_call, error),) = chat.results[0]
    assert refused_call.name == "get_wether"
    assert json.loads(error)["error"] == "there is no function `get_wether`; the functions are: get_weather"
    assert [result for _, result in chat.results[1]] == [OUTPUT]


def test_sdk_function_call_round_trip_with_an_openai_compatible_llm_server(base: Config) -> None:
    """With the LLM behind an OpenAI-compatible server (RemoteChat), the session's tools go out in the request,
    the server's streamed tool call becomes the function_call item with the server's call id, and the client's
    output goes back as the tool message the next request carries."""

    def call(fragment: dict[str, Any]) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, **fragment}]}}]}

    def respond(h: Any, body: dict[str, Any]) -> None:
        if body["messages"][-1]["role"] == "tool":
            sse(h, [text_chunk("It is sunny "), text_chunk("in Paris.")])
            return
        opening = {"id": "call_w1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
        chunks = [call(opening), call({"function": {"arguments": '{"city": '}})]
        chunks += [call({"function": {"arguments": '"Paris"}'}}), {"choices": [{"index": 0, "delta": {}}]}]
        sse(h, chunks)

    script = scripted(respond)
    with ScriptedServer(script) as srv:
        cfg = base.replace({"llm.backend": "openai", "llm.base_url": srv.base_url, "llm.model": "default_model"})

        async def body() -> dict[str, Any]:
            async with scripted_daemon(cfg) as (server, _):
                return await round_trip(server.port)

        got = asyncio.run(body())
    check_common(got)
    item = check_call_response(got["first"])
    assert item["call_id"] == "call_w1"
    assert script.bodies[0]["tools"] == [
        {"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}
    ]
    sent = script.bodies[-1]["messages"]
    assert sent[-2]["tool_calls"][0]["id"] == "call_w1"
    assert sent[-1] == {"role": "tool", "tool_call_id": "call_w1", "content": OUTPUT}
    said = got["second"][-1]["response"]["output"][0]["content"][0]["transcript"]
    assert said == "It is sunny in Paris."


def test_functions_are_refused_at_once_when_the_llm_cannot_call_them(base: Config) -> None:
    """session.update and response.create with tools on an LLM whose chat template has no tool-call format (the
    tiny Gemma 3) get an error naming the fix at once and change nothing (the tools were accepted and the failure
    came later as an error with a traceback in the log); no tools is accepted."""

    async def body(port: int) -> dict[str, Any]:
        got: dict[str, Any] = {}
        sdk = openai.AsyncOpenAI(api_key=TOKEN, websocket_base_url=f"ws://127.0.0.1:{port}/v1", max_retries=0)
        async with sdk.realtime.connect(model="assistant") as conn:
            await until(conn, "session.created")
            await conn.session.update(session={"type": "realtime", "tools": [WEATHER]})  # type: ignore[typeddict-item]
            got["update"] = (await until(conn, "error", errors_ok=True))[-1]["error"]
            await conn.session.update(session={"type": "realtime", "tools": []})  # type: ignore[typeddict-item]
            got["none"] = (await until(conn, "session.updated"))[-1]["session"]
            await conn.conversation.item.create(item=user("Weather?"))  # type: ignore[arg-type]
            await until(conn, "conversation.item.done")
            await conn.response.create(response={"tools": [WEATHER]})  # type: ignore[arg-type,list-item]
            got["create"] = (await until(conn, "error", errors_ok=True))[-1]["error"]
        return got

    async def main() -> dict[str, Any]:
        async with scripted_daemon(base) as (server, _):
            return await body(server.port)

    got = asyncio.run(main())
    for error in (got["update"], got["create"]):
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_value"
        assert error["message"].startswith("this session's LLM has no tool-call format in its chat template")
        assert "set llm.model" in error["message"]
    assert got["none"]["tools"] == []
