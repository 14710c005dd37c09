"""The life of the assistant's replies: start, hold while speculative, play, finish, or cut short on barge-in.

At most one reply is confirmed (`current`) at a time. Cancelling bumps the generation, so the cancelled reply's
next compute step never runs, then settles it in the background: the LLM generator is closed on the compute
thread and the chat history records exactly what was heard (or nothing, for a dropped speculation). A new reply
waits for that settling before it asks the LLM, so the history is always in order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import time
from collections.abc import Coroutine
from typing import Any, Protocol

import numpy as np

from assistant.compute import Compute, Generation, Priority, Stale
from assistant.config import Config
from assistant.events import (
    BargeIn,
    DeviceStatus,
    Event,
    FinalTranscript,
    ResponseDone,
    ResponseTextDelta,
    TurnState,
)
from assistant.logs import kv
from assistant.reply import Reply, pump, settle_answer
from assistant.turns import AudioSink, CountsUnderruns, Engines, TimedSink, TranscriptLike, TurnTrace, level_dbfs

log = logging.getLogger("assistant.replies")

PLAYBACK_STALL_S = 2.0  # a sink that plays nothing for this long is given up on (a gone WebSocket client)


class Host(Protocol):
    """What the replies need from the pipeline."""

    def publish(self, event: Event) -> None: ...
    def set_state(self, new: TurnState) -> None: ...
    def set_playback(self, active: bool, level_dbfs: float = -120.0) -> None: ...
    def failed(self, exc: BaseException, what: str) -> None: ...
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...
    def reply_ended(self, reply: Reply) -> None: ...


class Replies:
    def __init__(self, host: Host, cfg: Config, engines: Engines, compute: Compute, sink: AudioSink) -> None:
        self.host = host
        self.cfg = cfg
        self.engines = engines
        self.compute = compute
        self.sink = sink
        self.generation = Generation()
        self.turn = 0
        self.current: Reply | None = None  # the confirmed reply in flight
        self.audio_ok = True  # False while the speaker is lost: replies are text only
        self._settling: asyncio.Task[None] | None = None  # the cancelled reply being recorded
        self._underruns_at: dict[int, int] = {}  # turn -> the sink's underrun count when its audio started

    def new(
        self,
        confirmed: bool = False,
        user_text: str | None = None,
        speak_text: str | None = None,
        transcript: TranscriptLike | None = None,
    ) -> Reply:
        """Start a reply now (to the user's speech when no text is given); it plays once confirmed."""
        self.turn += 1
        now = time.monotonic()
        reply = Reply(
            self.turn,
            self.generation.ticket(),
            TurnTrace(self.turn, now, now),
            asyncio.Event(),
            asyncio.get_running_loop().create_future(),
            user_text=transcript.text if transcript is not None else user_text,
            speak_text=speak_text,
            transcript=transcript,
        )
        if confirmed:
            self.confirm(reply)
        reply.task = self.host.spawn(self._run(reply))
        return reply

    def confirm(self, reply: Reply) -> None:
        """The turn is real: the reply may play (cutting short any other). Held deltas and audio go out now."""
        if self.current is not None and self.current is not reply:
            self.barge_in()
        self.current = reply
        reply.confirmed.set()
        if not self.audio_ok:
            self.host.publish(DeviceStatus("output", False, "no speaker: this reply is text only", time.monotonic()))
        if reply.transcript is not None:
            self.host.publish(FinalTranscript(reply.transcript.text, reply.transcript.language, time.monotonic()))
        for delta in reply.held_deltas:
            self.host.publish(ResponseTextDelta(reply.turn, delta, time.monotonic()))
        reply.held_deltas.clear()
        for chunk in reply.held_audio:
            self._play(reply, chunk)
        reply.held_audio.clear()

    def barge_in(self) -> None:
        """The user interrupts: flush playback, cancel LLM and TTS, trim the answer to what was heard."""
        reply = self.current
        if reply is None:
            return
        played = self.sink.played_samples if reply.audio_started else 0
        self._mark_played(reply)
        self.sink.flush()
        heard = reply.heard.heard(played)
        rate = self.engines.tts.sample_rate
        self.host.publish(BargeIn(reply.turn, round(played * 1000.0 / rate, 1), heard, time.monotonic()))
        self.cancel(reply, heard=heard)

    def speaker_lost(self) -> None:
        """The speaker went away (the sink dropped what it held): end the reply in flight as heard so far."""
        reply = self.current
        if reply is None:
            return
        played = self.sink.played_samples if reply.audio_started else 0
        self._mark_played(reply)
        self.cancel(reply, heard=reply.heard.heard(played))

    def cancel(self, reply: Reply, heard: str | None) -> None:
        """Bump the generation (the reply's next step never runs) and settle it in the background."""
        self.generation.bump()
        if reply.task is not None:
            reply.task.cancel()
        if self.current is reply:
            self.current = None
            self.host.set_playback(False)
        # Submitted now, so it runs before any chat job submitted after this call (e.g. a history reset).
        job = self.compute.submit(settle_answer, reply, self.engines.chat, heard, priority=Priority.URGENT)
        self._settling = self.host.spawn(self._settle_cancelled(reply, heard, job))

    # ---- hooks called by the pump ------------------------------------------------------------------------

    def on_transcript(self, reply: Reply) -> None:
        if reply.confirmed.is_set() and reply.transcript is not None:
            self.host.publish(FinalTranscript(reply.transcript.text, reply.transcript.language, time.monotonic()))

    def on_delta(self, reply: Reply, delta: str) -> None:
        if reply.confirmed.is_set():
            self.host.publish(ResponseTextDelta(reply.turn, delta, time.monotonic()))
        else:
            reply.held_deltas.append(delta)

    def on_reply_audio(self, reply: Reply, chunk: np.ndarray) -> None:
        if reply.confirmed.is_set():
            self._play(reply, chunk)
        else:
            reply.held_audio.append(chunk)

    # ---- inside ----------------------------------------------------------------------------------------------

    def _play(self, reply: Reply, chunk: np.ndarray) -> None:
        if not self.audio_ok:
            return  # no speaker: the reply goes on as text
        if not reply.audio_started:
            reply.audio_started = True
            self.sink.flush()  # played_samples and the DAC time now count this reply
            if isinstance(self.sink, CountsUnderruns):
                self._underruns_at[reply.turn] = self.sink.underruns
            self.host.set_state(TurnState.ASSISTANT_SPEAKING)
        self.sink.write(chunk)
        reply.samples_written += len(chunk)
        self.host.set_playback(True, level_dbfs(chunk))

    async def _run(self, reply: Reply) -> None:
        try:
            if self._settling is not None:
                await self._settling  # the interrupted answer is recorded before a new one starts
            await pump(reply, self.engines, self.compute, self.cfg, self)
            await reply.confirmed.wait()
            await self._wait_played(reply)
            if reply.records_history:
                await self.compute.run(self.engines.chat.finish_turn, None, priority=Priority.URGENT)
            self._finish(reply, reply.answer if reply.gen else reply.speak_text or "", interrupted=False)
        except (asyncio.CancelledError, Stale):
            return  # the canceller settles the turn
        except Exception as e:
            self.host.failed(e, f"turn {reply.turn}")
            heard = reply.heard.heard(self.sink.played_samples if reply.audio_started else 0)
            with contextlib.suppress(Exception):
                self.sink.flush()
            await self._settle(reply, heard if reply.gen else None)
            self._finish(reply, heard, interrupted=True)

    async def _wait_played(self, reply: Reply) -> None:
        """Until the sink has played every sample of the reply (sleeping the known remaining duration)."""
        rate = self.engines.tts.sample_rate
        last, since = -1, time.monotonic()
        while (left := reply.samples_written - self.sink.played_samples) > 0:
            played = self.sink.played_samples
            if played != last:
                last, since = played, time.monotonic()
            elif time.monotonic() - since > PLAYBACK_STALL_S:
                log.warning("playback stalled; not waiting for the rest", extra=kv(left_samples=left))
                return
            await asyncio.sleep(max(left / rate, 0.01))

    def _finish(self, reply: Reply, text: str, interrupted: bool) -> None:
        if reply.result.done():
            return
        reply.result.set_result(text)
        unanswered = reply.transcript is not None and not reply.transcript.text.strip()  # nothing was said
        if reply.confirmed.is_set() and not unanswered:
            self.host.publish(ResponseDone(reply.turn, text, interrupted, time.monotonic()))
        self._mark_played(reply)
        trace = reply.trace.trace()
        if reply.turn in self._underruns_at and isinstance(self.sink, CountsUnderruns):
            trace.extra["playback_underruns"] = self.sink.underruns - self._underruns_at.pop(reply.turn)
        log.info("turn latency", extra=kv(**{k: v for k, v in dataclasses.asdict(trace).items() if k != "extra"}))
        self.host.publish(trace)
        if self.current is reply:
            self.current = None
            self.host.set_playback(False)
            self.host.reply_ended(reply)
        self.compute.clear_cache()

    def _mark_played(self, reply: Reply) -> None:
        if reply.audio_started and isinstance(self.sink, TimedSink):
            if (t := self.sink.first_sample_dac_time) is not None:
                reply.trace.mark("first_sample_played", t)

    async def _settle_cancelled(self, reply: Reply, heard: str | None, job: concurrent.futures.Future[None]) -> None:
        try:
            await asyncio.wrap_future(job)
        except Exception as e:
            self.host.failed(e, "recording the interrupted answer")
        if heard is not None:
            self._finish(reply, heard, interrupted=True)
        elif not reply.result.done():
            reply.result.set_result("")

    async def _settle(self, reply: Reply, heard: str | None) -> None:
        """Stop the answer on the compute thread and record the heard part (None: speculative, drop it)."""
        try:
            await self.compute.run(settle_answer, reply, self.engines.chat, heard, priority=Priority.URGENT)
        except Exception as e:
            self.host.failed(e, "recording the interrupted answer")
