"""The OpenAI Realtime-compatible subset (GA event names; old beta shapes accepted): JSON <-> dataclasses, pure.

Client events are decoded into frozen dataclasses by `decode_client_event` (WireError naming the problem);
server events are frozen dataclasses too (`ServerEvent`), encoded only by `encode_server_event`, which for clients
that connect with `OpenAI-Beta: realtime=v1` uses the beta names where they differ (BETA_NAMES).
"""

from __future__ import annotations

import base64
import binascii
import difflib
import json
from collections.abc import Collection
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, get_args

import numpy as np

import assistant.server.g711 as g711
from assistant.endofturn import EAGERNESS
from assistant.server.protocol import DEFAULT_LIMITS, ECHO_CHARS, Limits, WireError, clip, parse_json
from assistant.tools.calls import AUTO, ToolChoice

MAX_ID_CHARS = 128  # event, item and response ids and voice names a client may send
RATE = 24_000  # pcm16 mono 24 kHz, little-endian ("audio/pcm" rate 24000, beta "pcm16"): the default format
SAMPLE_BYTES = 2
AudioFormat = Literal["pcm16", "pcmu", "pcma"]  # pcm16 24 kHz, G.711 mu-law 8 kHz, G.711 A-law 8 kHz
FORMAT_RATES: dict[str, int] = {"pcm16": RATE, "pcmu": g711.RATE, "pcma": g711.RATE}
GA_FORMATS: dict[str, AudioFormat] = {"audio/pcm": "pcm16", "audio/pcmu": "pcmu", "audio/pcma": "pcma"}
BETA_FORMATS: dict[str, AudioFormat] = {"pcm16": "pcm16", "g711_ulaw": "pcmu", "g711_alaw": "pcma"}
SPEED_RANGE = (0.5, 1.5)  # OpenAI allows 0.25-1.5; the time stretch keeps the voice natural from 0.5 up


@dataclass(frozen=True)
class TurnDetection:
    """server_vad or semantic_vad; semantic_vad's eagerness picks the Smart Turn policy (endofturn.EAGERNESS).
    `idle_timeout_ms`: with no speech this long after a reply, input_audio_buffer.timeout_triggered and a reply."""

    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True
    kind: Literal["server_vad", "semantic_vad"] = "server_vad"
    eagerness: str = "auto"
    idle_timeout_ms: int | None = None
    vad_level: int | None = None  # webrtcvad aggressiveness from server_vad's threshold; None: vad.aggressiveness's
    padding_ms: int = 300  # the pre-roll before speech (vad.preroll_ms), reported as prefix_padding_ms


def vad_level(threshold: float) -> int:
    """server_vad's threshold (0-1; higher wants clearer speech) -> webrtcvad aggressiveness 0-3 (higher is
    stricter): quarters, so OpenAI's default 0.5 is the daemon's default 2."""
    return min(3, int(threshold * 4))


@dataclass(frozen=True)
class Transcription:
    """audio.input.transcription: the model name is reported back; this daemon's STT model does the work."""

    model: str = "assistant"
    language: str | None = None


MAX_TOOLS = 128  # functions one session or response may offer
MAX_DESCRIPTION_CHARS = 4096  # a function's description (it goes into every prompt)
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


@dataclass(frozen=True)
class Function:
    """A function the client offers (session.tools / response.tools): the client runs it when the model calls it."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}}, compare=False)

    def wire(self) -> dict[str, Any]:
        """As session.updated reports it (GA and beta: RealtimeFunctionTool)."""
        return {"type": "function", "name": self.name, "description": self.description, "parameters": self.parameters}

    def schema(self) -> dict[str, Any]:
        """As chat templates render it (and OpenAI chat servers take it)."""
        function = {"name": self.name, "description": self.description, "parameters": self.parameters}
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class SessionUpdate:
    """Only the fields present change; `turn_detection_given` tells a null turn_detection from an absent one."""

    instructions: str | None = None
    voice: str | None = None
    turn_detection_given: bool = False
    turn_detection: TurnDetection | None = None
    audio_output: bool | None = None  # output_modalities ["audio"] (True) or ["text"] (False)
    input_format: AudioFormat | None = None
    output_format: AudioFormat | None = None
    speed: float | None = None
    transcription_given: bool = False
    transcription: Transcription | None = None
    model: str | None = None
    tools: tuple[Function, ...] | None = None
    tool_choice: ToolChoice | None = None
    max_output_tokens: int | Literal["inf"] | None = None  # the client's cap on a reply's tokens
    temperature: float | None = None  # the LLM's sampling temperature
    type: Literal["session.update"] = "session.update"
    event_id: str | None = None


@dataclass(frozen=True)
class AudioAppend:
    audio: np.ndarray = field(compare=False)  # int16 mono at 24 kHz
    type: Literal["input_audio_buffer.append"] = "input_audio_buffer.append"
    event_id: str | None = None


@dataclass(frozen=True)
class AudioCommit:
    type: Literal["input_audio_buffer.commit"] = "input_audio_buffer.commit"
    event_id: str | None = None


@dataclass(frozen=True)
class AudioClear:
    type: Literal["input_audio_buffer.clear"] = "input_audio_buffer.clear"
    event_id: str | None = None


@dataclass(frozen=True)
class ItemCreate:
    """A user text message added to the conversation (no reply until response.create)."""

    text: str
    item_id: str | None = None
    previous_item_id: str | None = None  # where the client wants it (items are only added at the end here)
    type: Literal["conversation.item.create"] = "conversation.item.create"
    event_id: str | None = None


@dataclass(frozen=True)
class FunctionOutput:
    """A function_call_output item: the client's result of a function call the model made."""

    call_id: str
    output: str
    item_id: str | None = None
    previous_item_id: str | None = None
    type: Literal["conversation.item.create"] = "conversation.item.create"
    event_id: str | None = None


@dataclass(frozen=True)
class ItemTruncate:
    item_id: str
    content_index: int
    audio_end_ms: int
    type: Literal["conversation.item.truncate"] = "conversation.item.truncate"
    event_id: str | None = None


@dataclass(frozen=True)
class ResponseCreate:
    instructions: str | None = None
    tools: tuple[Function, ...] | None = None  # for this response only (None: the session's)
    tool_choice: ToolChoice | None = None
    audio_output: bool | None = None  # this response's output_modalities (None: the session's)
    max_output_tokens: int | Literal["inf"] | None = None  # the client's cap on this reply's tokens
    temperature: float | None = None  # this reply's sampling temperature (None: the session's)
    type: Literal["response.create"] = "response.create"
    event_id: str | None = None


@dataclass(frozen=True)
class ResponseCancel:
    response_id: str | None = None
    type: Literal["response.cancel"] = "response.cancel"
    event_id: str | None = None


@dataclass(frozen=True)
class ItemDelete:
    item_id: str
    type: Literal["conversation.item.delete"] = "conversation.item.delete"
    event_id: str | None = None


@dataclass(frozen=True)
class ItemRetrieve:
    item_id: str
    type: Literal["conversation.item.retrieve"] = "conversation.item.retrieve"
    event_id: str | None = None


@dataclass(frozen=True)
class OutputAudioClear:
    """Stop the reply's audio now (the rest is not sent); answered by output_audio_buffer.cleared."""

    type: Literal["output_audio_buffer.clear"] = "output_audio_buffer.clear"
    event_id: str | None = None


ClientEvent = (
    SessionUpdate
    | AudioAppend
    | AudioCommit
    | AudioClear
    | ItemCreate
    | FunctionOutput
    | ItemTruncate
    | ResponseCreate
    | ResponseCancel
    | ItemDelete
    | ItemRetrieve
    | OutputAudioClear
)
CLIENT_TYPES = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.truncate",
    "conversation.item.delete",
    "conversation.item.retrieve",
    "response.create",
    "response.cancel",
    "output_audio_buffer.clear",
)


# ---- decoding ----------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    """A client value quoted in an error message, cut short (it may be megabytes)."""
    if isinstance(value, str):
        return clip(value)
    if isinstance(value, dict | list):
        return f"{_json_kind(value)} of {len(value)} {'entry' if len(value) == 1 else 'entries'}"
    shown = json.dumps(value)  # 5, 1.5, true: as the client wrote them, not as a quoted string
    return shown if len(shown) <= ECHO_CHARS else shown[:ECHO_CHARS] + "..."


def _json_kind(value: Any) -> str:
    return "an object" if isinstance(value, dict) else "a list"


class _Reader:
    """Typed access to a JSON object with errors that name the full path of a bad field."""

    def __init__(self, obj: dict[str, Any], path: str, event_id: str | None) -> None:
        self.obj, self.path, self.event_id = obj, path, event_id

    def fail(self, name: str, want: str, got: Any = None) -> WireError:
        shown = "missing" if got is None else f"got {_show(got)}"
        path = f"{self.path}.{name}"
        return WireError("invalid_value", f"`{path}` must be {want}, {shown}", self.event_id, param_of(path))

    def text(self, name: str, required: bool = False, max_chars: int | None = None) -> str | None:
        value = self.obj.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str):
            raise self.fail(name, "a string", value)
        if max_chars is not None and len(value) > max_chars:
            raise WireError(
                "string_above_max_length",
                f"`{self.path}.{name}` has {len(value)} characters, over the {max_chars} allowed; send a shorter text",
                self.event_id,
                param_of(f"{self.path}.{name}"),
            )
        return value

    def integer(self, name: str, lo: int = 0) -> int:
        value = self.obj.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise self.fail(name, f"an integer >= {lo}", value)
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self.obj.get(name, default)
        if not isinstance(value, bool):
            raise self.fail(name, "true or false", value)
        return value

    def sub(self, name: str) -> _Reader | None:
        value = self.obj.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.fail(name, "an object", value)
        return _Reader(value, f"{self.path}.{name}", self.event_id)


def decode_client_event(
    data: str | bytes, max_bytes: int = 1 << 20, limits: Limits = DEFAULT_LIMITS, audio_format: AudioFormat = "pcm16"
) -> ClientEvent:
    """Parse and validate one Realtime client event (raises WireError naming the problem and the fix).

    Text that reaches the model is bounded here: item text by `limits.text_chars`, instructions by
    `limits.instructions_chars` (error code `string_above_max_length`, as OpenAI names it). Appended audio is
    decoded from the session's input `audio_format` into int16 at that format's rate.
    """
    obj = parse_json(data, max_bytes)
    event_id = obj.get("event_id")
    if event_id is not None and (not isinstance(event_id, str) or len(event_id) > MAX_ID_CHARS):
        raise WireError(
            "invalid_value", f"`event_id` must be a string of at most {MAX_ID_CHARS} characters, got {_show(event_id)}"
        )
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise WireError(
            "unknown_type",
            f"`type` must be a string naming the event, got {_show(kind) if 'type' in obj else 'none'}; "
            'e.g. {"type": "session.update", "session": {...}}',
            event_id,
        )
    if kind not in CLIENT_TYPES:
        raise WireError(
            "unknown_type",
            f"unsupported event type {_show(kind)}; this server accepts {', '.join(CLIENT_TYPES)}",
            event_id,
        )
    r = _Reader(obj, kind, event_id)
    if kind == "session.update":
        session = r.sub("session")
        if session is None:
            raise r.fail("session", "an object")
        return _session_update(session, event_id, limits)
    if kind == "input_audio_buffer.append":
        audio = decode_audio(r.text("audio", required=True) or "", event_id, audio_format)
        return AudioAppend(audio, event_id=event_id)
    if kind == "input_audio_buffer.commit":
        return AudioCommit(event_id=event_id)
    if kind == "input_audio_buffer.clear":
        return AudioClear(event_id=event_id)
    if kind == "conversation.item.create":
        item = r.sub("item")
        if item is None:
            raise r.fail("item", "an object")
        created = _item_create(item, event_id, limits)
        previous = r.text("previous_item_id", max_chars=MAX_ID_CHARS)
        return replace(created, previous_item_id=previous) if previous is not None else created
    if kind == "conversation.item.truncate":
        return ItemTruncate(
            r.text("item_id", required=True) or "",
            r.integer("content_index"),
            r.integer("audio_end_ms"),
            event_id=event_id,
        )
    if kind in ("conversation.item.delete", "conversation.item.retrieve"):
        item_id = r.text("item_id", required=True, max_chars=MAX_ID_CHARS) or ""
        return (
            ItemDelete(item_id, event_id=event_id)
            if kind.endswith("delete")
            else ItemRetrieve(item_id, event_id=event_id)
        )
    if kind == "output_audio_buffer.clear":
        return OutputAudioClear(event_id=event_id)
    if kind == "response.create":
        response = r.sub("response")
        instructions = response.text("instructions", max_chars=limits.instructions_chars) if response else None
        if response is None:
            return ResponseCreate(event_id=event_id)
        _check_response_fields(response.obj, event_id)
        audio_output = _check_modalities(response)
        tools = decode_functions(response.obj["tools"], "response.tools", event_id) if "tools" in response.obj else None
        choice = _tool_choice(response.obj.get("tool_choice"), "response.tool_choice", event_id)
        ga, beta = _token_cap(response, "max_output_tokens"), _token_cap(response, "max_response_output_tokens")
        cap = ga if ga is not None else beta
        temperature = _temperature(response)
        return ResponseCreate(instructions, tools, choice, audio_output, cap, temperature, event_id=event_id)
    return ResponseCancel(r.text("response_id"), event_id=event_id)


def decode_audio(text: str, event_id: str | None = None, audio_format: AudioFormat = "pcm16") -> np.ndarray:
    """Base64 audio -> int16 samples: pcm16 little-endian mono, or G.711 (one byte a sample) for pcmu/pcma.
    WireError for bad base64, an odd pcm16 length or nothing."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise WireError(
            "invalid_audio",
            f"`audio` is not valid base64 ({e}); send base64 of {audio_format} bytes",
            event_id,
            "audio",
        ) from e
    if len(raw) == 0:
        raise WireError("invalid_audio", "`audio` is empty; append at least one sample", event_id, "audio")
    if audio_format == "pcmu":
        return g711.ulaw_decode(raw)
    if audio_format == "pcma":
        return g711.alaw_decode(raw)
    if len(raw) % SAMPLE_BYTES:
        raise WireError(
            "invalid_audio",
            f"`audio` has {len(raw)} bytes, not a whole number of 16-bit samples; send pcm16 mono at 24 kHz",
            event_id,
            "audio",
        )
    return np.frombuffer(raw, dtype="<i2").astype(np.int16)


def encode_audio(samples: np.ndarray, audio_format: AudioFormat = "pcm16") -> str:
    """float32 [-1, 1] or int16 samples (already at the format's rate) -> base64 pcm16 little-endian or G.711."""
    if samples.dtype != np.int16:
        samples = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype(np.int16)
    if audio_format == "pcmu":
        raw = g711.ulaw_encode(samples)
    elif audio_format == "pcma":
        raw = g711.alaw_encode(samples)
    else:
        raw = samples.astype("<i2").tobytes()
    return base64.b64encode(raw).decode("ascii")


def _format(fmt: Any, path: str, event_id: str | None) -> AudioFormat | None:
    """A GA format object or a beta format name -> our format name (None when absent)."""
    if fmt is None:
        return None
    if isinstance(fmt, str) and fmt in BETA_FORMATS:
        return BETA_FORMATS[fmt]
    if isinstance(fmt, dict) and set(fmt) <= {"type", "rate"} and fmt.get("type") in GA_FORMATS:
        name = GA_FORMATS[fmt["type"]]
        if fmt.get("rate", FORMAT_RATES[name]) == FORMAT_RATES[name]:
            return name
    raise WireError(
        "invalid_value",
        f'`{path}` = {_show(fmt)} is not supported; use {{"type": "audio/pcm", "rate": 24000}}, '
        '{"type": "audio/pcmu"} or {"type": "audio/pcma"} (beta: "pcm16", "g711_ulaw", "g711_alaw")',
        event_id,
        param_of(path),
    )


def _check_modalities(r: _Reader) -> bool | None:
    for name in ("output_modalities", "modalities"):  # GA, beta
        value = r.obj.get(name)
        if value is None:
            continue
        if not isinstance(value, list) or not value or not set(value) <= {"audio", "text"}:
            raise r.fail(name, 'a list of "audio" and/or "text"', value)
        return "audio" in value
    return None


def _unknown_field(where: str, name: str, known: Collection[str], event_id: str | None) -> WireError:
    """An error for a field the event does not have, suggesting the nearest known one (a typo is the usual cause)."""
    shown = name if name.isprintable() and len(name) <= 60 else clip(name)
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    fix = f"did you mean `{close[0]}`?" if close else "leave it out"
    message = f"`{where}.{shown}` is not a field of {where}; {fix}"
    return WireError("invalid_value", message, event_id, param_of(f"{where}.{shown}"))


def _unsupported(path: str, value: Any, fix: str, event_id: str | None) -> WireError:
    return WireError(
        "invalid_value", f"`{path}` = {_show(value)} is not supported here; {fix}", event_id, param_of(path)
    )


def param_of(path: str) -> str:
    """The error's `param`: a field's path within the client's event (`session.audio.output.voice`, `item.content`,
    `audio`), as OpenAI names it; error messages may quote it after the event type."""
    kind = next((k for k in CLIENT_TYPES if path.startswith(k + ".")), None)
    return path[len(kind) + 1 :] if kind is not None else path


def _turn_detection(value: Any, path: str, event_id: str | None) -> TurnDetection | None:
    if value is None:
        return None
    kind = value.get("type", "server_vad") if isinstance(value, dict) else None
    if kind not in ("server_vad", "semantic_vad"):
        raise _unsupported(path, value, 'use {"type": "server_vad"}, {"type": "semantic_vad"} or null', event_id)
    r = _Reader(value, path, event_id)
    known = {"type", "create_response", "interrupt_response"}
    if kind == "server_vad":
        known |= {"threshold", "prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms"}
    else:
        known |= {"eagerness"}
    for name in value:
        if name not in known:
            raise _unsupported(f"{path}.{name}", value[name], f"{kind} takes {', '.join(sorted(known))}", event_id)
    # the threshold picks webrtcvad's aggressiveness (vad_level); the daemon's vad.preroll_ms pads speech, so a
    # valid prefix_padding_ms is taken (the SDKs send their own) and session.updated reports the one in effect
    threshold = value.get("threshold")
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0
    ):
        raise r.fail("threshold", "a number from 0.0 to 1.0", threshold)
    level = None if threshold is None else vad_level(threshold)
    if "prefix_padding_ms" in value:
        r.integer("prefix_padding_ms")
    idle = value.get("idle_timeout_ms")
    if idle is not None and (isinstance(idle, bool) or not isinstance(idle, int) or not 5000 <= idle <= 30000):
        raise r.fail("idle_timeout_ms", "null or an integer from 5000 to 30000", idle)
    create, interrupt = r.flag("create_response", True), r.flag("interrupt_response", True)
    if kind == "semantic_vad":
        eagerness = value.get("eagerness", "auto")
        if eagerness not in EAGERNESS:
            raise r.fail("eagerness", "one of low, medium, high, auto", eagerness)
        return TurnDetection(TurnDetection.silence_duration_ms, create, interrupt, "semantic_vad", eagerness, idle)
    silence = r.integer("silence_duration_ms") if "silence_duration_ms" in value else TurnDetection.silence_duration_ms
    return TurnDetection(silence, create, interrupt, idle_timeout_ms=idle, vad_level=level)


def _transcription(value: Any, path: str, event_id: str | None) -> Transcription | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _unsupported(path, value, 'send {"model": "..."} or null', event_id)
    for name in value:
        if name not in ("model", "language", "prompt"):
            raise _unsupported(f"{path}.{name}", value[name], "transcription takes model, language, prompt", event_id)
    r = _Reader(value, path, event_id)
    if value.get("prompt"):
        raise _unsupported(f"{path}.prompt", value["prompt"], "this STT takes no prompt; leave it out", event_id)
    language = r.text("language", max_chars=16)
    return Transcription(r.text("model", max_chars=MAX_ID_CHARS) or "assistant", language or None)


# Session fields accepted only at the value that describes this daemon (anything else is an error naming it):
# field -> (accepted values, the fix).
_FIXED: dict[str, tuple[tuple[Any, ...], str]] = {
    "include": ((None, []), "input transcription logprobs are not available; send [] or leave it out"),
    "truncation": ((None, "auto"), 'the daemon trims old turns itself; send "auto"'),
    "prompt": ((None,), "stored prompts are not available; send instructions instead"),
    "parallel_tool_calls": ((None, True, False), "send true or false"),
    "reasoning": ((None,), "the daemon's LLM has no reasoning setting; send null"),
}
_SESSION_FIELDS = {
    "type", "model", "instructions", "output_modalities", "modalities", "audio", "voice", "input_audio_format",
    "output_audio_format", "turn_detection", "input_audio_transcription", "speed", "object", "id", "expires_at",
    "client_secret", "tools", "tool_choice", "tracing", "max_output_tokens", "max_response_output_tokens",
    "temperature", "input_audio_noise_reduction", *_FIXED,
}  # fmt: skip
MAX_OUTPUT_TOKENS = 4096  # OpenAI's largest cap on a response's tokens
_TRACING_FIELDS = {"workflow_name", "group_id", "metadata"}


def _check_noise_reduction(value: Any, path: str, event_id: str | None) -> None:
    """null or {"type": "near_field" | "far_field"} (SDK examples send one): taken, and reported as null, what is
    in effect: a session's audio is used as the client sends it."""
    if value is None or (
        isinstance(value, dict) and value.get("type") in ("near_field", "far_field") and len(value) == 1
    ):
        return
    raise _unsupported(path, value, 'send null, {"type": "near_field"} or {"type": "far_field"}', event_id)


def _check_tracing(value: Any, event_id: str | None) -> None:
    """session.tracing: null, "auto" or a tracing config (the Agents SDK sends one on every session.created). Taken
    and reported as null, what this server does: no traces are stored or sent (its log has its latency traces)."""
    if value is None or value == "auto" or (isinstance(value, dict) and set(value) <= _TRACING_FIELDS):
        return
    fix = 'send null, "auto" or {"workflow_name": ..., "group_id": ..., "metadata": ...} (no traces are kept)'
    raise _unsupported("session.tracing", value, fix, event_id)


def decode_functions(value: Any, path: str, event_id: str | None) -> tuple[Function, ...]:
    """session.tools / response.tools: function tools only (GA and beta share the shape)."""
    if not isinstance(value, list) or len(value) > MAX_TOOLS:
        want = f"`{path}` must be a list of at most {MAX_TOOLS} tools, got {_show(value)}"
        raise WireError("invalid_value", want, event_id, param_of(path))
    out: list[Function] = []
    for i, tool in enumerate(value):
        where = f"{path}[{i}]"
        if not isinstance(tool, dict):
            want = f'`{where}` must be {{"type": "function", "name": ...}}'
            raise WireError("invalid_value", want, event_id, param_of(where))
        if tool.get("type", "function") != "function":
            raise _unsupported(
                f"{where}.type", tool.get("type"), 'only "function" tools are offered (no MCP)', event_id
            )
        for name in tool:
            if name not in ("type", "name", "description", "parameters"):
                fix = "a function tool takes type, name, description, parameters"
                raise _unsupported(f"{where}.{clip(name)}", tool[name], fix, event_id)
        r = _Reader(tool, where, event_id)
        fname = r.text("name", required=True, max_chars=64) or ""
        if not fname or not set(fname) <= _NAME_CHARS:
            raise r.fail("name", "1-64 letters, digits, _ or -", fname)
        if fname in {f.name for f in out}:
            raise r.fail("name", "a name no other tool of the list has", fname)
        params = tool.get("parameters")
        if params is not None and (not isinstance(params, dict) or params.get("type", "object") != "object"):
            raise r.fail("parameters", 'a JSON schema object ({"type": "object", "properties": {...}})', params)
        description = r.text("description", max_chars=MAX_DESCRIPTION_CHARS) or ""
        out.append(Function(fname, description, params or {"type": "object", "properties": {}}))
    return tuple(out)


def _tool_choice(value: Any, path: str, event_id: str | None) -> ToolChoice | None:
    """auto / none / required, or {"type": "function", "name": ...} (beta also {"type": "function", "function":
    {"name": ...}}); None when absent."""
    if value is None:
        return None
    if value in ("auto", "none", "required"):
        return ToolChoice(value)
    if isinstance(value, dict) and value.get("type") == "function":
        nested = value.get("function")
        name = value.get("name", nested.get("name") if isinstance(nested, dict) else None)
        if isinstance(name, str) and name and len(name) <= 64:
            return ToolChoice("function", name)
    fix = 'send "auto", "none", "required" or {"type": "function", "name": "..."} (MCP tools are not offered)'
    raise _unsupported(path, value, fix, event_id)


# response.create fields beside those the session takes too: what each accepts here, and the fix
_RESPONSE_FIXED: dict[str, tuple[tuple[Any, ...], str]] = {
    "conversation": ((None, "auto"), 'out-of-band responses are not available; send "auto" or leave it out'),
    "input": ((None,), "a response answers this session's conversation; add items with conversation.item.create"),
    "voice": ((None,), "set the voice with session.update"),
    "audio": ((None,), "set the output format and voice with session.update"),
    "output_audio_format": ((None,), "set the output format with session.update"),
    **{k: v for k, v in _FIXED.items() if k != "include"},
}
_RESPONSE_FIELDS = {
    "instructions", "tools", "tool_choice", "output_modalities", "modalities", "metadata", "max_output_tokens",
    "max_response_output_tokens", "temperature",
}  # fmt: skip


def _check_response_fields(obj: dict[str, Any], event_id: str | None) -> None:
    """A response.create field this server cannot honour is an error naming it (it was ignored: e.g. an
    out-of-band `conversation: "none"` response went into the conversation)."""
    for name, value in obj.items():
        if name in _RESPONSE_FIXED:
            if value not in _RESPONSE_FIXED[name][0]:
                raise _unsupported(f"response.{name}", value, _RESPONSE_FIXED[name][1], event_id)
        elif name not in _RESPONSE_FIELDS:
            raise _unknown_field("response", name, {*_RESPONSE_FIELDS, *_RESPONSE_FIXED}, event_id)


def _token_cap(r: _Reader, name: str) -> int | Literal["inf"] | None:
    """A cap on a reply's tokens (session or response `max_output_tokens`): 1..4096 or "inf"; None when absent.
    Whether it is met is the session's call: it knows the daemon's bound (llm.max_tokens)."""
    value = r.obj.get(name)
    if value is None or value == "inf":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_OUTPUT_TOKENS:
        raise r.fail(name, f'an integer from 1 to {MAX_OUTPUT_TOKENS} or "inf"', value)
    return value


TEMPERATURE_RANGE = (0.0, 2.0)  # = llm.temperature's: the LLM samples at any of them (OpenAI's beta took 0.6-1.2)


def _temperature(r: _Reader) -> float | None:
    """A session's or a response's `temperature`: the LLM's sampling temperature; None when absent."""
    value = r.obj.get("temperature")
    if value is None:
        return None
    low, high = TEMPERATURE_RANGE
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise r.fail("temperature", f"a number from {low:g} to {high:g} (the LLM's sampling temperature)", value)
    return float(value)


def _session_update(s: _Reader, event_id: str | None, limits: Limits) -> SessionUpdate:
    kind = s.obj.get("type", "realtime")
    if kind != "realtime":
        raise WireError(
            "invalid_value",
            f'`session.update.session.type` = {_show(kind)} is not supported; use "realtime"',
            event_id,
        )
    for name, value in s.obj.items():
        if name not in _SESSION_FIELDS:
            raise _unknown_field("session", name, _SESSION_FIELDS, event_id)
        if name in _FIXED and value not in _FIXED[name][0]:
            raise _unsupported(f"session.{name}", value, _FIXED[name][1], event_id)
    _check_tracing(s.obj.get("tracing"), event_id)
    audio = s.sub("audio")
    inp = audio.sub("input") if audio else None
    out = audio.sub("output") if audio else None
    for holder, allowed in ((audio, {"input", "output"}), (inp, _INPUT_FIELDS), (out, {"format", "voice", "speed"})):
        for name in holder.obj if holder is not None else ():
            if name not in allowed:
                raise _unsupported(f"{holder.path}.{name}", holder.obj[name], "this field is unknown", event_id)  # type: ignore[union-attr]
    if inp is not None:
        _check_noise_reduction(inp.obj.get("noise_reduction"), "session.audio.input.noise_reduction", event_id)
    _check_noise_reduction(s.obj.get("input_audio_noise_reduction"), "session.input_audio_noise_reduction", event_id)
    # GA nests formats, voice and turn detection under audio.input/output; beta has them flat on the session.
    input_format = _format(inp.obj.get("format") if inp else None, "session.audio.input.format", event_id)
    output_format = _format(out.obj.get("format") if out else None, "session.audio.output.format", event_id)
    input_format = input_format or _format(s.obj.get("input_audio_format"), "session.input_audio_format", event_id)
    output_format = output_format or _format(s.obj.get("output_audio_format"), "session.output_audio_format", event_id)
    voice_value = out.obj.get("voice") if out else None
    if isinstance(voice_value, dict):  # GA custom voices: {"id": "voice_..."}
        voice_value = voice_value.get("id")
        if not isinstance(voice_value, str):
            raise _unsupported("session.audio.output.voice", out.obj["voice"], 'send a name or {"id": "..."}', event_id)  # type: ignore[union-attr]
        voice: str | None = clip(voice_value, MAX_ID_CHARS)
    else:
        voice = out.text("voice", max_chars=MAX_ID_CHARS) if out else None
    voice = voice or s.text("voice", max_chars=MAX_ID_CHARS)
    speed = None
    for holder in (out, s):
        if holder is not None and holder.obj.get("speed") is not None:
            value = holder.obj["speed"]
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (SPEED_RANGE[0] <= value <= SPEED_RANGE[1])
            ):
                raise holder.fail("speed", f"a number from {SPEED_RANGE[0]} to {SPEED_RANGE[1]}", value)
            speed = float(value)
    given, detection = False, None
    for holder, path in ((inp, "session.audio.input.turn_detection"), (s, "session.turn_detection")):
        if holder is not None and "turn_detection" in holder.obj:
            given, detection = True, _turn_detection(holder.obj["turn_detection"], path, event_id)
    t_given, transcription = False, None
    for holder, path in ((inp, "session.audio.input.transcription"), (s, "session.input_audio_transcription")):
        name = "transcription" if holder is inp else "input_audio_transcription"
        if holder is not None and name in holder.obj:
            t_given, transcription = True, _transcription(holder.obj[name], path, event_id)
    ga, beta = _token_cap(s, "max_output_tokens"), _token_cap(s, "max_response_output_tokens")
    cap = ga if ga is not None else beta
    instructions = s.text("instructions", max_chars=limits.instructions_chars)
    tools = decode_functions(s.obj["tools"], "session.tools", event_id) if s.obj.get("tools") is not None else None
    choice = _tool_choice(s.obj.get("tool_choice"), "session.tool_choice", event_id)
    return SessionUpdate(
        instructions,
        voice,
        given,
        detection,
        _check_modalities(s),
        input_format,
        output_format,
        speed,
        t_given,
        transcription,
        s.text("model", max_chars=MAX_ID_CHARS),
        tools,
        choice,
        cap,
        _temperature(s),
        event_id=event_id,
    )


_INPUT_FIELDS = {"format", "turn_detection", "transcription", "noise_reduction"}


def _item_create(item: _Reader, event_id: str | None, limits: Limits) -> ItemCreate | FunctionOutput:
    if item.obj.get("type") == "function_call_output":
        output = item.text("output", required=True) or ""
        if len(output) > limits.text_chars:
            raise WireError(
                "string_above_max_length",
                f"`{item.path}.output` has {len(output)} characters, over the {limits.text_chars} allowed; "
                "send a shorter result",
                event_id,
                param_of(f"{item.path}.output"),
            )
        call_id = item.text("call_id", required=True, max_chars=MAX_ID_CHARS) or ""
        return FunctionOutput(call_id, output, item.text("id", max_chars=MAX_ID_CHARS), event_id=event_id)
    if item.obj.get("type", "message") != "message" or item.obj.get("role") != "user":
        raise WireError(
            "invalid_value",
            'only user text messages and function call outputs can be created: {"type": "message", "role": '
            '"user", "content": [{"type": "input_text", "text": "..."}]} or {"type": "function_call_output", '
            '"call_id": "...", "output": "..."}',
            event_id,
            param_of(f"{item.path}.role"),
        )
    content = item.obj.get("content")
    if not isinstance(content, list) or not content:
        raise item.fail("content", 'a non-empty list of {"type": "input_text", "text": ...}', content)
    texts = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in ("input_text", "text"):
            raise item.fail(f"content[{i}]", '{"type": "input_text", "text": ...}', part)
        text = _Reader(part, f"{item.path}.content[{i}]", event_id).text("text", required=True)
        texts.append(text or "")
    text = " ".join(texts)
    if len(text) > limits.text_chars:
        raise WireError(
            "string_above_max_length",
            f"`{item.path}.content` has {len(text)} characters of text, over the {limits.text_chars} allowed; "
            "send a shorter message",
            event_id,
            param_of(f"{item.path}.content"),
        )
    return ItemCreate(text, item.text("id", max_chars=MAX_ID_CHARS), event_id=event_id)


# ---- server events ---------------------------------------------------------------------------------------
# One frozen dataclass per server event; `encode_server_event` is the only place they become JSON.


@dataclass(frozen=True)
class SessionCreated:
    session: dict[str, Any]
    type: Literal["session.created"] = "session.created"


@dataclass(frozen=True)
class SessionUpdated:
    session: dict[str, Any]
    type: Literal["session.updated"] = "session.updated"


@dataclass(frozen=True)
class BufferCommitted:
    previous_item_id: str | None
    item_id: str
    type: Literal["input_audio_buffer.committed"] = "input_audio_buffer.committed"


@dataclass(frozen=True)
class BufferCleared:
    type: Literal["input_audio_buffer.cleared"] = "input_audio_buffer.cleared"


@dataclass(frozen=True)
class SpeechStarted:
    item_id: str
    audio_start_ms: int
    type: Literal["input_audio_buffer.speech_started"] = "input_audio_buffer.speech_started"


@dataclass(frozen=True)
class SpeechStopped:
    item_id: str
    audio_end_ms: int
    type: Literal["input_audio_buffer.speech_stopped"] = "input_audio_buffer.speech_stopped"


@dataclass(frozen=True)
class ItemAdded:
    previous_item_id: str | None
    item: dict[str, Any]
    type: Literal["conversation.item.added"] = "conversation.item.added"


@dataclass(frozen=True)
class ItemDone:
    previous_item_id: str | None
    item: dict[str, Any]
    type: Literal["conversation.item.done"] = "conversation.item.done"


@dataclass(frozen=True)
class ItemTruncated:
    item_id: str
    content_index: int
    audio_end_ms: int
    type: Literal["conversation.item.truncated"] = "conversation.item.truncated"


@dataclass(frozen=True)
class TranscriptionDelta:
    """Droppable: the `completed` event that follows carries the whole transcript."""

    item_id: str
    content_index: int
    delta: str
    type: Literal["conversation.item.input_audio_transcription.delta"] = (
        "conversation.item.input_audio_transcription.delta"
    )


@dataclass(frozen=True)
class TranscriptionCompleted:
    item_id: str
    content_index: int
    transcript: str
    usage: dict[str, Any] = field(default_factory=lambda: {"type": "duration", "seconds": 0.0})
    type: Literal["conversation.item.input_audio_transcription.completed"] = (
        "conversation.item.input_audio_transcription.completed"
    )


@dataclass(frozen=True)
class TranscriptionFailed:
    item_id: str
    content_index: int
    error: dict[str, Any]  # {"type", "code", "message", "param"}
    type: Literal["conversation.item.input_audio_transcription.failed"] = (
        "conversation.item.input_audio_transcription.failed"
    )


@dataclass(frozen=True)
class TranscriptionSegment:
    """One stretch of the user's speech with its text (sent for diarizing transcription models)."""

    item_id: str
    content_index: int
    id: str
    start: float
    end: float
    text: str
    speaker: str
    type: Literal["conversation.item.input_audio_transcription.segment"] = (
        "conversation.item.input_audio_transcription.segment"
    )


@dataclass(frozen=True)
class ConversationCreated:
    conversation: dict[str, Any]
    type: Literal["conversation.created"] = "conversation.created"


@dataclass(frozen=True)
class ItemDeleted:
    item_id: str
    type: Literal["conversation.item.deleted"] = "conversation.item.deleted"


@dataclass(frozen=True)
class ItemRetrieved:
    item: dict[str, Any]
    type: Literal["conversation.item.retrieved"] = "conversation.item.retrieved"


@dataclass(frozen=True)
class TimeoutTriggered:
    item_id: str
    audio_start_ms: int
    audio_end_ms: int
    type: Literal["input_audio_buffer.timeout_triggered"] = "input_audio_buffer.timeout_triggered"


@dataclass(frozen=True)
class RateLimitsUpdated:
    rate_limits: list[dict[str, Any]]
    type: Literal["rate_limits.updated"] = "rate_limits.updated"


@dataclass(frozen=True)
class OutputAudioStarted:
    response_id: str
    type: Literal["output_audio_buffer.started"] = "output_audio_buffer.started"


@dataclass(frozen=True)
class OutputAudioStopped:
    response_id: str
    type: Literal["output_audio_buffer.stopped"] = "output_audio_buffer.stopped"


@dataclass(frozen=True)
class OutputAudioCleared:
    response_id: str
    type: Literal["output_audio_buffer.cleared"] = "output_audio_buffer.cleared"


@dataclass(frozen=True)
class ResponseCreated:
    response: dict[str, Any]
    type: Literal["response.created"] = "response.created"


@dataclass(frozen=True)
class OutputItemAdded:
    response_id: str
    output_index: int
    item: dict[str, Any]
    type: Literal["response.output_item.added"] = "response.output_item.added"


@dataclass(frozen=True)
class OutputItemDone:
    response_id: str
    output_index: int
    item: dict[str, Any]
    type: Literal["response.output_item.done"] = "response.output_item.done"


@dataclass(frozen=True)
class ContentPartAdded:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    part: dict[str, Any]
    type: Literal["response.content_part.added"] = "response.content_part.added"


@dataclass(frozen=True)
class ContentPartDone:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    part: dict[str, Any]
    type: Literal["response.content_part.done"] = "response.content_part.done"


@dataclass(frozen=True)
class AudioTranscriptDelta:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    delta: str
    type: Literal["response.output_audio_transcript.delta"] = "response.output_audio_transcript.delta"


@dataclass(frozen=True)
class AudioTranscriptDone:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    transcript: str
    type: Literal["response.output_audio_transcript.done"] = "response.output_audio_transcript.done"


@dataclass(frozen=True)
class TextDelta:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    delta: str
    type: Literal["response.output_text.delta"] = "response.output_text.delta"


@dataclass(frozen=True)
class TextDone:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    text: str
    type: Literal["response.output_text.done"] = "response.output_text.done"


@dataclass(frozen=True)
class AudioDelta:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    delta: str  # base64 pcm16 24 kHz
    type: Literal["response.output_audio.delta"] = "response.output_audio.delta"


@dataclass(frozen=True)
class AudioDone:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    type: Literal["response.output_audio.done"] = "response.output_audio.done"


@dataclass(frozen=True)
class FunctionCallArgumentsDelta:
    response_id: str
    item_id: str
    output_index: int
    call_id: str
    delta: str  # a piece of the arguments' JSON text
    type: Literal["response.function_call_arguments.delta"] = "response.function_call_arguments.delta"


@dataclass(frozen=True)
class FunctionCallArgumentsDone:
    response_id: str
    item_id: str
    output_index: int
    call_id: str
    name: str
    arguments: str
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"


@dataclass(frozen=True)
class ResponseDoneEvent:
    response: dict[str, Any]
    type: Literal["response.done"] = "response.done"


@dataclass(frozen=True)
class ErrorDetail:
    """The `error` object of an error event; `message` is for people and never repeats unbounded input."""

    code: str
    message: str
    event_id: str | None = None
    type: str = "invalid_request_error"  # or "server_error"
    param: str | None = None  # the field at fault (`session.audio.output.speed`), where one is


@dataclass(frozen=True)
class Error:
    error: ErrorDetail
    type: Literal["error"] = "error"


ServerEvent = (
    SessionCreated
    | SessionUpdated
    | BufferCommitted
    | BufferCleared
    | SpeechStarted
    | SpeechStopped
    | ItemAdded
    | ItemDone
    | ItemTruncated
    | TranscriptionDelta
    | TranscriptionCompleted
    | ResponseCreated
    | OutputItemAdded
    | OutputItemDone
    | ContentPartAdded
    | ContentPartDone
    | AudioTranscriptDelta
    | AudioTranscriptDone
    | TextDelta
    | TextDone
    | AudioDelta
    | AudioDone
    | ResponseDoneEvent
    | Error
    | TranscriptionFailed
    | TranscriptionSegment
    | ConversationCreated
    | ItemDeleted
    | ItemRetrieved
    | TimeoutTriggered
    | RateLimitsUpdated
    | OutputAudioStarted
    | OutputAudioStopped
    | OutputAudioCleared
    | FunctionCallArgumentsDelta
    | FunctionCallArgumentsDone
)
SERVER_EVENTS: tuple[type, ...] = get_args(ServerEvent)
DROPPABLE = (TranscriptionDelta,)  # a slow client may lose these (the completed event repeats their text)

# Beta names of the server events whose GA names differ.
BETA_NAMES = {
    "conversation.item.added": "conversation.item.created",
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
}


# Server events of the GA protocol that the beta API does not define: a beta client is not sent them.
GA_ONLY = frozenset(
    {
        "conversation.item.done",
        "conversation.item.input_audio_transcription.segment",
        "input_audio_buffer.timeout_triggered",
        "input_audio_buffer.dtmf_event_received",
    }
)


def server_event_dict(ev: ServerEvent, event_id: str, beta: bool = False) -> dict[str, Any]:
    """The JSON object of a server event: `type` (beta name if asked), `event_id`, then its fields in order."""
    body = {f.name: getattr(ev, f.name) for f in fields(ev) if f.name != "type"}
    if isinstance(ev, Error):
        d = ev.error
        body["error"] = {"type": d.type, "code": d.code, "message": d.message, "param": d.param, "event_id": d.event_id}
    if not beta:
        return {"type": ev.type, "event_id": event_id, **body}
    if ev.type == "response.function_call_arguments.done":
        body.pop("name")  # the beta event has no name (its output item carries it)
    return {"type": BETA_NAMES.get(ev.type, ev.type), "event_id": event_id, **_beta_body(body)}


def encode_server_event(ev: ServerEvent, event_id: str, beta: bool = False) -> str:
    """One JSON text frame."""
    return json.dumps(server_event_dict(ev, event_id, beta), separators=(",", ":"))


@dataclass
class ServerEvents:
    """Numbers server events (`event_N`) and encodes them for one connection (beta names if `beta`)."""

    beta: bool = False
    count: int = 0

    def encode(self, ev: ServerEvent) -> str:
        self.count += 1
        return encode_server_event(ev, f"event_{self.count}", self.beta)

    def error(self, code: str, message: str, event_id: str | None = None, kind: str = "invalid_request_error") -> str:
        return self.encode(Error(ErrorDetail(code, message, event_id, kind)))


@dataclass(frozen=True)
class Settings:
    """The effective session of one connection, as session.created / session.updated report it."""

    instructions: str
    voice: str
    detection: TurnDetection | None = TurnDetection()
    audio_output: bool = True
    input_format: AudioFormat = "pcm16"
    output_format: AudioFormat = "pcm16"
    speed: float = 1.0
    transcription: Transcription | None = None
    model: str = "assistant"
    tools: tuple[Function, ...] = ()
    tool_choice: ToolChoice = AUTO
    max_output_tokens: int | None = None  # the bound on a reply's tokens (llm.max_tokens); None: not known
    temperature: float = 0.8  # the LLM's sampling temperature (the daemon's llm.temperature until a client sets it)


def choice_object(choice: ToolChoice) -> str | dict[str, str]:
    """tool_choice as the GA session reports it."""
    return {"type": "function", "name": choice.name} if choice.mode == "function" else choice.mode


SESSION_LIFETIME_S = 30 * 60  # OpenAI's sessions last 30 minutes; ours until the socket closes, reported as OpenAI's


def _format_object(name: AudioFormat) -> dict[str, Any]:
    return {"type": "audio/pcm", "rate": RATE} if name == "pcm16" else {"type": f"audio/{name}"}


def _detection_object(d: TurnDetection | None) -> dict[str, Any] | None:
    if d is None:
        return None
    common = {"create_response": d.create_response, "interrupt_response": d.interrupt_response}
    if d.kind == "semantic_vad":
        return {"type": "semantic_vad", "eagerness": d.eagerness, **common}
    return {
        "type": "server_vad",
        "threshold": 0.5 if d.vad_level is None else d.vad_level / 4,
        "prefix_padding_ms": d.padding_ms,
        "silence_duration_ms": d.silence_duration_ms,
        "idle_timeout_ms": d.idle_timeout_ms,
        **common,
    }


def session_object(session_id: str, s: Settings, expires_at: int = 0, beta: bool = False) -> dict[str, Any]:
    """The effective session as session.created/updated report it (GA shape, or the beta one if `beta`)."""
    transcription = None if s.transcription is None else {"model": s.transcription.model}
    if s.transcription is not None and s.transcription.language:
        transcription = {**(transcription or {}), "language": s.transcription.language}
    ga = {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": s.model,
        "output_modalities": ["audio"] if s.audio_output else ["text"],
        "instructions": s.instructions,
        "audio": {
            "input": {
                "format": _format_object(s.input_format),
                "turn_detection": _detection_object(s.detection),
                "transcription": transcription,
                "noise_reduction": None,
            },
            "output": {"format": _format_object(s.output_format), "voice": s.voice, "speed": s.speed},
        },
        "include": None,
        "tools": [f.wire() for f in s.tools],
        "tool_choice": choice_object(s.tool_choice),
        "max_output_tokens": s.max_output_tokens or "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": expires_at,
    }
    return beta_session(ga, s.temperature) if beta else ga


_BETA_FORMAT_NAMES = {v: k for k, v in BETA_FORMATS.items()}


def beta_session(ga: dict[str, Any], temperature: float) -> dict[str, Any]:
    """A GA session object in the beta shape (flat audio settings, `modalities`, beta format names; the beta
    session also reports the sampling temperature, which the GA one has no field for)."""
    audio_in, audio_out = ga["audio"]["input"], ga["audio"]["output"]

    def name(fmt: dict[str, Any]) -> str:
        return _BETA_FORMAT_NAMES[GA_FORMATS[fmt["type"]]]

    detection = audio_in["turn_detection"]
    if detection is not None and detection["type"] == "server_vad":
        detection = {k: v for k, v in detection.items() if k != "idle_timeout_ms"}
    return {
        "id": ga["id"],
        "object": "realtime.session",
        # no "model": the beta schema allows only OpenAI's model names there
        "modalities": ["audio", "text"] if "audio" in ga["output_modalities"] else ["text"],
        "instructions": ga["instructions"],
        "voice": audio_out["voice"],
        "input_audio_format": name(audio_in["format"]),
        "output_audio_format": name(audio_out["format"]),
        "input_audio_transcription": audio_in["transcription"],
        "turn_detection": detection,
        "input_audio_noise_reduction": None,
        "speed": audio_out["speed"],
        "tools": ga["tools"],
        # the beta session's tool_choice is a string: a forced function by its name
        "tool_choice": ga["tool_choice"] if isinstance(ga["tool_choice"], str) else ga["tool_choice"]["name"],
        "temperature": temperature,
        "max_response_output_tokens": ga["max_output_tokens"],
        "tracing": None,
        "expires_at": ga["expires_at"],
    }


_BETA_CONTENT = {"output_audio": "audio", "output_text": "text"}


def beta_item(item: dict[str, Any]) -> dict[str, Any]:
    """A GA conversation item in the beta shape (assistant content types `audio` / `text`)."""
    if "content" not in item:  # function_call / function_call_output items are the same in both
        return item
    content = [{**c, "type": _BETA_CONTENT.get(c.get("type", ""), c.get("type"))} for c in item.get("content", [])]
    return {**item, "content": content}


def _beta_body(body: dict[str, Any]) -> dict[str, Any]:
    if isinstance(body.get("item"), dict):
        body = {**body, "item": beta_item(body["item"])}
    if isinstance(body.get("response"), dict):
        response = dict(body["response"])
        response["output"] = [beta_item(i) for i in response.get("output", [])]
        response["modalities"] = ["audio", "text"] if "audio" in response.pop("output_modalities", []) else ["text"]
        body = {**body, "response": response}
    return body


def message_item(item_id: str, role: str, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "role": role,
        "status": status,
        "content": content,
    }


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def function_output_item(item_id: str, call_id: str, output: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "function_call_output",
        "status": "completed",
        "call_id": call_id,
        "output": output,
    }


def response_object(
    response_id: str,
    status: str,
    output: list[dict[str, Any]],
    audio: bool = True,
    reason: str | None = None,
    usage: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    details = (
        {"type": status, "error": error} if error else None if reason is None else {"type": status, "reason": reason}
    )
    return {
        "id": response_id,
        "object": "realtime.response",
        "status": status,
        "status_details": details,
        "output": output,
        "conversation_id": "conv_1",
        "output_modalities": ["audio"] if audio else ["text"],
        "usage": usage,
    }
