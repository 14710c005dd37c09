"""The native control protocol, version 1: JSON text frames <-> frozen message dataclasses (pure, no I/O).

Every client message is a JSON object with a `type` naming the command, an optional `id` (string or integer)
echoed in its reply, and an optional `v` (the protocol version; only 1 exists). The server answers each command
with one `reply` (or an `error` carrying the same `id`), and sends pipeline events to subscribed clients.
`decode_command` is the only way in: it raises `WireError` (a ProtocolError with a machine-readable `code`) whose
one-line message names the problem and the fix. docs/protocol.md has an example of every message.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args, get_type_hints

from assistant import events
from assistant.errors import ProtocolError
from assistant.text import sentences

PROTOCOL_VERSION = 1

JsonId = str | int


# Bounds on what a client's message may ask of the models (checked when decoding; docs/protocol.md "Limits").
MAX_TEXT_CHARS = 4_000  # one user turn (say, ask, a Realtime item): ~1,000 tokens, a quarter of llm.history_tokens
MAX_INSTRUCTIONS_CHARS = 8_000  # a system prompt or Realtime instructions: ~2,000 tokens, half the default history
ECHO_CHARS = 60  # client text repeated in an error message is cut to this many characters


@dataclass(frozen=True)
class Limits:
    """Per-connection bounds on input the server passes to the models (defaults are the documented ones)."""

    text_chars: int = MAX_TEXT_CHARS
    instructions_chars: int = MAX_INSTRUCTIONS_CHARS
    turn_audio_s: float = 60.0  # uncommitted Realtime audio in manual turns (server VAD ends turns itself)
    audio_realtime_factor: float = 4.0  # Realtime audio appends: at most this many times real time, sustained
    audio_burst_s: float = 15.0  # ... after a burst of this much audio (one append over it needs a full budget)
    # A Realtime session keeps its newest items this many for retrieve/delete/truncate: more than the LLM's context
    # holds (llm.history_tokens drops the oldest turns), and a socket left open for weeks stays bounded
    realtime_items: int = 1000


DEFAULT_LIMITS = Limits()


class TokenBucket:
    """`rate` units per second with bursts of `capacity`; time is an input (`now`), so tests script it."""

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate, self.capacity = rate, capacity
        self.tokens, self.last = capacity, now

    def take(self, amount: float, now: float) -> bool:
        """Spend `amount` if the bucket holds it (an amount over the capacity needs a full bucket)."""
        self.tokens = min(self.capacity, self.tokens + max(0.0, now - self.last) * self.rate)
        self.last = now
        if self.tokens >= min(amount, self.capacity):
            self.tokens -= amount  # may go negative: a big append is paid back before the next
            return True
        return False


def clip(text: str, limit: int = ECHO_CHARS) -> str:
    """`text` as a quoted repr of at most about `limit` characters, for error messages that quote the client."""
    shown = repr(text[:limit])
    return shown if len(text) <= limit else f"{shown}... ({len(text)} characters)"


def brief(value: Any, limit: int = ECHO_CHARS) -> str:
    """repr(value) cut to `limit` characters (for values of any JSON type quoted in an error message)."""
    shown = repr(value)
    return shown if len(shown) <= limit else shown[:limit] + "..."


class WireError(ProtocolError):
    """A message that cannot be accepted; `code` is stable for programs, the message is for people."""

    def __init__(self, code: str, message: str, id: JsonId | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.id = id
        self.param = param  # the field at fault, as a dotted path in the client's message (Realtime's `param`)


# ---- commands (client -> server) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Status:
    type: Literal["status"] = "status"
    id: JsonId | None = None


@dataclass(frozen=True)
class Say:
    text: str
    type: Literal["say"] = "say"
    id: JsonId | None = None


@dataclass(frozen=True)
class Ask:
    text: str
    type: Literal["ask"] = "ask"
    id: JsonId | None = None


@dataclass(frozen=True)
class Interrupt:
    type: Literal["interrupt"] = "interrupt"
    id: JsonId | None = None


@dataclass(frozen=True)
class Mute:
    type: Literal["mute"] = "mute"
    id: JsonId | None = None


@dataclass(frozen=True)
class Unmute:
    type: Literal["unmute"] = "unmute"
    id: JsonId | None = None


@dataclass(frozen=True)
class PttStart:
    type: Literal["ptt.start"] = "ptt.start"
    id: JsonId | None = None


@dataclass(frozen=True)
class PttStop:
    type: Literal["ptt.stop"] = "ptt.stop"
    id: JsonId | None = None


@dataclass(frozen=True)
class ConfigGet:
    type: Literal["config.get"] = "config.get"
    id: JsonId | None = None


@dataclass(frozen=True)
class ConfigSet:
    changes: dict[str, Any]  # {"section.key": value}; validated by the controller (ConfigError names bad keys)
    type: Literal["config.set"] = "config.set"
    id: JsonId | None = None


@dataclass(frozen=True)
class HistoryGet:
    type: Literal["history.get"] = "history.get"
    id: JsonId | None = None


@dataclass(frozen=True)
class HistoryReset:
    type: Literal["history.reset"] = "history.reset"
    id: JsonId | None = None


@dataclass(frozen=True)
class Subscribe:
    """Start receiving pipeline events on this connection."""

    type: Literal["subscribe"] = "subscribe"
    id: JsonId | None = None


@dataclass(frozen=True)
class Unsubscribe:
    type: Literal["unsubscribe"] = "unsubscribe"
    id: JsonId | None = None


@dataclass(frozen=True)
class ToolsRegister:
    """Offer the voice loop these tools ({"name", "description", "parameters"}; [] withdraws them): the daemon sends
    `tool.call` when its model calls one and waits up to `timeout_s` for the `tool.result`."""

    tools: list[dict[str, Any]]
    timeout_s: float = 10.0
    type: Literal["tools.register"] = "tools.register"
    id: JsonId | None = None


@dataclass(frozen=True)
class ToolResult:
    """The app's answer to a `tool.call`: its `output` text, or `error` (what went wrong, for the model)."""

    call_id: str
    output: str = ""
    error: str | None = None
    type: Literal["tool.result"] = "tool.result"
    id: JsonId | None = None


Command = (
    Status
    | Say
    | Ask
    | Interrupt
    | Mute
    | Unmute
    | PttStart
    | PttStop
    | ConfigGet
    | ConfigSet
    | HistoryGet
    | HistoryReset
    | Subscribe
    | Unsubscribe
    | ToolsRegister
    | ToolResult
)
COMMANDS: dict[str, type] = {get_args(get_type_hints(c)["type"])[0]: c for c in get_args(Command)}

# ---- server -> client --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """First message on every connection."""

    protocol: int
    server: str
    type: Literal["hello"] = "hello"


@dataclass(frozen=True)
class Reply:
    command: str
    result: dict[str, Any]
    id: JsonId | None = None
    type: Literal["reply"] = "reply"


@dataclass(frozen=True)
class Error:
    code: str
    message: str
    id: JsonId | None = None
    type: Literal["error"] = "error"


@dataclass(frozen=True)
class AskDelta:
    """A piece of the answer to an `ask`, sent to the connection that asked, tagged with its id."""

    text: str
    id: JsonId | None = None
    type: Literal["ask.delta"] = "ask.delta"


@dataclass(frozen=True)
class EventsDropped:
    """Events this slow client missed (running total), sent before the next event it does get."""

    dropped: int
    type: Literal["events.dropped"] = "events.dropped"


@dataclass(frozen=True)
class EventMessage:
    """A pipeline event on the wire: `type` from EVENT_TYPES, the event's fields beside it."""

    event: events.Event


@dataclass(frozen=True)
class ToolCall:
    """The voice loop's model called one of this app's tools: run it and send `tool.result` with this call_id."""

    call_id: str
    name: str
    arguments: dict[str, Any]
    type: Literal["tool.call"] = "tool.call"


ServerMessage = Hello | Reply | Error | AskDelta | EventsDropped | EventMessage | ToolCall

# Wire names of the pipeline events; ErrorEvent travels as an `error` with code "pipeline".
EVENT_TYPES: dict[type, str] = {
    events.StateChanged: "state",
    events.SpeechStarted: "vad.speech_started",
    events.SilenceStarted: "vad.silence_started",
    events.SpeechResumed: "vad.speech_resumed",
    events.SpeechEnded: "vad.speech_ended",
    events.PartialTranscript: "transcript.partial",
    events.FinalTranscript: "transcript.final",
    events.ResponseTextDelta: "response.delta",
    events.ResponseDone: "response.done",
    events.LatencyTrace: "latency",
    events.DeviceStatus: "device",
    events.SpeculationStarted: "speculation.started",
    events.SpeculationCancelled: "speculation.cancelled",
    events.BargeIn: "barge_in",
    events.FalseStart: "false_start",
    events.PushToTalk: "push_to_talk",
    events.MuteChanged: "mute.changed",
    events.AttentionChanged: "attention",
    events.ErrorEvent: "error",
}
EVENTS_BY_NAME = {name: cls for cls, name in EVENT_TYPES.items() if cls is not events.ErrorEvent}


# ---- decoding ----------------------------------------------------------------------------------------------


def parse_json(data: str | bytes, max_bytes: int) -> dict[str, Any]:
    """A JSON object from a text frame, or WireError (binary frame, too large, not JSON, not an object)."""
    if isinstance(data, bytes):
        raise WireError("binary_frame", "binary frames are not accepted; send JSON text frames")
    size = len(data.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise WireError("too_large", f"message is {size} bytes, over the {max_bytes}-byte limit; send smaller messages")
    try:
        obj = json.loads(data)
    except json.JSONDecodeError as e:
        raise WireError("bad_json", f"message is not valid JSON ({e}); send one JSON object per text frame") from e
    except RecursionError as e:
        raise WireError("bad_json", "message is nested too deeply; send a flat JSON object") from e
    except ValueError as e:  # an integer over Python's 4,300-digit conversion limit
        raise WireError(
            "bad_json", "message has a number too long to read; send numbers of at most 4,300 digits"
        ) from e
    if not isinstance(obj, dict):
        raise WireError("bad_json", f'message must be a JSON object, got {_json_type(obj)}; e.g. {{"type": "status"}}')
    # a text frame is valid UTF-8 (websockets checks it), so only JSON escapes can make a lone surrogate
    bad = lone_surrogate(obj) if "\\ud" in data or "\\uD" in data else None
    if bad is not None:
        raise WireError(
            "bad_json",
            f"message has a lone UTF-16 surrogate (\\u{ord(bad):04x}) in a string; send valid Unicode text "
            "(a character beyond U+FFFF as a surrogate pair)",
        )
    return obj


def lone_surrogate(value: Any) -> str | None:
    """The first lone UTF-16 surrogate in any string (or key) of decoded JSON `value`, or None: such text cannot
    be encoded as UTF-8, so no tokenizer, log or reply can take it."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as e:
                return item[e.start]
    return None


def decode_command(data: str | bytes, max_bytes: int = 1 << 20, limits: Limits = DEFAULT_LIMITS) -> Command:
    """Parse and validate one client message (raises WireError naming the problem and the fix)."""
    obj = parse_json(data, max_bytes)
    msg_id = obj.get("id")
    if msg_id is not None and (isinstance(msg_id, bool) or not isinstance(msg_id, str | int)):
        raise WireError("bad_field", f"`id` must be a string or an integer, got {_json_type(msg_id)}")
    version = obj.pop("v", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise WireError(
            "unsupported_version",
            f"protocol version {brief(version)} is not supported; this server speaks v={PROTOCOL_VERSION}",
            msg_id,
        )
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise WireError("bad_field", f"`type` must be a string naming a command, got {_json_type(kind)}", msg_id)
    cls = COMMANDS.get(kind)
    if cls is None:
        raise WireError(
            "unknown_type", f"unknown command type {clip(kind)}; valid types: {', '.join(sorted(COMMANDS))}", msg_id
        )
    cmd = check_fields(cls, obj, kind, msg_id)
    if isinstance(cmd, Say | Ask) and not cmd.text.strip():
        raise WireError("input", f'`{kind}.text` is empty; give the words to {kind}, e.g. "hello"', msg_id)
    if isinstance(cmd, Say) and len(cmd.text) <= limits.text_chars and not sentences(cmd.text):
        why = "`say.text` has no speakable words (only emoji, symbols or markup); give words to say"
        raise WireError("input", why, msg_id)  # as `assistant say` refuses it; it replied success and said nothing
    if isinstance(cmd, Say | Ask) and len(cmd.text) > limits.text_chars:
        raise WireError(
            "too_long",
            f"`{kind}.text` has {len(cmd.text)} characters, over the {limits.text_chars} allowed; send a shorter text",
            msg_id,
        )
    return cast(Command, cmd)


def check_fields(cls: type, obj: dict[str, Any], kind: str, msg_id: JsonId | None = None) -> Any:
    """Build dataclass `cls` from `obj`, checking names and JSON types of every field."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(obj) - set(fields))
    if unknown:
        named = ", ".join(f"`{u[:30]}`" for u in unknown[:3]) + (
            f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        )
        raise WireError("bad_field", f"`{kind}` has no field {named}; fields: {', '.join(fields)}", msg_id)
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name not in obj:
            if required:
                raise WireError("bad_field", f"`{kind}` needs the field `{name}` ({_describe(hints[name])})", msg_id)
            continue
        if not _matches(obj[name], hints[name]):
            raise WireError(
                "bad_field",
                f"`{kind}.{name}` must be {_describe(hints[name])}, got {_json_type(obj[name])}",
                msg_id,
            )
    return cls(**obj)


def _matches(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    origin = getattr(hint, "__origin__", None)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in get_args(hint))
    if origin is dict:
        return isinstance(value, dict)
    if origin is list:
        (item,) = get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    args = get_args(hint)  # a union
    return bool(args) and any(_matches(value, a) for a in args)


def _describe(hint: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", type(None): "null"}
    if hint in names:
        return names[hint]
    origin = getattr(hint, "__origin__", None)
    if origin is Literal:
        return " or ".join(json.dumps(a) for a in get_args(hint))
    if origin is dict:
        return "an object"
    if origin is list:
        return f"a list of {_describe(get_args(hint)[0]).removeprefix('a ').removeprefix('an ')}s"
    return " or ".join(_describe(a) for a in get_args(hint))


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}.get(
        type(value), "an object"
    )


# ---- encoding ----------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # e.g. history Messages
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def to_dict(msg: ServerMessage | Command) -> dict[str, Any]:
    """The JSON object of a message (fields in declaration order, `type` first)."""
    if isinstance(msg, EventMessage):
        ev = msg.event
        body = {f.name: _plain(getattr(ev, f.name)) for f in dataclasses.fields(ev)}
        if isinstance(ev, events.ErrorEvent):
            return {"type": "error", "id": None, "code": "pipeline", **body}
        kind = EVENT_TYPES.get(type(ev))
        if kind is None:
            raise WireError("unknown_event", f"{type(ev).__name__} has no wire name; add it to protocol.EVENT_TYPES")
        return {"type": kind, **body}
    body = {f.name: _plain(getattr(msg, f.name)) for f in dataclasses.fields(msg)}
    return {"type": body.pop("type"), **body}


def encode(msg: ServerMessage | Command) -> str:
    """One JSON text frame."""
    # ASCII-only: a client's lone surrogate (valid in JSON escapes) echoed back must not break UTF-8 encoding
    return json.dumps(to_dict(msg), separators=(",", ":"), default=_not_json)


def _not_json(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars from metrics
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def decode_event(obj: dict[str, Any]) -> events.Event:
    """The pipeline event of an event message (for clients such as `assistant ctl events`)."""
    kind = obj.get("type")
    if kind == "error" and obj.get("code") == "pipeline":
        turn = obj.get("turn")
        return events.ErrorEvent(obj["message"], obj["time"], obj.get("client_fault") is True, turn)
    cls = EVENTS_BY_NAME.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise WireError("unknown_type", f"{kind!r} is not an event message")
    body = {k: v for k, v in obj.items() if k != "type"}
    if cls is events.StateChanged:
        body["old"], body["new"] = events.TurnState(body["old"]), events.TurnState(body["new"])
    try:
        return cast(events.Event, cls(**body))
    except (TypeError, ValueError) as e:
        raise WireError("bad_field", f"{kind} message does not match its event: {e}") from e
