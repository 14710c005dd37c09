"""Scripted test doubles of the pipeline's Controller and RealtimeBackend (tests only; no models).

They record every call and script the events a real pipeline would emit, so the server can be driven end to
end over real sockets.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from assistant import events, settings
from assistant.config import Config
from assistant.endofturn import EndOfTurnPolicy
from assistant.errors import ConfigError, InputError
from assistant.server.controller import Controller, RealtimeBackend, RealtimeSession
from assistant.turns import CommandKind

SPEECH_LEVEL = 1000  # int16 peak above which the scripted server VAD calls a 16 kHz block speech


@dataclass(frozen=True)
class FakeProfile:
    mode: str


class FakeVoices:
    """A loaded CustomVoice TTS with three voice profiles, one of which (a clone) needs another model."""

    model_type = "custom_voice"
    speakers = languages = None  # not checked here (tests/test_model_folders.py checks them)

    def profiles(self) -> dict[str, FakeProfile]:
        return {
            "default": FakeProfile("custom_voice"),
            "alice": FakeProfile("custom_voice"),
            "bob": FakeProfile("clone"),
        }


class FakeSubscription:
    """Bounded drop-oldest event queue, as the pipeline's Subscription."""

    def __init__(self, owner: FakeController, maxsize: int) -> None:
        self.owner, self.maxsize, self.dropped = owner, maxsize, 0
        self.items: deque[events.Event] = deque()
        self.ready = asyncio.Event()

    def push(self, ev: events.Event) -> None:
        if len(self.items) >= self.maxsize:
            self.items.popleft()
            self.dropped += 1
        self.items.append(ev)
        self.ready.set()

    def __aiter__(self) -> FakeSubscription:
        return self

    async def __anext__(self) -> events.Event:
        while not self.items:
            self.ready.clear()
            await self.ready.wait()
        return self.items.popleft()

    def close(self) -> None:
        self.owner.subs.discard(self)


class FakeController:
    """Implements the Controller Protocol; `ask` streams scripted deltas through the subscribers."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.subs: set[FakeSubscription] = set()
        self.cfg = Config()
        self.muted = False
        self.history: list[dict[str, Any]] = []
        self.turn = 0
        self.say_gate: asyncio.Event | None = None  # when set, `say` waits for it (to test concurrency)

    def emit(self, ev: events.Event) -> None:
        for s in list(self.subs):
            s.push(ev)

    def status(self) -> dict[str, Any]:
        self.calls.append(("status", None))
        return {"state": "idle", "muted": self.muted, "turn": self.turn}

    async def say(self, text: str) -> None:
        self.calls.append(("say", text))
        if not text.strip():
            raise InputError("say: the text is empty; give something to say")
        if self.say_gate is not None:
            await self.say_gate.wait()

    async def ask(self, text: str) -> str:
        self.calls.append(("ask", text))
        self.turn += 1
        answer = ["You ", "said: ", text]
        for piece in answer:
            await asyncio.sleep(0)
            self.emit(events.ResponseTextDelta(self.turn, piece, 0.0))
        self.emit(events.ResponseDone(self.turn, "".join(answer), False, 0.0))
        self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": "".join(answer)}]
        return "".join(answer)

    def command(self, kind: CommandKind) -> None:
        self.calls.append((kind, None))
        if kind in ("mute", "unmute"):
            self.muted = kind == "mute"

    def config_get(self) -> dict[str, Any]:
        self.calls.append(("config_get", None))
        return settings.public(self.cfg)

    def config_set(self, changes: dict[str, object]) -> dict[str, Any]:
        self.calls.append(("config_set", changes))
        self.cfg = settings.apply(self.cfg, changes, FakeVoices())
        return settings.public(self.cfg)

    def history_get(self) -> list[dict[str, Any]]:
        self.calls.append(("history_get", None))
        return list(self.history)

    def history_reset(self) -> None:
        self.calls.append(("history_reset", None))
        self.history.clear()

    def set_app_tools(self, owner: str, tools: list[dict[str, Any]], timeout_s: float, send: Any) -> list[str]:
        names = [t["function"]["name"] for t in tools]
        self.calls.append(("app_tools", (owner, names)))
        return names

    def app_tool_result(self, owner: str, call_id: str, output: str, error: str | None = None) -> None:
        self.calls.append(("app_tool_result", (owner, call_id, output, error)))

    def app_gone(self, owner: str) -> None:
        self.calls.append(("app_gone", owner))

    def subscribe(self, maxsize: int = 256) -> FakeSubscription:
        sub = FakeSubscription(self, maxsize)
        self.subs.add(sub)
        return sub


class FakeSession:
    """Implements RealtimeSession with a scripted energy VAD, transcriber and replier.

    Transcripts name how many 16 kHz samples were heard; a reply is "reply N" as text deltas plus N_CHUNKS
    chunks of 0.1 s of a 440 Hz tone; command("interrupt") ends the current reply as interrupted.
    """

    N_CHUNKS = 5
    CHUNK = 2400  # 0.1 s at 24 kHz

    def __init__(self, backend: FakeBackend) -> None:
        self.backend = backend
        self.can_call_tools = True
        self.calls: list[tuple[str, Any]] = []
        self.queue: asyncio.Queue[events.SessionEvent] = asyncio.Queue()
        self.audio: list[np.ndarray] = []  # every 16 kHz block appended
        self.buffered = 0
        self.position = 0  # 16 kHz samples since the session started
        self.hangover_ms: int | None = None
        self.create_response_on_vad = True
        self.speech_start: int | None = None
        self.silence_run = 0
        self.turn = 0
        self.replying: asyncio.Task[None] | None = None
        self.cancel = asyncio.Event()
        self.closed = False
        self.dropped = 0  # events lost to a slow client (the tests set it)

    def set_instructions(self, text: str) -> None:
        self.calls.append(("instructions", text))

    def set_temperature(self, value: float) -> None:
        self.calls.append(("temperature", value))

    def check_voice(self, name: str) -> None:
        if name not in self.backend.voices:
            raise ConfigError(f"unknown voice {name!r}; voices: {', '.join(self.backend.voices)}")

    def set_voice(self, name: str) -> None:
        self.check_voice(name)
        self.calls.append(("voice", name))

    def set_turn_detection(
        self,
        hangover_ms: int | None,
        create_response: bool,
        interrupt_response: bool,
        semantic: EndOfTurnPolicy | None = None,
        vad_level: int | None = None,
    ) -> None:
        self.calls.append(("turn_detection", hangover_ms))
        self.vad_level = vad_level
        self.semantic = semantic
        self.hangover_ms, self.create_response_on_vad = hangover_ms, create_response

    def on_audio(self, samples: np.ndarray) -> None:
        assert samples.dtype == np.int16 and samples.ndim == 1
        if self.backend.keep_audio:
            self.audio.append(samples)
        self.buffered += len(samples)
        start = self.position
        self.position += len(samples)
        if self.hangover_ms is None:
            return
        loud = int(np.abs(samples.astype(np.int32)).max()) > SPEECH_LEVEL
        if loud:
            self.silence_run = 0
            if self.speech_start is None:
                self.speech_start = start
                self.queue.put_nowait(events.SpeechStarted(start, start, 0.0))
        elif self.speech_start is not None:
            self.silence_run += len(samples)
            if self.silence_run * 1000 >= self.hangover_ms * 16_000:
                end = self.position - self.silence_run
                self.queue.put_nowait(events.SpeechEnded(self.speech_start, end, 0.0))
                self.speech_start = None
                self._transcribe()
                if self.create_response_on_vad:
                    self.create_response()

    def _transcribe(self) -> None:
        n = self.buffered
        self.buffered = 0
        self.queue.put_nowait(events.PartialTranscript("heard", 0.0))
        self.queue.put_nowait(events.FinalTranscript(f"heard {n} samples", "en", 0.0))

    def command(self, kind: CommandKind) -> None:
        if kind == "commit":
            self.calls.append(("commit", self.buffered))
            self._transcribe()
        elif kind == "clear":
            self.calls.append(("clear", self.buffered))
            self.buffered = 0
        elif kind == "interrupt":
            self._cancel_response()

    def add_user_text(self, text: str) -> None:
        self.calls.append(("user_text", text))

    def create_response(self, instructions: str | None = None) -> None:
        self.calls.append(("create_response", instructions))
        self.turn += 1
        self.cancel.clear()
        self.replying = asyncio.get_running_loop().create_task(self._reply(self.turn))

    async def _reply(self, turn: int) -> None:
        self.queue.put_nowait(events.ResponseStarted(turn, 0.0))
        said = ""
        t = np.arange(self.CHUNK) / 24_000
        for i in range(self.N_CHUNKS):
            if i == 1 and self.backend.hold_replies is not None:
                await self.backend.hold_replies.wait()
            if self.cancel.is_set():
                self.queue.put_nowait(events.ResponseDone(turn, said, True, 0.0))
                return
            piece = f"reply {turn} " if i == 0 else "."
            said += piece
            self.queue.put_nowait(events.ResponseTextDelta(turn, piece, 0.0))
            tone = (0.3 * np.sin(2 * np.pi * 440 * (t + i * self.CHUNK / 24_000))).astype(np.float32)
            self.queue.put_nowait(events.ResponseAudio(turn, tone, 0.0))
            await asyncio.sleep(0)
        self.queue.put_nowait(events.ResponseDone(turn, said, False, 0.0))

    def _cancel_response(self) -> None:
        self.calls.append(("cancel", None))
        self.cancel.set()
        if self.backend.hold_replies is not None:
            self.backend.hold_replies.set()

    def truncate_response(self, turn: int, audio_end_ms: int) -> None:
        self.calls.append(("truncate", (turn, audio_end_ms)))

    def delete_item(self, role: str, text: str) -> None:
        self.calls.append(("delete", (role, text)))

    def set_functions(self, tools: list[dict[str, Any]], choice: Any) -> None:
        self.calls.append(("functions", (tools, choice)))

    def functions_for_next_response(self, tools: list[dict[str, Any]], choice: Any) -> None:
        self.calls.append(("next_functions", (tools, choice)))

    def add_function_output(self, call_id: str, output: str) -> None:
        self.calls.append(("function_output", (call_id, output)))

    async def events(self) -> AsyncIterator[events.SessionEvent]:
        while True:
            yield await self.queue.get()

    async def aclose(self) -> None:
        self.closed = True
        if self.replying is not None:
            self.replying.cancel()
        await asyncio.sleep(self.backend.close_delay_s)


class FakeBackend:
    """Implements RealtimeBackend; keeps every session it opened."""

    def __init__(self) -> None:
        self.sessions: list[FakeSession] = []
        self.voices = ("default", "alice")
        self.hold_replies: asyncio.Event | None = None  # when set, replies pause after their first chunk
        self.open_delay_s = 0.0  # the real backend awaits the compute thread while it opens a session
        self.close_delay_s = 0.0  # and while it closes one (the reply's steps are cancelled on that thread)
        self.keep_audio = True  # sessions keep what they heard for the tests (the load benchmark turns it off)

    async def open_session(self) -> FakeSession:
        await asyncio.sleep(self.open_delay_s)
        session = FakeSession(self)
        self.sessions.append(session)
        return session

    def default_voice(self) -> str:
        return "default"

    def default_instructions(self) -> str:
        return "Be brief."

    def default_temperature(self) -> float:
        return 0.7

    def vad_defaults(self) -> tuple[int, int]:
        return 2, 300

    def max_output_tokens(self) -> int:
        return 400


if TYPE_CHECKING:  # mypy proves the doubles implement the server's Protocols
    _controller: Controller = FakeController()
    _backend: RealtimeBackend = FakeBackend()
    _session: RealtimeSession = FakeSession(FakeBackend())


class FakeSpeech:
    """An AudioService that speaks a tenth of a second of silence per request (the routing is under test)."""

    sample_rate = 24_000

    def __init__(self) -> None:
        self.spoken: list[str] = []

    def models(self) -> dict[str, str]:
        return {}

    def voices(self) -> list[str]:
        return ["default"]

    def voice_name(self, requested: str | None) -> str:
        return "default"

    def known_voice(self, name: str) -> bool:
        return name == "default"

    def check_voice(self, requested: str | None) -> None:
        pass

    def health(self) -> dict[str, Any]:
        return {}

    async def speak(self, text: str, voice: str | None) -> AsyncIterator[np.ndarray]:
        self.spoken.append(text)
        yield np.zeros(2400, np.float32)

    async def transcribe(self, audio: np.ndarray) -> tuple[str, str]:
        return "", ""
