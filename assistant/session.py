"""Headless conversations: one per `/v1/realtime` client, its audio in from and out to that client.

A `Session` has its own conversation (a Chat over the daemon's LLM weights), its own transcriber state and VAD,
and shares the daemon's TTS and its one compute thread. Replies run through the pipeline's reply machinery
(`Replies`: LLM -> TTS pump, cancel, heard-text trimming); only the turn-taking differs from the daemon's:

- server VAD (`set_turn_detection(ms, ...)`): speech start flushes a reply in progress when `interrupt_response`;
  speech end transcribes the utterance (FinalTranscript) and, with `create_response`, answers it;
- manual turns (`set_turn_detection(None, ...)`): audio accumulates until `commit_audio()` or `clear_audio()`.

User messages (transcripts and `add_user_text`) wait in `pending` until a reply answers them all at once. The
client plays the audio, so the sink counts sent audio as played; `truncate_response` corrects that afterwards.
No speculative start here: a client may commit and ask at any moment, so every reply starts confirmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from assistant.audio.format import CAPTURE_RATE, frame_samples
from assistant.compute import Compute, Priority
from assistant.config import Config
from assistant.errors import AssistantError, ConfigError, InputError
from assistant.events import (
    ErrorEvent,
    Event,
    FinalTranscript,
    PartialTranscript,
    ResponseAudio,
    ResponseDone,
    ResponseStarted,
    SessionEvent,
    SpeechEnded,
    SpeechStarted,
    StateChanged,
    TurnState,
)
from assistant.replies import Replies
from assistant.reply import Reply, feed_transcriber
from assistant.turns import AudioRing, Engines, VadLike, shift_event

if TYPE_CHECKING:
    from assistant.pipeline import Pipeline

log = logging.getLogger("assistant.session")

KEEP_REPLIES = 16  # finished replies a client may still truncate (OpenAI clients truncate the latest one)
QUEUE_LIMIT = 4096  # session events waiting for the client; reply audio is ~10 chunks a second


class EngineSource(Protocol):
    """What sessions need from the daemon's loaded engines (the composition root implements it)."""

    def new_session(self, voice: str | None) -> Engines:
        """On the compute thread: a fresh Chat and transcriber over the loaded weights, the shared TTS, `voice`."""
        ...

    def voice(self, name: str) -> Any:
        """On the compute thread: the TTS voice `name` (cached by the TTS)."""
        ...

    def voice_names(self) -> list[str]: ...


class ClientSink:
    """The speaker of a headless session: each chunk goes to the client; sent audio counts as played."""

    def __init__(self, on_chunk: Callable[[np.ndarray], None]) -> None:
        self._on_chunk = on_chunk
        self.played_samples = 0  # since the last flush (the reply's start)

    def write(self, chunk: np.ndarray) -> None:
        self.played_samples += len(chunk)
        self._on_chunk(chunk)

    def flush(self) -> None:
        self.played_samples = 0


class NullSink:
    """The daemon's speaker when there is no sound card: audio is dropped, and counted as played."""

    def __init__(self) -> None:
        self.played_samples = 0

    def write(self, chunk: np.ndarray) -> None:
        self.played_samples += len(chunk)

    def flush(self) -> None:
        self.played_samples = 0


@dataclasses.dataclass(eq=False)
class _Utterance:
    start_sample: int
    fed_to: int
    feeding: bool = False


class Session:
    """One headless conversation (implements the server's RealtimeSession). Create inside a running loop."""

    def __init__(
        self,
        cfg: Config,
        engines: Engines,
        compute: Compute,
        source: EngineSource,
        on_close: Callable[[Session], None],
    ) -> None:
        self.cfg = cfg
        self.engines = engines
        self.compute = compute
        self.source = source
        self._on_close = on_close
        self.state = TurnState.IDLE
        self.instructions = cfg.llm.system_prompt
        self.hangover_ms: int | None = cfg.vad.hangover_ms
        self.auto_respond = True
        self.interrupt_response = True
        self.vad: VadLike = engines.make_vad(cfg.vad)
        self._vad_origin = 0
        preroll = frame_samples(CAPTURE_RATE, cfg.vad.preroll_ms)
        self._ring = AudioRing(preroll + int(max(cfg.vad.max_utterance_s, cfg.stt.max_utterance_s) * CAPTURE_RATE))
        self._user: _Utterance | None = None
        self.pending: list[str] = []  # user messages not answered yet, oldest first
        self._transcribing: asyncio.Task[None] | None = None  # the latest utterance's transcription
        self._creating: asyncio.Task[None] | None = None  # a response waiting for transcriptions
        self._creating_turn = 0
        self._replies: OrderedDict[int, Reply] = OrderedDict()
        self._queue: deque[SessionEvent] = deque()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closed = False
        self.replies = Replies(self, cfg, engines, compute, ClientSink(self._audio_out))

    # ---- RealtimeSession: settings -------------------------------------------------------------------------

    def set_instructions(self, text: str) -> None:
        self.instructions = text
        self.compute.submit(self.engines.chat.set_system_prompt, text, priority=Priority.URGENT)

    def set_voice(self, name: str) -> None:
        names = self.source.voice_names()
        if name not in names:
            raise ConfigError(f"unknown voice {name!r}; voices: {', '.join(sorted(names))}")
        self.spawn(self._use_voice(name))

    async def _use_voice(self, name: str) -> None:
        try:
            self.engines.voice = await self.compute.run(self.source.voice, name, priority=Priority.URGENT)
        except Exception as e:
            self.failed(e, f"loading voice {name!r}")

    def set_turn_detection(self, hangover_ms: int | None, create_response: bool, interrupt_response: bool) -> None:
        """`hangover_ms` None = manual turns (commit_audio); else server VAD with this end-of-turn silence."""
        try:
            cfg = self.cfg if hangover_ms is None else self.cfg.replace({"vad.hangover_ms": hangover_ms})
        except ConfigError as e:
            raise ConfigError(f"turn_detection.silence_duration_ms {hangover_ms} cannot be used ({e})") from e
        self.auto_respond, self.interrupt_response = create_response, interrupt_response
        if hangover_ms == self.hangover_ms:
            return
        self.hangover_ms, self.cfg = hangover_ms, cfg
        self._drop_utterance()
        if hangover_ms is not None:
            self.vad = self.engines.make_vad(cfg.vad)
            self._vad_origin = self._ring.end

    # ---- RealtimeSession: audio in -------------------------------------------------------------------------

    def append_audio(self, samples: np.ndarray) -> None:
        """int16 16 kHz mono of any length: kept, fed to the transcriber during an utterance, run through the VAD."""
        if samples.dtype != np.int16 or samples.ndim != 1:
            raise InputError(f"audio must be int16 mono, got {samples.dtype} with shape {samples.shape}")
        start = self._ring.end
        self._ring.append(samples)
        if self.hangover_ms is None:
            if self._user is None:
                self._begin(start)
            self._feed()
            return
        if self._user is not None:
            self._feed()
        for raw in self.vad.feed(samples):
            ev = shift_event(raw, self._vad_origin)
            self.publish(ev)
            if isinstance(ev, SpeechStarted):
                if self.replies.current is not None and self.interrupt_response:
                    self.replies.barge_in()
                if self._user is None:
                    self._begin(ev.start_sample)
            elif isinstance(ev, SpeechEnded) and self._user is not None:
                self._end(ev, respond=self.auto_respond)

    def commit_audio(self) -> None:
        """End the user's utterance now: transcribe it as one user message (FinalTranscript, "" when empty)."""
        if self._user is None:
            self.publish(FinalTranscript("", "", time.monotonic()))
            return
        self.vad.reset()
        self._vad_origin = self._ring.end
        self._end(None, respond=False)

    def clear_audio(self) -> None:
        self._drop_utterance()
        self.vad.reset()
        self._vad_origin = self._ring.end

    def add_user_text(self, text: str) -> None:
        if not text.strip():
            raise InputError("the user message is empty; put the text in item.content[0].text")
        self.pending.append(text.strip())

    # ---- RealtimeSession: replies --------------------------------------------------------------------------

    def create_response(self, instructions: str | None = None) -> None:
        """Answer every pending user message (after the transcriptions in flight) as one reply."""
        if self._creating is not None and not self._creating.done():
            raise InputError("a response is already being prepared; wait for response.done or cancel it")
        self.replies.turn += 1  # the reply's number, known now so a cancel before it starts can name it
        self._creating_turn = self.replies.turn
        self._creating = self.spawn(self._create(self._creating_turn, instructions))

    async def _create(self, turn: int, instructions: str | None) -> None:
        while self._transcribing is not None and not self._transcribing.done():  # utterances ended before now
            await asyncio.shield(self._transcribing)
        text, self.pending = "\n".join(self.pending), []
        self.publish(ResponseStarted(turn, time.monotonic()))
        if not text:
            nothing = "nothing to answer: send user audio or a conversation item first"
            self.publish(ErrorEvent(nothing, time.monotonic()))
            self.publish(ResponseDone(turn, "", False, time.monotonic()))
            return
        if instructions is not None:
            self.compute.submit(self.engines.chat.set_system_prompt, instructions, priority=Priority.URGENT)
        self.replies.turn = turn - 1  # Replies.new numbers it `turn`
        reply = self.replies.new(confirmed=False, user_text=text)
        self._replies[reply.turn] = reply
        while len(self._replies) > KEEP_REPLIES:
            self._replies.popitem(last=False)
        self.set_state(TurnState.THINKING)
        self.replies.confirm(reply)
        if instructions is not None:
            self.spawn(self._restore_instructions(reply))

    async def _restore_instructions(self, reply: Reply) -> None:
        with contextlib.suppress(Exception):
            await asyncio.shield(reply.result)
        self.compute.submit(self.engines.chat.set_system_prompt, self.instructions, priority=Priority.URGENT)

    def cancel_response(self) -> None:
        """Stop the reply now (ResponseDone interrupted=True); the history keeps what was sent."""
        if self._creating is not None and not self._creating.done():
            self._creating.cancel()
            turn = self._creating_turn
            self.publish(ResponseStarted(turn, time.monotonic()))
            self.publish(ResponseDone(turn, "", True, time.monotonic()))
            return
        self.replies.barge_in()

    def delete_item(self, role: str, text: str) -> None:
        """Forget the newest `role` message whose text is `text` (conversation.item.delete); InputError if the
        history holds none (a message not answered yet is not in it)."""
        chat: Any = self.engines.chat  # the concrete Chat: ChatLike does not name restore
        history = list(chat.history)
        for i in range(len(history) - 1, -1, -1):
            m = history[i]
            # a truncated answer holds only what was heard: the start of the text the client was sent
            same = m.content.strip() == text.strip() or (m.interrupted and text.strip().startswith(m.content.strip()))
            if m.role == role and same:
                kept: list[Any] = []
                for other in history[:i] + history[i + 1 :]:
                    if kept and kept[-1].role == other.role and other.role in ("user", "assistant"):
                        # chat templates need user and assistant turns to alternate: neighbours join
                        kept[-1] = dataclasses.replace(kept[-1], content=f"{kept[-1].content}\n{other.content}")
                    else:
                        kept.append(other)
                self.compute.submit(chat.restore, kept, priority=Priority.URGENT)
                return
        raise InputError(f"the conversation holds no {role} message with that text; delete it after it is answered")

    def truncate_response(self, turn: int, audio_end_ms: int) -> None:
        """The client played only `audio_end_ms` of turn `turn`: its answer in the history becomes what was heard."""
        reply = self._replies.get(turn)
        if reply is None or not reply.result.done():
            raise InputError(f"response {turn} is not a finished answer of this session; truncate after response.done")
        recorded = reply.result.result().strip()
        played = audio_end_ms * self.engines.tts.sample_rate // 1000
        heard = reply.heard.heard(played, reply.answer)
        if heard == recorded:
            return
        self.spawn(self._rewrite_answer(recorded, heard))

    async def _rewrite_answer(self, recorded: str, heard: str) -> None:
        def rewrite() -> None:
            history = self.engines.chat.history
            for i in range(len(history) - 1, -1, -1):
                m = history[i]
                if m.role == "assistant" and m.content.strip() == recorded:
                    history[i] = dataclasses.replace(m, content=heard, interrupted=True)
                    return

        try:
            await self.compute.run(rewrite, priority=Priority.URGENT)  # the history belongs to the compute thread
        except Exception as e:
            self.failed(e, "truncating the answer")

    # ---- RealtimeSession: events and lifetime --------------------------------------------------------------

    async def events(self) -> AsyncIterator[SessionEvent]:
        while True:
            while self._queue:
                yield self._queue.popleft()
            if self.closed:
                return
            self._wake.clear()
            await self._wake.wait()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._wake.set()
        if self.replies.current is not None:
            self.replies.cancel(self.replies.current, heard=None)
        self.replies.generation.bump()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        self._on_close(self)

    # ---- the utterance -------------------------------------------------------------------------------------

    def _begin(self, start_sample: int) -> None:
        self._user = _Utterance(start_sample, start_sample)
        self.compute.submit(self.engines.transcriber.reset, priority=Priority.URGENT)
        self.set_state(TurnState.USER_SPEAKING)

    def _feed(self, force: bool = False) -> None:
        if self._user is not None:
            feed_transcriber(self._user, self._ring, self.compute, self.engines, self._fed, force)

    def _fed(self, user: _Utterance, fut: Any) -> None:
        user.feeding = False
        if user is not self._user or self.closed or fut.cancelled():
            return
        if (exc := fut.exception()) is not None:
            self.failed(exc, "transcribing")
            self._drop_utterance()
            return
        if (partial := fut.result()) is not None:
            self.publish(PartialTranscript(partial, time.monotonic()))
        self._feed()

    def _end(self, ended: SpeechEnded | None, respond: bool) -> None:
        """Transcribe the utterance (after its last audio) into a pending user message; maybe answer it."""
        user = self._user
        assert user is not None
        self._feed(force=True)
        self._user = None
        job = self.compute.submit(self.engines.transcriber.finalize, priority=Priority.URGENT)
        self._transcribing = self.spawn(self._transcribed(job, respond))
        self.set_state(TurnState.THINKING if respond else TurnState.IDLE)

    async def _transcribed(self, job: Any, respond: bool) -> None:
        try:
            transcript = await asyncio.wrap_future(job)
        except Exception as e:
            self.failed(e, "transcribing")
            self.publish(FinalTranscript("", "", time.monotonic()))
            return
        self.publish(FinalTranscript(transcript.text, transcript.language, time.monotonic()))
        text = transcript.text.strip()
        if text:
            self.pending.append(text)
        if not respond or not text:  # noise that never became words gets no answer
            if self.state is TurnState.THINKING and self.replies.current is None and self._user is None:
                self.set_state(TurnState.IDLE)
            return
        if self._creating is None or self._creating.done():  # else the response being prepared answers it too
            self.create_response()

    def _drop_utterance(self) -> None:
        if self._user is not None:
            self._user = None
            self.compute.submit(self.engines.transcriber.reset, priority=Priority.URGENT)
            if self.replies.current is None:
                self.set_state(TurnState.IDLE)

    # ---- Host of the replies -------------------------------------------------------------------------------

    def _audio_out(self, chunk: np.ndarray) -> None:
        current = self.replies.current
        self.publish(ResponseAudio(current.turn if current is not None else 0, chunk, time.monotonic()))

    def publish(self, event: Event | SessionEvent) -> None:
        if self.closed:
            return
        if len(self._queue) >= QUEUE_LIMIT:
            self._queue.popleft()  # a client that stopped reading; the server closes it at its idle timeout
        self._queue.append(event)
        self._wake.set()

    def set_state(self, new: TurnState) -> None:
        if new is not self.state:
            old, self.state = self.state, new
            self.publish(StateChanged(old, new, time.monotonic()))

    def set_playback(self, active: bool, level_dbfs: float = -120.0) -> None:
        self.vad.set_playback(active, level_dbfs)  # the client's microphone may hear its speaker

    def failed(self, exc: BaseException, what: str) -> None:
        log.error("session error while %s", what, exc_info=exc)
        self.publish(ErrorEvent(f"{what}: {type(exc).__name__}: {exc}", time.monotonic()))

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def reply_ended(self, reply: Reply) -> None:
        if self._user is None:
            self.set_state(TurnState.IDLE)


class Sessions:
    """The daemon's RealtimeBackend: headless sessions over the pipeline's engines and compute thread."""

    def __init__(self, pipeline: Pipeline, source: EngineSource, limit: int) -> None:
        self.pipeline = pipeline
        self.source = source
        self.limit = limit
        self.open: set[Session] = set()

    async def open_session(self) -> Session:
        if len(self.open) >= self.limit:
            raise AssistantError(
                f"{len(self.open)} realtime sessions are open, the most allowed; close one or raise "
                "server.realtime_sessions"
            )
        cfg = self.pipeline.cfg
        engines = await self.pipeline.compute.run(self.source.new_session, cfg.tts.voice or None)
        session = Session(cfg, engines, self.pipeline.compute, self.source, self.open.discard)
        session.set_instructions(cfg.llm.system_prompt)
        self.open.add(session)
        return session

    def default_voice(self) -> str:
        return self.pipeline.cfg.tts.voice

    def default_instructions(self) -> str:
        return self.pipeline.cfg.llm.system_prompt


if TYPE_CHECKING:  # mypy proves the pipeline side implements what the server expects

    def _conforms(pipeline: Pipeline, sessions: Sessions, session: Session) -> None:
        from assistant.server.controller import Controller, RealtimeBackend, RealtimeSession

        _c: Controller = pipeline
        _b: RealtimeBackend = sessions
        _s: RealtimeSession = session
