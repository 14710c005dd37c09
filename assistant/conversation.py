"""The one asyncio driver: runs a turn core (assistant/turns.py) over an audio source and sink.

A `Conversation` feeds the core its inputs and executes the actions it returns on the engines, every engine call
on the compute thread. The daemon holds one over the microphone and speaker (its control channel's view,
config and history included, is daemon.DaemonControl); each `/v1/realtime` connection holds one over its client
sink (a sessions.RealtimeSession, with what the client sets). Only the core's `Policy` differs between them. Not
turn-taking, so elsewhere: config -> policy (policies.py), the tools and a Realtime client's function calls
(tools/session.py), the history's operations (llm.py, context.py), the wake-phrase gate (wake.py); due reminders
come in through `say` like any client (tools/timers.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import time
from asyncio import wrap_future
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast

import numpy as np

from assistant import settings, turns
from assistant.audio.format import CAPTURE_RATE, SILENT_DBFS, AudioBlock
from assistant.audio.sinks import AudioSink, AudioSource, ClientSink, played_out
from assistant.bus import EventBus, Subscription
from assistant.compute import Compute, Priority, Stale
from assistant.config import Config
from assistant.context import ChatContext
from assistant.endofturn import EndOfTurnPolicy, vad_settings
from assistant.engines import Engines, VadLike
from assistant.errors import AssistantError, AudioDeviceError, InputError
from assistant.events import (
    BargeIn,
    DeviceStatus,
    ErrorEvent,
    Event,
    ResponseAudio,
    SessionEvent,
)
from assistant.logs import kv
from assistant.memory import Memory
from assistant.policies import daemon_policy, end_of_turn, make_canceller, realtime_policy, ring_samples
from assistant.reply import Reply, TurnTrace, pump, settle_answer
from assistant.stt.types import Transcript
from assistant.tools.calls import AUTO, ToolChoice
from assistant.tools.registry import Toolbox
from assistant.tools.session import ConversationTools, offer_tools

log = logging.getLogger("assistant.conversation")

SUB_DEFAULT = 256
KEEP_REPLIES = 16  # finished replies a Realtime client may still truncate (OpenAI clients truncate the latest)


class Conversation:
    """One conversation: the daemon's (seen through a `DaemonControl`) or a Realtime client's (a `RealtimeSession`).

    Create inside a running loop. `realtime` gives the Realtime policy and a client sink whose audio goes out
    as `ResponseAudio` events on the bus.
    """

    def __init__(
        self,
        cfg: Config,
        engines: Engines,
        source: AudioSource | None,
        sink: AudioSink | None,
        compute: Compute | None = None,
        *,
        realtime: bool = False,
        toolbox: Toolbox | None = None,
        memory: Memory | None = None,
    ) -> None:
        self.cfg = cfg
        self.engines = engines
        self.source = source
        self.compute = compute or Compute()
        self._owns_compute = compute is None
        self.sink: AudioSink = sink or ClientSink(engines.tts.sample_rate)
        self.vad: VadLike = engines.make_vad(vad_settings(cfg.vad, cfg.endofturn))
        policy = realtime_policy(cfg, True, True, True) if realtime else daemon_policy(cfg)
        self.core = turns.TurnCore(policy, end_of_turn(cfg, engines.score_turn), ring_samples(cfg))
        self.tools = ConversationTools(toolbox)
        self.context = ChatContext(
            engines.chat, self.compute, cfg.llm.system_prompt, cfg.tools.timezone, memory, self.failed
        )
        self.device_ok = True
        self.output_ok = True  # False while the speaker is lost: replies are text only
        self.bus: EventBus[SessionEvent] = EventBus()
        self._replies: dict[int, Reply] = {}  # replies in flight
        self.kept: OrderedDict[int, Reply] = OrderedDict()  # finished, for truncate_response
        self._settling: asyncio.Task[None] | None = None  # the cancelled reply being recorded
        # the speaker's own voice out of the microphone before VAD and STT (daemon only: clients cancel their own)
        self.echo = None if realtime else make_canceller(cfg, self.sink, engines.tts.sample_rate)
        self._stt_final = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._tick: asyncio.TimerHandle | None = None
        self._tick_at = 0.0

    # ---- driving the core -----------------------------------------------------------------------------------

    def _apply(self, inp: turns.Input) -> None:
        for action in self.core.handle(inp):
            self._do(action)
        end = self.core.follow_up_ends()
        if end is not None and end != self._tick_at and not self._closed:
            # The wake phrase's follow-up window closes with no input of its own: a timer tells the core.
            if self._tick is not None:
                self._tick.cancel()
            self._tick_at = end
            delay = max(end - time.monotonic(), 0.0) + 0.01
            self._tick = asyncio.get_running_loop().call_later(delay, self.command, "tick")

    def _do(self, action: turns.Action) -> None:
        match action:
            case turns.RunVad(samples, echo, linear):
                self.vad.set_playback(echo is not None, SILENT_DBFS if echo is None else echo, linear)
                for ev in self.vad.feed(samples):
                    self._apply(ev)
            case turns.ResetVad(origin):
                self.vad.reset(origin)
            case turns.ResetTranscriber():
                self.compute.submit(self.engines.transcriber.reset, priority=Priority.URGENT)
            case turns.Feed(utt, audio):
                fed = self.compute.submit(self.engines.transcriber.feed, audio, priority=Priority.URGENT)
                self.spawn(self._await_job(wrap_future(fed), lambda partial, e, now: turns.Fed(utt, partial, now, e)))
            case turns.Finalize(job):
                final = self.compute.submit(self.engines.transcriber.finalize, priority=Priority.URGENT)
                self.spawn(self._await_job(wrap_future(final), lambda tr, e, now: self._transcribed(job, tr, e, now)))
            case turns.ScoreTurn(job, audio) if self.engines.score_turn is not None:
                # onnxruntime on a worker thread of its own: off the loop and the MLX thread
                score = asyncio.to_thread(self.engines.score_turn, audio)
                self.spawn(self._await_job(score, lambda p, e, now: turns.Scored(job, float(p or 0.0), now, e)))
            case turns.StartReply():
                self._start(action)
            case turns.ConfirmReply(turn, speech_end, endpoint):
                if (reply := self._replies.get(turn)) is not None:
                    reply.confirm(speech_end, endpoint)
                    if not self.output_ok:
                        self.publish(
                            DeviceStatus("output", False, "no speaker: this reply is text only", time.monotonic())
                        )
            case turns.DropReply(turn):
                if (reply := self._replies.get(turn)) is not None:
                    self._cancel(reply, heard=None)
            case turns.InterruptReply(turn):
                if (reply := self._replies.get(turn)) is not None:
                    self._barge_in(reply)
            case ResponseAudio():
                self._play(action)
            case turns.FlushAudio():
                self._flush()
            case turns.Publish(event):
                self.publish(event)

    async def _await_job(
        self, job: Awaitable[Any], answer: Callable[[Any, BaseException | None, float], turns.Input]
    ) -> None:
        """When the engine's `job` ends, the core gets `answer(result, error, now)` (result None and the error logged
        when it failed)."""
        try:
            result, err = await job, None
        except Exception as e:
            log.error("an engine job of the turn failed", exc_info=e)
            result, err = None, e
        if not self._closed:
            self._apply(answer(result, err, time.monotonic()))

    def _transcribed(
        self, job: int, tr: Transcript | None, error: BaseException | None, now: float
    ) -> turns.Transcribed:
        self._stt_final = now
        return turns.Transcribed(job, "" if tr is None else tr.text, "" if tr is None else tr.language, now, error)

    # ---- the microphone -------------------------------------------------------------------------------------

    def on_audio(self, block: AudioBlock | np.ndarray) -> None:
        """One captured int16 16 kHz mono block of any length, judged by the time it was recorded (a bare array was
        recorded just now: a Realtime client's clock runs with ours); InputError for other audio."""
        now = time.monotonic()
        if not isinstance(block, AudioBlock):  # a source without capture times: it was recorded just now
            block = AudioBlock(block, now - len(block) / CAPTURE_RATE)
        if block.samples.dtype != np.int16 or block.samples.ndim != 1:
            raise InputError(f"audio must be int16 mono, got {block.samples.dtype} with shape {block.samples.shape}")
        if self.echo is not None:
            block = self.echo.process(block)
            if not len(block.samples):
                return  # less than one 10 ms frame so far
        # the echo level the block may hold: with a canceller, what is left of it after cancelling
        level = self.sink.level_at(block.t) if self.echo is None else self.echo.echo_dbfs(block.t, len(block.samples))
        # the room is learned from a reply's echo; no speaker, no echo to hear the user over
        known = self.echo is None or not self.output_ok or self.echo.echo_return_db is not None
        linear = self.echo is not None and self.echo.linear_at(block.t, len(block.samples))
        self._apply(turns.AudioIn(block.samples, block.t, now, level, self.sink.last_sample_time, known, linear))

    async def warmup(self) -> None:
        """Let every engine compile the shapes it will use (on the compute thread); call before listening."""
        began = time.monotonic()
        await self.compute.run(self.engines.warmup)
        log.info("engines warm", extra=kv(warmup_s=round(time.monotonic() - began, 2)))
        await self.prepare()

    async def prepare(self) -> None:
        """Offer the tools, put the date in the system prompt, load the stored history."""
        if self.tools.toolbox is not None:
            await self.compute.run(self.engines.chat.set_tools, self.tools.toolbox.schemas())
        await self.context.start(dated=self.tools.toolbox is not None)

    async def run(self) -> None:
        """Read the source until cancelled; a lost device is retried every `audio.device_retry_s`."""
        if self.source is None:
            await asyncio.Event().wait()  # headless without a microphone: text turns and Realtime only
        assert self.source is not None
        while True:
            try:
                block = await self.source.read()
            except AudioDeviceError as e:
                if self.device_ok:
                    self.device_ok = False
                    log.warning("microphone lost", extra=kv(error=str(e), retry_s=self.cfg.audio.device_retry_s))
                    self.publish(DeviceStatus("input", False, str(e), time.monotonic()))
                    self.command("clear")  # the cut utterance must not run into the next
                await asyncio.sleep(self.cfg.audio.device_retry_s)
                continue
            if not self.device_ok:
                self.device_ok = True
                self.publish(DeviceStatus("input", True, "microphone is back", time.monotonic()))
            try:
                self.on_audio(block)
            except Exception as e:  # a bug or a bad block must not stop the daemon listening
                self.failed(e, "handling microphone audio")
                self.command("clear")

    # ---- replies --------------------------------------------------------------------------------------------

    def _start(self, a: turns.StartReply) -> None:
        reply = Reply(a.turn, TurnTrace(a.turn, a.speech_end, a.endpoint), a.responder, epoch=self.context.epoch)
        reply.trace.extra["backlog_ms"] = a.backlog_ms
        answer = self.tools.reply_starts(a.turn, a.responder.speak_text is None)
        if answer is not None and a.responder.continues:  # the client's outputs: the calling answer goes on
            reply.outputs, reply.said = answer.outputs, answer.said
        elif answer is not None:  # a new user turn: that answer is recorded as said (before this reply's first job)
            self.compute.submit(self.engines.chat.finish_turn, answer.said, priority=Priority.URGENT)
        if a.responder.user_text is not None and a.responder.speak_text is None and self._stt_final >= a.speech_end:
            # a transcript of this turn (a text turn's speech_end is its request: an older transcript is not its)
            reply.trace.mark("stt_final", self._stt_final)
        self._replies[a.turn] = reply
        reply.task = self.spawn(self._run_reply(reply))

    async def _run_reply(self, reply: Reply) -> None:
        try:
            if self._settling is not None:  # the interrupted answer is recorded before a new one starts;
                await asyncio.shield(self._settling)  # shielded: cutting this reply must not cancel that record
            await self.context.before_reply(reply.responder)
            functions, hand_off = self.tools.for_reply(reply.turn)
            if functions is not None:
                await self.compute.run(self.engines.chat.set_tools, *functions)
            async for produced in pump(reply, self.engines, self.compute, self.cfg, self.tools.toolbox, hand_off):
                self._apply(produced)
            await reply.confirmed.wait()
            await played_out(self.sink, reply.samples_written, self.engines.tts.sample_rate)
            if reply.handed_off:  # the answer stays open for the client's outputs
                for call in self.tools.handed_off(reply.turn, reply.handed_off, reply.said, time.monotonic()):
                    self.publish(call)
            elif reply.gen is not None:
                await self.compute.run(self.engines.chat.finish_turn, None, priority=Priority.URGENT)
                await self.context.remember(reply.epoch)
            self._finish(reply, reply.answer if reply.gen else reply.responder.speak_text or "", False)
        except (asyncio.CancelledError, Stale):
            return  # the canceller settles the reply
        except Exception as e:
            # bad input is the user's to fix (the message says how): no traceback for it in the log
            trace = None if isinstance(e, InputError) else e
            log.error("error in turn %d; back to listening: %s", reply.turn, e, exc_info=trace)
            heard = reply.heard_text(self.sink.played_samples) if reply.confirmed.is_set() else None
            if heard is not None:
                with contextlib.suppress(Exception):
                    self._flush()
            job = self.compute.submit(settle_answer, reply, self.engines.chat, heard, priority=Priority.URGENT)
            await self._settle(reply, heard, job, e)

    def _play(self, audio: ResponseAudio) -> None:
        reply = self._replies.get(audio.turn)
        if reply is None or not self.output_ok:
            return  # no speaker: the reply is text only
        underruns = self.sink.underruns  # before this audio: the sink ran dry before it, not in it
        self.sink.write(audio.audio)
        if isinstance(self.sink, ClientSink):  # a Realtime client plays what its events carry
            self.publish(audio)
        if self.echo is not None:
            self.echo.played(audio.audio)  # the canceller's reference: exactly what went to the speaker
        reply.wrote(len(audio.audio), underruns)

    def _flush(self) -> None:
        """Drop the speaker's queued audio: its played position restarts, and so does the echo reference."""
        self.sink.flush()
        if self.echo is not None:
            self.echo.new_run()

    def _barge_in(self, reply: Reply) -> None:
        played = self.sink.played_samples if reply.audio_started else 0
        reply.played_from(self.sink.first_sample_dac_time)
        if reply.audio_started:
            self._flush()
        heard = reply.heard_text(played)
        rate = self.engines.tts.sample_rate
        self.publish(BargeIn(reply.turn, round(played * 1000.0 / rate, 1), heard, time.monotonic()))
        self._cancel(reply, heard)

    def _cancel(self, reply: Reply, heard: str | None) -> None:
        """Bump the reply's generation (its next step never runs) and settle it in the background."""
        self._stop(reply)
        if reply.task is not None:
            reply.task.cancel()
        # Submitted now, so it runs before any chat job submitted after this call (e.g. a history reset).
        job = self.compute.submit(settle_answer, reply, self.engines.chat, heard, priority=Priority.URGENT)
        self._settling = self.spawn(self._settle(reply, heard, job))

    def _stop(self, reply: Reply) -> None:
        """The reply's next step never runs (its generation is bumped); a network LLM's request in flight is
        closed now (thread-safe), so a step blocked on it ends too."""
        reply.ticket.counter.bump()
        if reply.gen is not None and getattr(self.engines.chat, "blocks_on_network", False):
            self.engines.chat.cancel()  # type: ignore[attr-defined]

    async def _settle(
        self, reply: Reply, heard: str | None, job: concurrent.futures.Future[None], error: BaseException | None = None
    ) -> None:
        """After the answer is recorded (`job`): a dropped reply (heard None, no error) ends untold; else it ends
        as heard, or failed with `error`."""
        try:
            await asyncio.wrap_future(job)
        except Exception as e:
            self.failed(e, "recording the interrupted answer")
        if heard is None and error is None:
            self._replies.pop(reply.turn, None)
            if not reply.result.done():
                reply.result.set_result("")
            return
        if heard is not None and reply.gen is not None:
            await self.context.remember(reply.epoch)
        self._finish(reply, heard or "", True, error)

    def _finish(self, reply: Reply, text: str, interrupted: bool, error: BaseException | None = None) -> None:
        self._replies.pop(reply.turn, None)
        if reply.result.done():
            return
        reply.result.set_result(text)
        self.kept[reply.turn] = reply
        while len(self.kept) > KEEP_REPLIES:
            self.kept.popitem(last=False)
        reply.played_from(self.sink.first_sample_dac_time)
        if reply.audio_started:
            reply.trace.extra["playback_underruns"] = float(self.sink.underruns - reply.underruns_at)
        trace = reply.trace.trace()
        log.info("turn latency", extra=kv(**{k: v for k, v in dataclasses.asdict(trace).items() if k != "extra"}))
        self._apply(turns.ReplyDone(reply.turn, text, interrupted, time.monotonic(), error, trace))
        self.context.after_reply(reply.responder)
        if (functions := self.tools.reply_done(reply.turn)) is not None:  # response.create's were for it alone
            self.compute.submit(self.engines.chat.set_tools, *functions, priority=Priority.URGENT)
        self.compute.clear_cache()

    def device_status(self, status: DeviceStatus) -> None:
        """The speaker (or microphone) was lost or is back: tell clients; without a speaker, replies are text."""
        self.publish(status)
        if status.kind != "output" or status.ok == self.output_ok:
            return
        self.output_ok = status.ok
        current = self.core.current
        reply = self._replies.get(current.turn) if current is not None else None
        if not status.ok and reply is not None:  # the sink dropped what it held: the reply ends as heard so far
            reply.played_from(self.sink.first_sample_dac_time)
            self._cancel(reply, reply.heard_text(self.sink.played_samples))

    # ---- the turn's inputs from the control surfaces (server/controller.py states the contracts) ------------

    async def say(self, text: str) -> None:
        """Speak `text` (no LLM, no history); returns when it has played or was interrupted."""
        await self._text_turn(turns.CreateResponse(time.monotonic(), turns.Responder(speak_text=text)))

    async def ask(self, text: str) -> str:
        """Answer `text` aloud as if spoken; returns the answer (the heard part when interrupted)."""
        return await self._text_turn(turns.CreateResponse(time.monotonic(), turns.Responder(text)))

    async def _text_turn(self, create: turns.CreateResponse) -> str:
        self._apply(create)
        return await asyncio.shield(self._replies[self.core.turn].result)

    async def quiet(self) -> None:
        """Until no reply is in flight (a reminder waits for the answer in progress)."""
        while self._replies:
            await asyncio.wait([r.result for r in self._replies.values()])

    def command(self, kind: turns.CommandKind) -> None:
        """Apply a command now (see `turns.Command`): an interrupt flushes playback, cancels LLM and TTS and
        keeps the heard part in the history; push-to-talk overrides VAD endpointing while held."""
        self._apply(turns.Command(kind, time.monotonic()))

    def add_user_text(self, text: str) -> None:
        self._apply(turns.UserText(text, time.monotonic()))

    def create_response(self, instructions: str | None = None) -> None:
        """Answer every pending user message (after the transcriptions in flight) as one reply."""
        self._apply(turns.CreateResponse(time.monotonic(), turns.Responder(instructions=instructions)))

    def subscribe(self, maxsize: int = SUB_DEFAULT) -> Subscription[Event]:
        """The daemon's events; only a Realtime conversation adds ResponseStarted/ResponseAudio."""
        return cast(Subscription[Event], self.bus.subscribe(maxsize))

    # ---- what the control surfaces change beside the turns (daemon.DaemonControl, sessions.RealtimeSession) ---

    def retune(self, cfg: Config, policy: turns.Policy, turn_end: EndOfTurnPolicy) -> None:
        """From the next input on, the core runs under `policy` and `turn_end`, with a new VAD when `cfg.vad`
        changed."""
        new_vad = cfg.vad != self.cfg.vad
        if new_vad:
            self.vad = self.engines.make_vad(vad_settings(cfg.vad, cfg.endofturn))
        self.cfg = cfg
        self._apply(turns.SetPolicy(policy, turn_end, time.monotonic(), new_vad))

    def offer(self, schemas: list[dict[str, Any]], choice: ToolChoice = AUTO) -> None:
        if schemas and not self.engines.chat.can_call_tools:
            return  # none can be offered: the start said so once ("tools are off")
        self.background("offering the tools to the LLM", offer_tools, self.engines.chat, schemas, choice)

    def check_voice(self, name: str) -> None:
        settings.check_voice(cast(settings.VoiceCatalog, self.engines.tts), name, prefix="")

    def set_voice(self, name: str) -> None:
        self.check_voice(name)
        self.background(f"loading voice {name!r}", self.engines.use_voice, name)

    # ---- plumbing -------------------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop everything: cancel the turn, flush playback, end the events (a Realtime session then leaves the
        open ones) and the compute thread when it is ours."""
        if self._closed:
            return
        self._closed = True
        if self._tick is not None:
            self._tick.cancel()
        for reply in self._replies.values():
            self._stop(reply)  # a network step's thread would hold asyncio.run's end
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        with contextlib.suppress(Exception):
            self.sink.flush()
        self.bus.close()
        if self._owns_compute:
            await asyncio.to_thread(self.compute.close, 1.0)

    def publish(self, event: SessionEvent) -> None:
        if not self._closed:
            self.bus.publish(event)

    def failed(self, exc: BaseException, what: str) -> None:
        # an error of ours names the problem and the fix in its message: a traceback only for the unexpected
        log.error("error while %s: %s", what, exc, exc_info=None if isinstance(exc, AssistantError) else exc)
        self.publish(ErrorEvent(f"{what}: {type(exc).__name__}: {exc}", time.monotonic()))

    def background(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on the compute thread (urgent) without waiting; a failure is reported as `what`."""

        async def run() -> None:
            try:
                await self.compute.run(fn, *args, priority=Priority.URGENT)
            except Exception as e:
                self.failed(e, what)

        self.spawn(run())

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
