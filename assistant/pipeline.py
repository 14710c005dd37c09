"""Turn-taking: microphone -> VAD -> STT -> LLM -> TTS -> speaker, with barge-in and push-to-talk.

Everything here runs on the asyncio loop; every engine call goes through the compute thread. The `Pipeline` is
also the Controller the WebSocket server drives. Turn states: IDLE -> USER_SPEAKING -> THINKING ->
ASSISTANT_SPEAKING -> IDLE, each change published as `StateChanged`.

Speculative start: on SilenceStarted the final transcription and the answer begin at once; SpeechResumed
bumps the generation (cancelling them) and re-feeds the turn's audio so the same user turn goes on;
SpeechEnded confirms the turn and only then is audio written to the sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from assistant import settings
from assistant.audio.format import CAPTURE_RATE, AudioBlock, frame_samples
from assistant.bus import EventBus, Subscription
from assistant.compute import Compute, Priority
from assistant.config import Config
from assistant.errors import AudioDeviceError
from assistant.events import (
    DeviceStatus,
    ErrorEvent,
    Event,
    FalseStart,
    MuteChanged,
    PartialTranscript,
    PushToTalk,
    SilenceStarted,
    SpeculationCancelled,
    SpeculationStarted,
    SpeechEnded,
    SpeechResumed,
    SpeechStarted,
    StateChanged,
    TurnState,
)
from assistant.logs import kv
from assistant.replies import Replies
from assistant.reply import Reply, feed_transcriber
from assistant.turns import (
    AudioRing,
    AudioSink,
    AudioSource,
    Engines,
    SampleClock,
    VadLike,
    shift_event,
)
from assistant.turns import word_count as count_words

log = logging.getLogger("assistant.pipeline")

SUB_DEFAULT = 256


@dataclass(eq=False)
class UserTurn:
    """The user's utterance in progress: audio from `start_sample` is fed to the transcriber."""

    start_sample: int
    fed_to: int  # audio [start_sample, fed_to) has been submitted to the transcriber
    ptt: bool = False
    candidate: bool = False  # speech during the reply that has not yet earned a barge-in
    feeding: bool = False  # a feed job is in flight
    speculation: Reply | None = None


class Pipeline:
    """The daemon's turn-taking; the Controller of the WebSocket server. Create inside a running loop."""

    def __init__(
        self,
        cfg: Config,
        engines: Engines,
        source: AudioSource | None,
        sink: AudioSink,
        compute: Compute | None = None,
    ) -> None:
        self.cfg = cfg
        self.engines = engines
        self.source = source
        self.sink = sink
        self.compute = compute or Compute()
        self._owns_compute = compute is None
        self.vad = engines.make_vad(cfg.vad)
        self._vad_origin = 0  # capture position of the VAD's sample 0 (its positions restart at reset())
        self.state = TurnState.IDLE
        self.muted = False
        self.ptt = False
        self.device_ok = True
        self.output_ok = True
        self.restart_required: list[str] = []
        self._clock = SampleClock()
        preroll = frame_samples(CAPTURE_RATE, cfg.vad.preroll_ms)
        self._ring = AudioRing(preroll + int(max(cfg.vad.max_utterance_s, cfg.stt.max_utterance_s) * CAPTURE_RATE))
        self._user: UserTurn | None = None
        self.bus = EventBus()
        self.replies = Replies(self, cfg, engines, self.compute, sink)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    @property
    def captured_samples(self) -> int:
        """Microphone samples received so far (16 kHz)."""
        return self._ring.end

    @property
    def turn(self) -> int:
        """The number of the latest reply (speculative ones count)."""
        return self.replies.turn

    # ---- the Controller interface -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "turn": self.turn,
            "mode": self.cfg.pipeline.mode,
            "muted": self.muted,
            "ptt": self.ptt,
            "speculating": bool(self._user and self._user.speculation),
            "device_ok": self.device_ok,
            "output_ok": self.output_ok,
            "subscribers": self.bus.subscribers,
            "dropped_events": self.bus.dropped,
            "restart_required": list(self.restart_required),
        }

    async def say(self, text: str) -> None:
        """Speak `text` (no LLM, no history); returns when it has played or was interrupted."""
        await self._text_turn(speak_text=text)

    async def ask(self, text: str) -> str:
        """Answer `text` aloud as if spoken; returns the answer (the heard part when interrupted)."""
        return await self._text_turn(user_text=text)

    def interrupt(self) -> None:
        """Stop the reply now: flush playback, cancel LLM and TTS, keep the heard part in the history."""
        if self._user and self._user.speculation:
            self._cancel_speculation()
        if self.replies.current is not None:
            self.replies.barge_in()
            self.set_state(TurnState.IDLE)

    def mute(self) -> None:
        self.muted = True
        self._drop_user_turn()
        self.publish(MuteChanged(True, time.monotonic()))

    def unmute(self) -> None:
        if self.muted:
            self._reset_vad()
        self.muted = False
        self.publish(MuteChanged(False, time.monotonic()))

    def ptt_start(self) -> None:
        """Push-to-talk pressed: a user turn starts now, overriding VAD endpointing until `ptt_stop`."""
        if self.ptt:
            return
        self.ptt = True
        self.publish(PushToTalk(True, time.monotonic()))
        if self._user and self._user.speculation:
            self._cancel_speculation()
        if self.replies.current is not None:
            self.replies.barge_in()
        if self._user is None:
            start = max(0, self._clock.samples - frame_samples(CAPTURE_RATE, self.cfg.vad.preroll_ms))
            self._begin_user_turn(start, ptt=True)
        else:
            self._user.ptt, self._user.candidate = True, False
            self.set_state(TurnState.USER_SPEAKING)

    def ptt_stop(self) -> None:
        """Push-to-talk released: the user turn ends here, whatever the VAD thinks."""
        if not self.ptt:
            return
        self.ptt = False
        now = time.monotonic()
        self.publish(PushToTalk(False, now))
        self._reset_vad()  # its utterance in progress is ours; it must not end a second turn
        if self._user is not None:
            self._end_user_turn(self._clock.samples, now, now)

    def config_get(self) -> dict[str, Any]:
        return settings.public(self.cfg)

    def config_set(self, changes: dict[str, object]) -> dict[str, Any]:
        """Validate `{"section.key": value}` (settings.apply: live keys only, voices that exist), then apply."""
        new = settings.apply(self.cfg, changes, cast(settings.VoiceCatalog, self.engines.tts))
        self.restart_required = sorted({*self.restart_required, *settings.at_restart(changes)})
        if new.vad != self.cfg.vad:
            self._reset_vad(self.engines.make_vad(new.vad))
        if new.llm.system_prompt != self.cfg.llm.system_prompt:
            self.compute.submit(self.engines.chat.set_system_prompt, new.llm.system_prompt)
        if new.logging.level != self.cfg.logging.level:
            logging.getLogger("assistant").setLevel(new.logging.level.upper())
        self.cfg = new
        return self.config_get()

    def history_get(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(m) for m in list(self.engines.chat.history)]

    def history_reset(self) -> None:
        self.interrupt()
        self.compute.submit(self.engines.chat.reset, priority=Priority.URGENT)

    def subscribe(self, maxsize: int = SUB_DEFAULT) -> Subscription:
        return self.bus.subscribe(maxsize)

    # ---- running ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Read the source until cancelled; a lost device is retried every `audio.device_retry_s`."""
        if self.source is None:
            await asyncio.Event().wait()  # headless without a microphone: text turns only
        assert self.source is not None
        while True:
            try:
                block = await self.source.read()
            except AudioDeviceError as e:
                if self.device_ok:
                    self.device_ok = False
                    log.warning("microphone lost", extra=kv(error=str(e), retry_s=self.cfg.audio.device_retry_s))
                    self.publish(DeviceStatus("input", False, str(e), time.monotonic()))
                    self._drop_user_turn()
                    self._reset_vad()  # an utterance cut by the loss must not run on into the next one
                await asyncio.sleep(self.cfg.audio.device_retry_s)
                continue
            if not self.device_ok:
                self.device_ok = True
                self.publish(DeviceStatus("input", True, "microphone is back", time.monotonic()))
            try:
                self.on_audio(block.samples if isinstance(block, AudioBlock) else block)
            except Exception as e:  # a bug or a bad block must not stop the daemon listening
                self.failed(e, "handling microphone audio")
                self._drop_user_turn()

    async def aclose(self) -> None:
        """Stop everything: cancel the turn, flush playback, end the compute thread."""
        if self._closed:
            return
        self._closed = True
        self.replies.generation.bump()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        with contextlib.suppress(Exception):
            self.sink.flush()
        self.bus.close()
        if self._owns_compute:
            await asyncio.to_thread(self.compute.close, 1.0)

    # ---- microphone path ----------------------------------------------------------------------------------

    def on_audio(self, block: np.ndarray) -> None:
        """One captured int16 16 kHz block: keep it, feed the user turn, run the VAD."""
        self._clock.advance(len(block), time.monotonic())
        if self.muted:
            self._ring.append(np.zeros(len(block), dtype=np.int16))  # positions stay aligned; no audio kept
            return
        self._ring.append(block)
        if self._user is not None:
            self._feed()
        for raw in self.vad.feed(block):
            ev = shift_event(raw, self._vad_origin)
            if self.cfg.pipeline.mode == "push_to_talk":
                continue  # the VAD runs (its positions stay in step) but only the hotkey makes turns
            self.publish(ev)
            if not self.ptt:  # the hotkey overrides endpointing while held
                self._on_vad(ev)

    def _reset_vad(self, vad: VadLike | None = None) -> None:
        """A fresh VAD state (or a new VAD); its sample positions count from here."""
        if vad is None:
            self.vad.reset()
        else:
            self.vad = vad
        self._vad_origin = self._ring.end

    def _on_vad(self, ev: SpeechStarted | SilenceStarted | SpeechResumed | SpeechEnded) -> None:
        user = self._user
        if isinstance(ev, SpeechStarted):
            if user is None:
                self._speech_started(ev.start_sample)
        elif user is None:
            return
        elif isinstance(ev, SilenceStarted):
            if self.cfg.pipeline.speculative and not user.candidate and user.speculation is None:
                self._speculate()
        elif isinstance(ev, SpeechResumed):
            if user.speculation is not None:
                self._cancel_speculation()
        elif isinstance(ev, SpeechEnded):
            self._end_user_turn(ev.end_sample, self._clock.time_of(ev.end_sample), ev.time)

    def _speech_started(self, start_sample: int) -> None:
        if self.replies.current is not None:
            if not self.cfg.pipeline.barge_in:
                return
            if self.cfg.pipeline.barge_in_min_words == 0:
                self.replies.barge_in()
            else:
                self._begin_user_turn(start_sample, candidate=True)
                return
        self._begin_user_turn(start_sample)

    def _begin_user_turn(self, start_sample: int, ptt: bool = False, candidate: bool = False) -> None:
        self._user = UserTurn(start_sample, start_sample, ptt=ptt, candidate=candidate)
        self.compute.submit(self.engines.transcriber.reset, priority=Priority.URGENT)
        self._feed()
        if not candidate:
            self.set_state(TurnState.USER_SPEAKING)

    def _feed(self, force: bool = False) -> None:
        if self._user is not None:
            feed_transcriber(self._user, self._ring, self.compute, self.engines, self._fed, force)

    def _fed(self, user: UserTurn, fut: Any) -> None:
        user.feeding = False
        if user is not self._user:
            return
        if fut.cancelled():
            return
        if (exc := fut.exception()) is not None:
            self.failed(exc, "transcribing")
            self._drop_user_turn()
            return
        partial = fut.result()
        if partial is not None:
            self.publish(PartialTranscript(partial, time.monotonic()))
            if user.candidate and count_words(partial) >= self.cfg.pipeline.barge_in_min_words:
                self._promote_candidate(user)
        self._feed()

    def _promote_candidate(self, user: UserTurn) -> None:
        user.candidate = False
        if self.replies.current is not None:
            self.replies.barge_in()
        self.set_state(TurnState.USER_SPEAKING)

    def _speculate(self) -> None:
        """Silence started: transcribe and answer now, play nothing until SpeechEnded confirms the turn."""
        assert self._user is not None
        self._feed(force=True)
        reply = self.replies.new(confirmed=False)
        self._user.speculation = reply
        self.publish(SpeculationStarted(reply.turn, time.monotonic()))

    def _cancel_speculation(self) -> None:
        """Speech resumed: drop the speculative answer and give the transcriber the whole turn again."""
        user = self._user
        assert user is not None and user.speculation is not None
        reply, user.speculation = user.speculation, None
        self.replies.cancel(reply, heard=None)
        self.publish(SpeculationCancelled(reply.turn, time.monotonic()))
        # The speculative finalize() reset the transcriber: feed it the utterance from its start again.
        self.compute.submit(self.engines.transcriber.reset, priority=Priority.URGENT)
        user.fed_to = user.start_sample
        self._feed(force=True)

    def _end_user_turn(self, end_sample: int, speech_end: float, endpoint: float) -> None:
        user = self._user
        assert user is not None
        self._user = None
        if user.candidate:
            self.spawn(self._judge_candidate(user, end_sample, speech_end, endpoint))
            return
        if user.speculation is not None and user.speculation.result.done():  # it failed: start afresh
            user.speculation = None
            self.compute.submit(self.engines.transcriber.reset, priority=Priority.URGENT)
            user.fed_to = user.start_sample
        self._feed_rest(user)
        reply = user.speculation or self.replies.new(confirmed=False)
        reply.trace.speech_end, reply.trace.endpoint = speech_end, endpoint
        self.set_state(TurnState.THINKING)
        self.replies.confirm(reply)

    def _feed_rest(self, user: UserTurn) -> None:
        self._user = user
        self._feed(force=True)
        self._user = None

    async def _judge_candidate(self, user: UserTurn, end_sample: int, speech_end: float, endpoint: float) -> None:
        """Speech during the reply ended before earning a barge-in: interrupt only if it has enough words."""
        self._feed_rest(user)
        transcript = await self.compute.run(self.engines.transcriber.finalize, priority=Priority.URGENT)
        if count_words(transcript.text) < self.cfg.pipeline.barge_in_min_words:
            self.publish(FalseStart(time.monotonic()))
            return
        if self.replies.current is not None:
            self.replies.barge_in()
        reply = self.replies.new(confirmed=False, transcript=transcript)
        reply.trace.speech_end, reply.trace.endpoint = speech_end, endpoint
        self.set_state(TurnState.THINKING)
        self.replies.confirm(reply)

    def _drop_user_turn(self) -> None:
        user, self._user = self._user, None
        if user is None:
            return
        if user.speculation is not None:
            self.replies.cancel(user.speculation, heard=None)
        if not user.candidate and self.replies.current is None:
            self.set_state(TurnState.IDLE)

    # ---- replies ------------------------------------------------------------------------------------------

    async def _text_turn(self, user_text: str | None = None, speak_text: str | None = None) -> str:
        if self.replies.current is not None:
            self.interrupt()
        reply = self.replies.new(confirmed=False, user_text=user_text, speak_text=speak_text)
        self.set_state(TurnState.THINKING)
        self.replies.confirm(reply)
        return await asyncio.shield(reply.result)

    def reply_ended(self, reply: Reply) -> None:
        """The confirmed reply finished (played out or failed): back to listening, or to the user's turn."""
        user = self._user
        if user is not None and user.candidate:  # the user talked over the end of the reply: a normal turn
            user.candidate = False
            self.set_state(TurnState.USER_SPEAKING)
        elif user is None:
            self.set_state(TurnState.IDLE)

    def device_status(self, status: DeviceStatus) -> None:
        """The speaker (or microphone) was lost or is back: tell clients; without a speaker, replies are text."""
        self.publish(status)
        if status.kind != "output" or status.ok == self.output_ok:
            return
        self.output_ok = self.replies.audio_ok = status.ok
        if not status.ok and self.replies.current is not None:
            self.replies.speaker_lost()
            if self._user is None:
                self.set_state(TurnState.IDLE)

    def set_playback(self, active: bool, level_dbfs: float = -120.0) -> None:
        self.vad.set_playback(active, level_dbfs)

    # ---- plumbing -----------------------------------------------------------------------------------------

    def set_state(self, new: TurnState) -> None:
        if new is not self.state:
            old, self.state = self.state, new
            self.publish(StateChanged(old, new, time.monotonic()))

    def publish(self, event: Event) -> None:
        self.bus.publish(event)

    def failed(self, exc: BaseException, what: str) -> None:
        log.error("error while %s; back to listening", what, exc_info=exc)
        self.publish(ErrorEvent(f"{what}: {type(exc).__name__}: {exc}", time.monotonic()))
        if self.replies.current is None and self._user is None:
            self.set_state(TurnState.IDLE)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
