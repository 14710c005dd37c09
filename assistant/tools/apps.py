"""Tools that connected apps run: the voice loop's call goes to the app, and the app's answer is the result.

An app (one native control connection, its `owner` name) registers tools as JSON schemas; each becomes a `Tool`
whose `run` hands the call to the app through `send(call_id, name, arguments)` and waits for `answer()`. The
toolbox bounds the wait with the tool's timeout; `drop()` (the app left) fails its unanswered calls at once, so
the voice loop never waits on a gone app.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from assistant.errors import InputError
from assistant.tools.registry import Tool, ToolFailed

# Hands one call to the app: (call id, tool name, arguments).
Send = Callable[[str, str, dict[str, Any]], None]


class AppTools:
    """The tools of every connected app, and their calls waiting for an answer."""

    def __init__(self) -> None:
        self.by_owner: dict[str, list[Tool]] = {}
        self._pending: dict[str, tuple[str, asyncio.Future[str]]] = {}  # call id -> (owner, its answer)
        self._ids = itertools.count(1)

    @property
    def tools(self) -> list[Tool]:
        return [t for tools in self.by_owner.values() for t in tools]

    def build(self, owner: str, schemas: Sequence[Mapping[str, Any]], timeout_s: float, send: Send) -> list[Tool]:
        """Tools for `owner` from `{"type": "function", "function": {name, description, parameters}}` schemas."""
        out = []
        for schema in schemas:
            f = schema["function"]
            run = self._runner(owner, f["name"], send)
            out.append(Tool(f["name"], f.get("description", ""), f.get("parameters", {}), run, timeout_s, "app"))
        return out

    def set(self, owner: str, tools: list[Tool]) -> None:
        """`owner`'s tools from now on ([] = none)."""
        if tools:
            self.by_owner[owner] = tools
        else:
            self.by_owner.pop(owner, None)

    def _runner(self, owner: str, name: str, send: Send) -> Callable[[Mapping[str, Any]], Any]:
        async def run(arguments: Mapping[str, Any]) -> str:
            call_id = f"{owner}-call-{next(self._ids)}"
            future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self._pending[call_id] = (owner, future)
            try:
                send(call_id, name, dict(arguments))
                return await future
            finally:
                self._pending.pop(call_id, None)

        return run

    def answer(self, owner: str, call_id: str, output: str, error: str | None = None) -> None:
        """The app's result of `call_id` (or what went wrong). InputError when no call of this app awaits it."""
        owner_and_future = self._pending.get(call_id)
        if owner_and_future is None or owner_and_future[0] != owner or owner_and_future[1].done():
            raise InputError(f"no tool call {call_id[:60]!r} of this app awaits a result; it timed out or was answered")
        future = owner_and_future[1]
        if error is not None:
            future.set_exception(ToolFailed(error))
        else:
            future.set_result(output)

    def drop(self, owner: str) -> None:
        """`owner` left: its tools go and its unanswered calls fail with a reason the model reads."""
        self.by_owner.pop(owner, None)
        for call_id, (who, future) in list(self._pending.items()):
            if who == owner and not future.done():
                future.set_exception(ToolFailed(f"the app that runs this tool disconnected before answering {call_id}"))
