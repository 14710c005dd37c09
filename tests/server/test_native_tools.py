"""App tools over the native protocol, with real websockets clients against a headless daemon whose voice loop
runs a scripted chat: an app registers a tool, the model calls it, the app gets `tool.call` and answers with
`tool.result`, and the answer goes on with that result; a slow app times out and a vanished app fails its call,
both as error results fed back to the model (never a hang), and its registration goes with it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from assistant.compute import Priority
from assistant.config import Config
from assistant.server.ws import ControlServer
from tests import tiny_engines
from tests.pipeline.doubles import ToolChat
from tests.server.scripted_daemon import scripted_daemon

TOKEN = "native-tools-token"
WAIT_S = 120.0  # safety net for a loaded shared CPU; never a timing assertion
LAMP = {
    "name": "set_lamp",
    "description": "Switch the desk lamp.",
    "parameters": {"type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"]},
}
CALL = ["Switching. ", '<tool_call>{"name": "set_lamp", "arguments": {"on": true}}</tool_call>']


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    changes = {"pipeline.mode": "hands_free", "server.port": 0, "server.token": TOKEN, "tools.filler": []}
    return tiny_engines.tiny_config(tmp_path_factory.mktemp("native_tools_models"), changes)


@asynccontextmanager
async def app(server: ControlServer) -> AsyncIterator[ClientConnection]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with connect(f"ws://127.0.0.1:{server.port}/v1/control", additional_headers=headers) as ws:
        assert (await recv(ws))["type"] == "hello"
        yield ws


async def recv(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(WAIT_S):
        return json.loads(await ws.recv())  # type: ignore[no-any-return]


async def request(ws: ClientConnection, msg: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps(msg))
    return await recv(ws)


async def register(ws: ClientConnection, timeout_s: float = 10.0) -> dict[str, Any]:
    return await request(ws, {"type": "tools.register", "id": 1, "tools": [LAMP], "timeout_s": timeout_s})


def error_of(chat: ToolChat, round_: int) -> str:
    ((_, content),) = chat.results[round_]
    return str(json.loads(content)["error"])


def test_app_tool_called_answered_timed_out_and_gone_with_its_app(cfg: Config) -> None:
    """The voice loop calls an app's registered tool and continues with its result; an unanswered call times out
    and a disconnected app fails its call, each as an error result the model reads; the app's tools leave with
    it; bad registrations and unknown call ids are error frames."""
    chat = ToolChat([CALL, ["The lamp is on."], CALL, ["It did not answer."], CALL, ["The app is gone."]])

    async def body() -> dict[str, Any]:
        got: dict[str, Any] = {}
        async with scripted_daemon(cfg, daemon_chat=chat) as (server, pipeline), app(server) as asker:
            async with app(server) as lamp:
                got["registered"] = await register(lamp)
                got["bad"] = await request(lamp, {"type": "tools.register", "id": 2, "tools": [{"name": "a b"}]})
                got["unknown"] = await request(lamp, {"type": "tool.result", "id": 3, "call_id": "x", "output": ""})
                # a served call: the answer continues with the app's result
                await asker.send(json.dumps({"type": "ask", "id": "q1", "text": "Lamp on, please."}))
                got["call"] = call = await recv(lamp)
                reply = {"type": "tool.result", "id": 4, "call_id": call["call_id"], "output": '{"lamp": "on"}'}
                got["ack"] = await request(lamp, reply)
                got["answer1"] = await until_reply(asker, "q1")
                got["offered"] = [t["function"]["name"] for t in chat.tools]  # what the model was offered
                # an unanswered call: the toolbox's timeout, then the answer goes on
                await register(lamp, timeout_s=0.5)
                await asker.send(json.dumps({"type": "ask", "id": "q2", "text": "Again."}))
                got["unanswered"] = await recv(lamp)
                got["answer2"] = await until_reply(asker, "q2")
                got["late"] = await request(
                    lamp, {"type": "tool.result", "id": 5, "call_id": got["unanswered"]["call_id"], "output": "x"}
                )
                await register(lamp, timeout_s=60.0)
                await asker.send(json.dumps({"type": "ask", "id": "q3", "text": "Once more."}))
                got["last_call"] = await recv(lamp)
            # the lamp app is gone with its call unanswered: the call fails at once, well within its 60 s
            got["answer3"] = await until_reply(asker, "q3")
            await asyncio.sleep(0.2)  # the re-offer is a compute job queued by the disconnect
            got["after"] = [t["function"]["name"] for t in chat.tools]
            got["toolbox"] = (
                [t.name for t in pipeline.tools.toolbox.tools] if pipeline.tools.toolbox is not None else []
            )
        return got

    got = asyncio.run(body())
    assert got["registered"] == {
        "type": "reply",
        "command": "tools.register",
        "result": {"tools": ["set_lamp"]},
        "id": 1,
    }
    assert got["offered"] == ["set_lamp"]
    assert got["bad"]["type"] == "error" and "tools.register.tools[0].name" in got["bad"]["message"]
    assert got["unknown"]["type"] == "error" and got["unknown"]["code"] == "input"
    call = got["call"]
    assert (call["type"], call["name"], call["arguments"]) == ("tool.call", "set_lamp", {"on": True})
    assert got["ack"]["type"] == "reply"
    assert got["answer1"]["result"]["text"] == "Switching. The lamp is on."
    ((made, result),) = chat.results[0]
    assert (made.name, result) == ("set_lamp", '{"lamp": "on"}')
    assert "took longer than 0.5 s" in error_of(chat, 1)
    assert got["answer2"]["result"]["text"].endswith("It did not answer.")
    assert got["late"]["type"] == "error" and "timed out or was answered" in got["late"]["message"]
    assert "disconnected" in error_of(chat, 2)
    assert got["answer3"]["result"]["text"].endswith("The app is gone.")
    assert got["after"] == [] and got["toolbox"] == []


async def until_reply(ws: ClientConnection, msg_id: str) -> dict[str, Any]:
    """Messages until the reply (or error) to command `msg_id`."""
    while True:
        msg = await recv(ws)
        if msg.get("id") == msg_id and msg["type"] in ("reply", "error"):
            return msg


def test_register_refused_at_once_when_the_llm_cannot_call_tools(cfg: Config) -> None:
    """`tools.register` on an LLM whose chat template has no tool-call format (the tiny Gemma 3) is refused in its
    reply, naming the fix, instead of succeeding and failing later; the connection stays usable."""

    async def body() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        async with scripted_daemon(cfg) as (server, _), app(server) as lamp:
            refused = await register(lamp)
            withdrawn = await request(lamp, {"type": "tools.register", "id": 2, "tools": []})
            return refused, withdrawn, await request(lamp, {"type": "status", "id": 3})

    refused, withdrawn, status = asyncio.run(body())
    assert refused["type"] == "error" and refused["code"] == "input" and refused["id"] == 1
    assert "no tool-call format" in refused["message"] and "set llm.model" in refused["message"]
    assert withdrawn == {"type": "reply", "command": "tools.register", "id": 2, "result": {"tools": []}}
    assert status["type"] == "reply" and status["id"] == 3


def test_withdrawing_nothing_on_an_llm_without_tools_offers_nothing(cfg: Config, tmp_path: Path) -> None:
    """On an LLM that cannot call tools, a daemon with built-in tools answers `tools.register` [] (and the app's
    leaving) without offering them: the reply lists no tools and no client gets an error (the reply listed
    get_time... as offered, and every client then got `offering the tools to the LLM: ModelError`)."""
    from assistant.memory import Memory
    from assistant.tools.setup import build_toolbox

    memory = Memory(tmp_path / "memory.sqlite3")
    toolbox, _ = build_toolbox(cfg, memory)
    assert toolbox.tools  # get_time and the reminders

    async def body() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        async with scripted_daemon(cfg, toolbox=toolbox) as (server, daemon), app(server) as watcher:
            assert (await request(watcher, {"type": "subscribe", "id": 1}))["type"] == "reply"
            async with app(server) as lamp:
                withdrawn = await request(lamp, {"type": "tools.register", "id": 2, "tools": []})
            for _ in range(int(WAIT_S * 100)):  # test-side wait until the server has seen the app leave
                if not daemon.tools.apps.by_owner:
                    break
                await asyncio.sleep(0.01)
            await daemon.compute.run(lambda: None, priority=Priority.URGENT)  # after any offer it made
            seen = []
            await watcher.send(json.dumps({"type": "status", "id": 3}))
            while (msg := await recv(watcher)).get("id") != 3:  # the status reply comes after whatever was sent
                seen.append(msg)
            return withdrawn, seen

    withdrawn, seen = asyncio.run(body())
    memory.close()
    assert withdrawn == {"type": "reply", "command": "tools.register", "id": 2, "result": {"tools": []}}
    assert [m for m in seen if m["type"] == "error"] == []
