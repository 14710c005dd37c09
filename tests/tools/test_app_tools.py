"""Tools run by connected apps: a call is handed to its app and the app's answer is the result; another app
cannot answer it; a timeout or the app leaving gives the model an error result, never a hang."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from assistant.errors import InputError
from assistant.tools.apps import AppTools
from assistant.tools.calls import ToolCall
from assistant.tools.registry import Toolbox

LAMP = {"type": "function", "function": {"name": "set_lamp", "description": "Lamp.", "parameters": {
    "type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"]}}}  # fmt: skip


def test_calls_go_to_their_app_and_fail_cleanly() -> None:
    """The app gets (call id, name, arguments) and its answer is the result; a wrong owner or a second answer is
    an InputError; a slow app times out and a departed app fails its call, each as an error result."""

    async def body() -> dict[str, Any]:
        apps = AppTools()
        sent: list[tuple[str, str, dict[str, Any]]] = []
        apps.set("app1", apps.build("app1", [LAMP], 0.2, lambda *call: sent.append(call)))
        box = Toolbox(apps.tools)
        got: dict[str, Any] = {"reach": [t.reach for t in apps.tools]}
        served = box.start([ToolCall("set_lamp", {"on": True})])
        await asyncio.sleep(0)
        call_id, name, arguments = sent[-1]
        got["sent"] = (name, arguments)
        with pytest.raises(InputError):
            apps.answer("app2", call_id, "{}")  # not its call
        apps.answer("app1", call_id, '{"lamp": "on"}')
        got["served"] = (await served.results())[0]
        with pytest.raises(InputError, match="timed out or was answered"):
            apps.answer("app1", call_id, "again")
        got["slow"] = (await box.start([ToolCall("set_lamp", {"on": False})]).results())[0]
        gone = box.start([ToolCall("set_lamp", {"on": True})])
        await asyncio.sleep(0)
        apps.drop("app1")
        got["gone"] = (await gone.results())[0]
        got["left"] = apps.tools
        return got

    got = asyncio.run(body())
    assert got["reach"] == ["app"] and got["sent"] == ("set_lamp", {"on": True})
    assert got["served"].ok and got["served"].content == '{"lamp": "on"}'
    assert not got["slow"].ok and "took longer than 0.2 s" in json.loads(got["slow"].content)["error"]
    assert not got["gone"].ok and "disconnected" in json.loads(got["gone"].content)["error"]
    assert got["left"] == []
