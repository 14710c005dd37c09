"""The tools one conversation's answers may call, and the function calls a Realtime client runs itself.

The daemon's answers run its own tools (built in and from config.toml) and those of connected apps (native
`tools.register`, run by the app). A Realtime client offers functions instead (`session.update` /
`response.create` tools): the model's calls of them end the answer, the client runs them and sends each output
(`function_call_output`), and the next response continues the same answer with them. `ConversationTools` is the
bookkeeping of both (no I/O); the conversation runs what it returns on the compute thread.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from assistant.engines import ChatLike
from assistant.errors import InputError, ModelError
from assistant.events import FunctionCall
from assistant.tools.apps import AppTools, Send
from assistant.tools.calls import AUTO, ToolCall, ToolChoice
from assistant.tools.registry import Tool, Toolbox

Functions = tuple[list[dict[str, Any]], ToolChoice]  # a Realtime client's function schemas and its tool choice


@dataclass(frozen=True)
class OpenAnswer:
    """The answer whose calls went to the client: what it said before them, and each call with its output."""

    said: str
    outputs: list[tuple[ToolCall, str]]


def offer_tools(chat: ChatLike, schemas: Sequence[Mapping[str, Any]], choice: ToolChoice = AUTO) -> None:
    """On the compute thread: offer the LLM these tools from its next answer on (ModelError when it cannot call
    any)."""
    if not chat.set_tools(schemas, choice):
        why = "this LLM's chat template has no tool-call format: it cannot call the tools offered to it"
        raise ModelError(f"{why}; use a model whose chat template renders tools")


class ConversationTools:
    """The daemon's toolbox (its own tools and connected apps'), and a Realtime client's functions and calls."""

    def __init__(self, toolbox: Toolbox | None) -> None:
        self.toolbox = toolbox  # what the daemon's answers run (None: no tools)
        self._own = list(toolbox.tools) if toolbox is not None else []  # built in and from config.toml
        self.apps = AppTools()  # tools connected apps registered, run by them
        self._functions: Functions = ([], AUTO)
        self._next: Functions | None = None  # response.create's own, for the next response
        self._per_reply: dict[int, Functions] = {}
        self._awaiting: dict[str, ToolCall] = {}  # call id -> the call, in call order
        self._outputs: dict[str, str] = {}  # call id -> the client's output
        self._said = ""  # what the calling answer said before its calls

    # ---- connected apps (the daemon) ------------------------------------------------------------------------

    def set_app_tools(self, owner: str, tools: list[dict[str, Any]], timeout_s: float, send: Send) -> list[Tool]:
        """`owner`'s tools from now on, replacing its earlier ones ([] withdraws them); returns every tool offered
        now. InputError when a name is taken by the daemon's own tools or another app's (nothing changes then)."""
        built = self.apps.build(owner, tools, timeout_s, send)
        taken = {t.name for t in self._own}
        taken |= {t.name for o, ts in self.apps.by_owner.items() if o != owner for t in ts}
        clash = sorted({t.name for t in built} & taken)
        if clash:
            raise InputError(f"tool name(s) {', '.join(clash)} are taken by the daemon or another app; rename them")
        self.apps.set(owner, built)
        return self._offered()

    def app_gone(self, owner: str) -> list[Tool] | None:
        """The app left: its tools go, its unanswered calls fail. The tools offered now (None: it had none)."""
        had_tools = owner in self.apps.by_owner
        self.apps.drop(owner)
        return self._offered() if had_tools else None

    def _offered(self) -> list[Tool]:
        offered = [*self._own, *self.apps.tools]
        self.toolbox = Toolbox(offered) if offered or self.toolbox is not None else None
        return offered

    # ---- a Realtime client's functions ----------------------------------------------------------------------

    def set_functions(self, tools: list[dict[str, Any]], choice: ToolChoice) -> None:
        self._functions = (list(tools), choice)

    def functions_for_next_response(self, tools: list[dict[str, Any]], choice: ToolChoice) -> None:
        self._next = (list(tools), choice)

    def add_output(self, call_id: str, output: str) -> None:
        """The client's output of a call it was handed. InputError when no handed-off call has that id."""
        if call_id not in self._awaiting:
            waiting = ", ".join(self._awaiting) or "none"
            raise InputError(
                f"no function call {call_id!r} awaits an output (awaiting: {waiting}); use the call_id "
                "of a function_call item from this session's last response"
            )
        self._outputs[call_id] = output

    def reply_starts(self, turn: int, answers: bool) -> OpenAnswer | None:
        """Reply `turn` starts (`answers`: the model makes it): it takes response.create's tools. Returns the answer
        left open for the client's outputs, if any (forgotten here: the reply continues it or records it as said),
        with a call that got no output answered by an error."""
        if self._next is not None and answers:
            self._per_reply[turn], self._next = self._next, None
        if not self._awaiting:
            return None
        missing = json.dumps({"error": "the client sent no function_call_output for this call"})
        answer = OpenAnswer(self._said, [(c, self._outputs.get(i, missing)) for i, c in self._awaiting.items()])
        self._awaiting, self._outputs = {}, {}
        return answer

    def for_reply(self, turn: int) -> tuple[Functions | None, set[str]]:
        """The functions reply `turn` alone is offered (None: the session's, already offered), and the names of
        those whose calls go to the client."""
        own = self._per_reply.get(turn)
        schemas, choice = own or self._functions
        offered = schemas if choice.mode != "none" else []
        return own, {str(t.get("function", {}).get("name")) for t in offered}

    def handed_off(self, turn: int, calls: list[ToolCall], said: str, now: float) -> list[FunctionCall]:
        """The answer of reply `turn` left `calls` to the client after saying `said`: they await its outputs."""
        self._awaiting = {c.id: c for c in calls}
        self._outputs, self._said = {}, said
        return [FunctionCall(turn, c.id, c.name, json.dumps(dict(c.arguments), ensure_ascii=False), now) for c in calls]

    def reply_done(self, turn: int) -> Functions | None:
        """Reply `turn` ended: the session's functions to offer again when response.create's were for it alone."""
        return self._functions if self._per_reply.pop(turn, None) is not None else None
