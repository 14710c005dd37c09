"""One native-protocol connection as a sans-I/O handler: frames in, frames out, no sockets, time as an input.

`NativeConnection.receive(data, now)` decodes a client frame, applies the rate limit, calls the controller's
synchronous methods and returns the frames to send; `say` and `ask` are long-running, so it hands them back as
`Handled.run` for the socket layer to await, and `finished`/`failed` encode their outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from assistant import __version__
from assistant.errors import AssistantError, ConfigError, InputError
from assistant.server import protocol as p
from assistant.server import realtime_protocol as rp
from assistant.server.controller import Controller
from assistant.turns import CommandKind

INTERNAL_DETAIL_CHARS = 200  # of an unexpected exception's text in the client's error (the log has the rest)
TOOL_TIMEOUT_RANGE = (0.1, 300.0)  # seconds the voice loop waits for an app's tool result
COMMANDS: dict[type[p.Command], CommandKind] = {
    p.Interrupt: "interrupt",
    p.Mute: "mute",
    p.Unmute: "unmute",
    p.PttStart: "ptt_start",
    p.PttStop: "ptt_stop",
}


@dataclass(frozen=True)
class Handled:
    """What one client frame produced: frames to send now, and a say/ask to run (its reply comes later)."""

    send: list[str] = field(default_factory=list)
    run: p.Say | p.Ask | None = None


class NativeConnection:
    """The protocol state of one native client: its rate limit and whether it is subscribed to events."""

    def __init__(
        self,
        controller: Controller,
        now: float,
        max_bytes: int = 1 << 20,
        commands_per_s: float = 20.0,
        limits: p.Limits = p.DEFAULT_LIMITS,
        send: Callable[[str], None] | None = None,
        owner: str = "app",
    ) -> None:
        self.controller = controller
        self.max_bytes, self.commands_per_s, self.limits = max_bytes, commands_per_s, limits
        self.limiter = p.TokenBucket(commands_per_s, max(1.0, commands_per_s), now)  # bursts of one second's worth
        self.subscribed = False
        self.registered = False  # it offers tools: it waits for `tool.call` frames, sending nothing meanwhile
        self.send = send  # queues a frame to this client unasked (tool calls); None: no tools can be registered
        self.owner = owner  # names this connection's tools in the controller

    @property
    def listening(self) -> bool:
        """Whether the client only listens (events, or calls of its tools), so silence is no sign it is gone."""
        return self.subscribed or self.registered

    def hello(self) -> str:
        return p.encode(p.Hello(p.PROTOCOL_VERSION, f"assistant {__version__}"))

    def receive(self, data: str | bytes, now: float) -> Handled:
        """Handle one client frame (never raises for bad input: it becomes an `error` frame)."""
        try:
            cmd = p.decode_command(data, self.max_bytes, self.limits)
            if not self.limiter.take(1, now):
                raise p.WireError(
                    "rate_limited",
                    f"over {self.commands_per_s:g} commands/s; slow down (server.commands_per_s)",
                    cmd.id,
                )
        except p.WireError as e:
            return Handled([p.encode(p.Error(e.code, str(e), e.id))])
        if isinstance(cmd, p.Say | p.Ask):
            return Handled(run=cmd)
        try:
            result = self._call(cmd)
        except AssistantError as e:
            return Handled([self.failed(cmd, e)])
        return Handled([self.finished(cmd, result)])

    def _call(self, cmd: p.Command) -> dict[str, Any]:
        c = self.controller
        if isinstance(cmd, p.Status):
            return c.status()
        if isinstance(cmd, p.ConfigGet):
            return c.config_get()
        if isinstance(cmd, p.ConfigSet):
            return c.config_set(cmd.changes)
        if isinstance(cmd, p.HistoryGet):
            return {"history": c.history_get()}
        if isinstance(cmd, p.ToolsRegister):
            return {"tools": self._register(cmd)}
        if isinstance(cmd, p.ToolResult):
            self._answer(cmd)
            return {}
        if isinstance(cmd, p.Subscribe | p.Unsubscribe):
            self.subscribed = isinstance(cmd, p.Subscribe)
        elif isinstance(cmd, p.HistoryReset):
            c.history_reset()
        else:
            c.command(COMMANDS[type(cmd)])
        return {}

    # ---- the app's tools ------------------------------------------------------------------------------------

    def _register(self, cmd: p.ToolsRegister) -> list[str]:
        if self.send is None:
            raise p.WireError("unsupported", "this connection cannot take tool calls", cmd.id)
        lo, hi = TOOL_TIMEOUT_RANGE
        if not lo <= cmd.timeout_s <= hi:
            raise p.WireError("bad_field", f"`tools.register.timeout_s` must be from {lo:g} to {hi:g} s", cmd.id)
        try:
            functions = rp.decode_functions(cmd.tools, "tools.register.tools", None)
        except p.WireError as e:  # the Realtime decoder's code for a bad field is this protocol's bad_field
            raise p.WireError("bad_field" if e.code == "invalid_value" else e.code, str(e), cmd.id) from e
        offered = self.controller.set_app_tools(
            self.owner, [f.schema() for f in functions], cmd.timeout_s, self._tool_call
        )
        self.registered = bool(functions)
        return offered

    def _tool_call(self, call_id: str, name: str, arguments: dict[str, Any]) -> None:
        """The voice loop calls one of this app's tools: a `tool.call` frame to the app."""
        assert self.send is not None
        self.send(p.encode(p.ToolCall(call_id, name, arguments)))

    def _answer(self, cmd: p.ToolResult) -> None:
        if cmd.error is not None:
            self.controller.app_tool_result(self.owner, cmd.call_id, "", cmd.error[: self.limits.text_chars])
        elif len(cmd.output) > self.limits.text_chars:
            why = f"the app's result was over {self.limits.text_chars} characters"
            self.controller.app_tool_result(self.owner, cmd.call_id, "", why)
            why = f"`tool.result.output` is over {self.limits.text_chars} characters; the model was told it failed"
            raise p.WireError("too_long", why, cmd.id)
        else:
            self.controller.app_tool_result(self.owner, cmd.call_id, cmd.output)

    def close(self) -> None:
        """The app disconnected: its tools are withdrawn and its unanswered calls fail (the model hears why)."""
        if self.send is not None:
            self.controller.app_gone(self.owner)

    def finished(self, cmd: p.Command, result: dict[str, Any]) -> str:
        """The reply frame of a command that succeeded."""
        return p.encode(p.Reply(cmd.type, result, cmd.id))

    def failed(self, cmd: p.Command, e: BaseException) -> str:
        """The error frame of a command that failed: AssistantError keeps its message, anything else is a bug."""
        if isinstance(e, AssistantError):
            return p.encode(p.Error(error_code(e), str(e), cmd.id))
        detail = str(e)[:INTERNAL_DETAIL_CHARS]
        return p.encode(p.Error("internal", f"{cmd.type} failed: {detail}; see the daemon log", cmd.id))

    def ask_delta(self, cmd: p.Ask, text: str) -> str:
        return p.encode(p.AskDelta(text, cmd.id))


def error_code(e: AssistantError) -> str:
    if isinstance(e, p.WireError):  # refused by a check of the command's fields: its own code
        return e.code
    if isinstance(e, ConfigError):
        return "config"
    if isinstance(e, InputError):
        return "input"
    return "failed"
