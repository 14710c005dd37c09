"""The tools offered to the LLM and the execution of its calls: on the event loop, never the compute thread.

A `Tool` is a JSON schema plus an async function. `Toolbox.start(calls)` runs one round of calls concurrently
and returns a `ToolRound`: `done_within(s)` says whether a filler phrase is due, `results()` gives one
`ToolResult` per call (an unknown tool, bad arguments, a timeout or an exception become an error result fed
back to the model, never a crash), and `cancel()` stops the round (barge-in).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from assistant.tools.calls import ToolCall

log = logging.getLogger("assistant.tools")

# What a tool can touch, named in the docs and in `assistant doctor`-style listings ("app": a connected app runs it).
Reach = Literal["local", "network", "command", "app"]


@dataclass(frozen=True)
class Tool:
    """One tool: its name, description and JSON-schema parameters, and the async function that runs it.

    `run(arguments)` returns a JSON-serialisable result (a str is passed through as is); it raises ToolFailed
    for an expected failure whose message the model should see.
    """

    name: str
    description: str
    parameters: Mapping[str, Any]
    run: Callable[[Mapping[str, Any]], Awaitable[Any]]
    timeout_s: float = 10.0
    reach: Reach = "local"

    def schema(self) -> dict[str, Any]:
        """The OpenAI-style function schema that chat templates render."""
        params = dict(self.parameters) or {"type": "object", "properties": {}}
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": params},
        }


class ToolFailed(Exception):
    """An expected failure of a tool; its message goes back to the model."""


@dataclass(frozen=True)
class ToolResult:
    call: ToolCall
    content: str  # the text fed back to the model: JSON
    ok: bool


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


def check_arguments(schema: Mapping[str, Any], arguments: Mapping[str, Any]) -> str:
    """ "" when `arguments` fit the object `schema` (required keys, property types, enums), else what is wrong."""
    props: Mapping[str, Any] = schema.get("properties", {})
    missing = [k for k in schema.get("required", []) if k not in arguments]
    if missing:
        return f"missing required argument(s): {', '.join(missing)}"
    for key, value in arguments.items():
        spec = props.get(key)
        if spec is None:
            if schema.get("additionalProperties", True) is False:
                return f"unknown argument `{key}`; the arguments are: {', '.join(props) or 'none'}"
            continue
        types = spec.get("type")
        names = [types] if isinstance(types, str) else list(types or [])
        ok_types = tuple(t for n in names for t in _JSON_TYPES.get(n, (object,)))
        # JSON has no int/bool distinction problem, Python does: True is an int.
        if names and (not isinstance(value, ok_types) or (isinstance(value, bool) and "boolean" not in names)):
            return f"argument `{key}` must be {' or '.join(names)}, got {json.dumps(value)}"
        if "enum" in spec and value not in spec["enum"]:
            return f"argument `{key}` must be one of {json.dumps(spec['enum'])}, got {json.dumps(value)}"
    return ""


def _error(call: ToolCall, message: str) -> ToolResult:
    return ToolResult(call, json.dumps({"error": message}, ensure_ascii=False), ok=False)


@dataclass
class Toolbox:
    """The tools offered to the model, by name."""

    tools: Sequence[Tool]
    by_name: dict[str, Tool] = field(init=False)

    def __post_init__(self) -> None:
        self.by_name = {t.name: t for t in self.tools}

    def schemas(self) -> list[dict[str, Any]]:
        """For Chat.set_tools()."""
        return [t.schema() for t in self.tools]

    def start(self, calls: Sequence[ToolCall]) -> ToolRound:
        """Start running `calls` concurrently (call from the event loop)."""
        loop = asyncio.get_running_loop()  # raises RuntimeError outside the event loop
        return ToolRound([loop.create_task(self._run(c)) for c in calls])

    async def _run(self, call: ToolCall) -> ToolResult:
        if call.error:
            return _error(call, call.error)
        tool = self.by_name.get(call.name)
        if tool is None:
            names = ", ".join(self.by_name) or "none"
            return _error(call, f"there is no tool `{call.name}`; the tools are: {names}")
        problem = check_arguments(tool.parameters, call.arguments)
        if problem:
            return _error(call, f"{call.name}: {problem}")
        try:
            async with asyncio.timeout(tool.timeout_s):
                value = await tool.run(call.arguments)
        except TimeoutError:
            log.warning("tool %s timed out after %.1f s", call.name, tool.timeout_s)
            return _error(call, f"{call.name} took longer than {tool.timeout_s:g} s and was stopped")
        except ToolFailed as e:
            return _error(call, f"{call.name}: {e}")
        except Exception as e:  # a tool's bug must not end the reply: the model hears that it failed
            log.exception("tool %s failed", call.name)
            return _error(call, f"{call.name} failed: {type(e).__name__}: {e}")
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        return ToolResult(call, text, ok=True)


def refused(calls: Sequence[ToolCall], reason: str) -> list[ToolResult]:
    """Error results for calls that are not run (e.g. past `tools.max_rounds`), so the model answers instead."""
    return [_error(call, reason) for call in calls]


class ToolRound:
    """One round of tool calls running on the event loop."""

    def __init__(self, tasks: list[asyncio.Task[ToolResult]]) -> None:
        self._tasks = tasks

    async def done_within(self, seconds: float) -> bool:
        """Wait up to `seconds`; True when every call finished by then (False: time for a filler phrase)."""
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(self._tasks, timeout=seconds)
        return not pending

    async def results(self) -> list[ToolResult]:
        """One result per call, in call order. Raises CancelledError when the round was cancelled."""
        return list(await asyncio.gather(*self._tasks))

    def cancel(self) -> None:
        """Stop every call still running (barge-in); a command tool's process is killed."""
        for task in self._tasks:
            task.cancel()

    @property
    def cancelled(self) -> bool:
        return any(t.cancelled() for t in self._tasks)


def pick_filler(phrases: Sequence[str], rng: random.Random | None = None) -> str:
    """A filler phrase to say while a slow tool runs ("" when none are configured)."""
    return (rng or random).choice(list(phrases)) if phrases else ""
