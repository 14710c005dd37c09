"""What the server needs from the pipeline, as Protocols: the server imports these, never the pipeline.

`Controller` is the daemon's control surface (the native protocol drives it). `RealtimeBackend` opens headless
sessions whose audio comes from and goes to a WebSocket client (the `/v1/realtime` endpoint drives them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import numpy as np

from assistant import events
from assistant.endofturn import EndOfTurnPolicy
from assistant.tools.calls import ToolChoice
from assistant.turns import CommandKind


class Subscription(Protocol):
    """An async iterator of pipeline events with a bounded drop-oldest queue; `dropped` counts lost events."""

    dropped: int

    def __aiter__(self) -> AsyncIterator[events.Event]: ...
    async def __anext__(self) -> events.Event: ...
    def close(self) -> None: ...


class Controller(Protocol):
    """The pipeline's public methods (see the interface contract); AssistantError subclasses mean bad input.

    `ask` emits its ResponseTextDelta events and then its ResponseDone to subscribers before it returns; its
    reply's turn is the first after `turn` read just before calling it (events of older turns are not its).
    """

    @property
    def turn(self) -> int:
        """The newest turn's number."""
        ...

    def status(self) -> dict[str, Any]: ...
    async def say(self, text: str) -> None: ...
    async def ask(self, text: str) -> str: ...
    def command(self, kind: CommandKind) -> None:
        """interrupt, mute, unmute, ptt_start, ptt_stop (see `turns.Command`)."""

    def config_get(self) -> dict[str, Any]: ...
    def config_set(self, changes: dict[str, object]) -> dict[str, Any]: ...
    def history_get(self) -> list[dict[str, Any]]: ...
    def history_reset(self) -> None: ...
    def subscribe(self, maxsize: int = 256) -> Subscription: ...
    def set_app_tools(
        self,
        owner: str,
        tools: list[dict[str, Any]],
        timeout_s: float,
        send: Callable[[str, str, dict[str, Any]], None],
    ) -> list[str]:
        """A connected app's tools (`{"type": "function", "function": {...}}` schemas) for the voice loop, replacing
        its earlier ones ([] withdraws them); a call goes to the app as `send(call_id, name, arguments)` and waits
        up to `timeout_s` for `app_tool_result`. Returns the names offered now. InputError, before anything changes,
        for a name the daemon or another app already uses, or when the LLM cannot call tools."""

    def app_tool_result(self, owner: str, call_id: str, output: str, error: str | None = None) -> None:
        """The app's answer to a call it was sent (`error`: it failed); InputError when none awaits `call_id`."""

    def app_gone(self, owner: str) -> None:
        """The app disconnected: its tools are withdrawn and its unanswered calls fail at once (the model hears
        why)."""


class RealtimeSession(Protocol):
    """One headless conversation driven by one `/v1/realtime` client.

    Audio in: `on_audio` gets int16 mono 16 kHz blocks of any length (the server resamples the client's
    24 kHz pcm16). With turn detection on, the session runs its VAD over them and, when the user stops, commits
    the utterance itself: it emits SpeechStarted / SpeechEnded, then FinalTranscript, then (when
    `create_response`) a reply turn. With turn detection off (`set_turn_detection(None, ...)`), audio only
    accumulates until `command("commit")` (transcribe it as one user message, emitting FinalTranscript) or
    `command("clear")` (drop it).

    Reply turns: `create_response()` answers the conversation so far and emits, in order, ResponseStarted(turn),
    any number of ResponseTextDelta(turn) and ResponseAudio(turn) (float32 24 kHz), then exactly one
    ResponseDone(turn, interrupted=False), or interrupted=True after `command("interrupt")` or a barge-in.
    `truncate_response(turn, audio_end_ms)` says the client played only the first `audio_end_ms` of that
    turn's audio: history keeps only what was heard. All methods return at once (they enqueue work) and raise
    ConfigError/InputError for bad values; `events()` yields SessionEvents until `aclose()`.
    """

    def set_instructions(self, text: str) -> None: ...
    def set_temperature(self, value: float) -> None: ...  # the LLM's sampling temperature from the next reply on
    def check_voice(self, name: str) -> None: ...  # ConfigError naming the voices when unknown or unfit
    def set_voice(self, name: str) -> None: ...  # the same check, then the voice from the next reply on
    @property
    def can_call_tools(self) -> bool: ...  # False: functions offered would never be called (no tool format)
    def set_turn_detection(
        self,
        hangover_ms: int | None,
        create_response: bool,
        interrupt_response: bool,
        semantic: EndOfTurnPolicy | None = None,
        vad_level: int | None = None,
    ) -> None:
        """`hangover_ms` None = manual turns (command("commit")); else server VAD with this end-of-turn silence, or
        the `semantic` policy's decision (semantic_vad; ConfigError when its model is not loaded). `vad_level`:
        webrtcvad's aggressiveness for this session (None: the daemon's vad.aggressiveness)."""

    def on_audio(self, samples: np.ndarray) -> None: ...
    def command(self, kind: CommandKind) -> None:
        """commit, clear, interrupt (response.cancel) (see `turns.Command`)."""

    def add_user_text(self, text: str) -> None: ...
    def create_response(self, instructions: str | None = None) -> None: ...
    def truncate_response(self, turn: int, audio_end_ms: int) -> None: ...
    def delete_item(self, role: str, text: str) -> None:
        """Forget the newest `role` ("user" / "assistant") message whose text is `text`; InputError when the
        history holds none (a message not answered yet is not in it)."""

    def set_functions(self, tools: list[dict[str, Any]], choice: ToolChoice) -> None:
        """The client's functions (`{"type": "function", "function": {name, description, parameters}}`) and the
        tool choice, from the next reply on. A reply whose model calls them emits FunctionCall events (one per
        call) before its ResponseDone and keeps its answer open for the outputs."""

    def functions_for_next_response(self, tools: list[dict[str, Any]], choice: ToolChoice) -> None:
        """Tools and choice for the next reply only (response.create's own)."""

    def add_function_output(self, call_id: str, output: str) -> None:
        """The client's output of a call from the last reply; the next `create_response()` continues that answer
        with every output (a call without one gets an error result). InputError for an unknown call id."""

    def events(self) -> AsyncIterator[events.SessionEvent]: ...
    @property
    def dropped(self) -> int: ...  # events lost because the client read too slowly (audio first)
    async def aclose(self) -> None: ...


class RealtimeBackend(Protocol):
    """Opens headless sessions; the daemon allows a limited number at once (ModelError/AssistantError if not)."""

    async def open_session(self) -> RealtimeSession: ...
    def default_voice(self) -> str: ...
    def default_instructions(self) -> str: ...
    def default_temperature(self) -> float: ...  # llm.temperature: a session samples at it until it sets its own
    def vad_defaults(self) -> tuple[int, int]: ...  # (vad.aggressiveness, vad.preroll_ms), as sessions report them
    def max_output_tokens(self) -> int:
        """The bound on a reply's tokens (llm.max_tokens), as sessions report it."""
        ...


class AudioService(Protocol):
    """One-shot speech and transcription over the loaded engines (the HTTP endpoints drive it).

    Model work runs on the compute thread at background priority. `speak` yields float32 mono chunks at
    `sample_rate` as they are made (InputError when the text has nothing speakable); unknown voice names get the
    default voice. `transcribe` takes float32 mono 16 kHz audio and returns (text, language or "").
    """

    sample_rate: int

    def models(self) -> dict[str, str]: ...
    def voices(self) -> list[str]: ...
    def voice_name(self, requested: str | None) -> str: ...
    def known_voice(self, name: str) -> bool: ...  # a profile or a server.voice_aliases name
    def check_voice(self, requested: str | None) -> None: ...  # ConfigError when voice_name(requested) is unfit
    def health(self) -> dict[str, Any]: ...
    def speak(self, text: str, voice: str | None) -> AsyncIterator[np.ndarray]: ...
    async def transcribe(self, audio: np.ndarray) -> tuple[str, str]: ...
