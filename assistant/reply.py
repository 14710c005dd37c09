"""One reply: user text -> LLM deltas -> speakable text -> TTS audio chunks, one compute step at a time.

The pump feeds text just in time: an LLM token whenever the TTS waits for text, else a TTS frame, so the answer
starts sounding after the first frames while the rest is generated. Every step is its own compute job carrying
the reply's ticket: a barge-in or a resumed utterance bumps the generation and the next step never runs.
`pump` is an async generator of what the reply produced (`ResponseTextDelta`, `ResponseAudio`); the conversation
hands each to its turn core, which decides whether it plays. While the turn is unconfirmed the pump stops after
`SPECULATIVE_CHUNKS` chunks until `confirmed` is set.
"""

from __future__ import annotations

import asyncio
import bisect
import threading
import time
from collections.abc import AsyncIterator, Collection, Iterator
from dataclasses import dataclass, field

import numpy as np

from assistant.audio.format import TTS_FRAME_SAMPLES
from assistant.compute import Compute, Generation, Ticket
from assistant.config import Config
from assistant.engines import ChatLike, Engines
from assistant.events import LatencyTrace, ResponseAudio, ResponseTextDelta
from assistant.text import ClauseChunker
from assistant.tools.calls import CallDetector, Speech, ToolCall
from assistant.tools.registry import Toolbox, ToolResult, ToolRound, pick_filler, refused
from assistant.tts.types import SpeechUtterance
from assistant.turns import Responder

SPECULATIVE_CHUNKS = 1  # audio chunks made ahead while the turn is unconfirmed; then the reply waits
NET_SETTLE_S = 5.0  # how long settling waits for a network LLM's step to leave its generator after cancel()
MAX_STALLS = 3  # TTS steps without a frame after end_text() before the TTS is declared stuck
DECODE_MARGIN_S = 0.06  # audio kept queued when a decode is due: a 20 ms speaker block, and a loaded step late 40 ms
EMA = 0.5  # weight of the newest measurement in the learned step costs (they change within a reply: LLM ends)


class HeardMap:
    """Maps the sink's played-sample position back to reply text.

    For every audio chunk we record how much text had been pushed to the TTS when the chunk was produced; the
    heard text is the text pushed by the time the chunk holding the last played sample was made, cut back to a
    whole word. (An upper bound within the TTS's text lead; exact when the TTS consumes text as it is pushed.)
    """

    def __init__(self) -> None:
        self.text = ""  # everything pushed to the TTS so far
        self._ends: list[int] = []  # cumulative samples at the end of each chunk
        self._chars: list[int] = []  # len(self.text) when that chunk was produced

    @property
    def samples(self) -> int:
        return self._ends[-1] if self._ends else 0

    def pushed(self, text: str) -> None:
        self.text += text

    def chunk(self, n_samples: int) -> None:
        self._ends.append(self.samples + n_samples)
        self._chars.append(len(self.text))

    def heard(self, played: int, full_text: str | None = None) -> str:
        """The text heard after `played` samples; `full_text` (all generated so far) decides word ends."""
        if played <= 0 or not self._ends:
            return ""
        i = min(bisect.bisect_left(self._ends, played), len(self._ends) - 1)
        return self.whole_words(self._chars[i], full_text)

    def whole_words(self, cut: int, full_text: str | None = None) -> str:
        """The first `cut` characters of the text, cut back to a whole word."""
        full = self.text if full_text is None else full_text
        if 0 < cut < len(full) and not full[cut].isspace() and not full[cut - 1].isspace():
            cut = max(full.rfind(" ", 0, cut), 0)  # mid-word: the word was not finished
        return full[:cut].strip()


class ChunkPacing:
    """When the TTS should turn the frames it holds into audio: as late as the listener's buffer allows (fewer,
    larger decodes), but before it would run dry. Pure: every time is an input (monotonic seconds).

    A fixed chunk schedule (1, 1, 2, 4 frames) needs each chunk made in less time than the audio queued ahead of
    it; while every frame also waits for an LLM token (~45 ms a frame on the H100 run of 2026-12-07 23:09) the
    larger chunks came late and the speaker ran dry. Here each chunk is audio the listener plays from when it was
    made (a sink that buffers ahead has more time, so this errs early), and the costs are learned as the reply
    goes: a frame step, a frame step with its decode, and the wall time between frame steps (LLM steps, other jobs).
    """

    def __init__(self, rate: int, margin_s: float = DECODE_MARGIN_S) -> None:
        self.rate, self.margin_s = rate, margin_s
        self.play_end: float | None = None  # when the audio made so far will have played
        self.made_s = 0.0  # audio seconds made so far
        self._between = 0.0  # wall s from the end of one frame step to the start of the next
        self._plain: float | None = None  # a frame step that decoded nothing
        self._decoding: float | None = None  # a frame step that decoded a chunk
        self._last_end: float | None = None

    def frame(self, start: float, end: float, decoded: bool) -> None:
        """A TTS step that made a frame ran from `start` to `end`; `decoded`: it also made a chunk."""
        if self._last_end is not None:
            self._between = _ema(self._between, max(0.0, start - self._last_end))
        self._last_end = end
        if decoded:
            self._decoding = _ema(self._decoding, end - start)
        else:
            self._plain = _ema(self._plain, end - start)

    def chunk(self, t: float, samples: int) -> None:
        """A chunk of `samples` was made at `t`: it plays after what was made before (or at once)."""
        audio_s = samples / self.rate
        self.play_end = max(self.play_end if self.play_end is not None else t, t) + audio_s
        self.made_s += audio_s

    def held_until(self, t: float) -> None:
        """Everything made so far was held (an unconfirmed turn) and starts playing at `t`."""
        self.play_end = t + self.made_s
        self._last_end = None  # the wait for confirmation is no time between frames

    def decide(self, t: float) -> bool | None:
        """Before a TTS step at `t`: True to make a chunk after its frame, False to hold the frames, None before
        the first chunk (the engine's first chunk comes as soon as it can)."""
        if self.play_end is None or self._decoding is None:
            return None
        decoding = self._decoding  # a frame step with its decode
        plain = self._plain if self._plain is not None else decoding  # unknown: the larger bound
        left = self.play_end - t
        # False: one more frame, then its chunk, still come before the listener runs dry. (Too late even now, the
        # chunk still comes soonest: gathering frames there made 4-frame gaps on a loaded CPU near real time.)
        return left < self._between + plain + decoding + self.margin_s


def _ema(old: float | None, new: float) -> float:
    return new if old is None else EMA * new + (1.0 - EMA) * old


@dataclass
class TurnTrace:
    """Milestones of one turn on the monotonic clock; `speech_end` is the true end of the user's speech."""

    turn: int
    speech_end: float
    endpoint: float  # when the turn was confirmed (end of turn, PTT release, or the ask/say call)
    marks: dict[str, float] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)  # backlog_ms, underruns

    def mark(self, name: str, when: float) -> None:
        self.marks.setdefault(name, when)  # the first occurrence counts

    def trace(self) -> LatencyTrace:
        def ms(name: str) -> float | None:
            t = self.marks.get(name)
            return None if t is None else round((t - self.speech_end) * 1000.0, 1)

        return LatencyTrace(
            turn=self.turn,
            vad_hangover_ms=round((self.endpoint - self.speech_end) * 1000.0, 1),
            stt_final_ms=ms("stt_final"),
            llm_first_token_ms=ms("llm_first_token"),
            tts_first_text_ms=ms("tts_first_text"),
            tts_first_audio_ms=ms("tts_first_audio"),
            first_sample_played_ms=ms("first_sample_played"),
            extra=dict(self.extra),
        )


@dataclass(eq=False)
class Reply:
    """The state of one answer; owned by the event loop, its engine objects touched only on the compute thread."""

    turn: int
    trace: TurnTrace
    responder: Responder
    # a generation of its own: cancelling one reply must not stale another still alive
    ticket: Ticket = field(default_factory=lambda: Generation().ticket())
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)  # set when it may play
    result: asyncio.Future[str] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    heard: HeardMap = field(default_factory=HeardMap)
    answer: str = ""  # everything the LLM generated so far
    gen: Iterator[str] | None = None
    utt: SpeechUtterance | None = None
    detector: CallDetector | None = None  # splits the current generation into speech and tool calls
    tool_round: ToolRound | None = None  # the tool calls running now (barge-in cancels them)
    tool_rounds: int = 0
    handed_off: list[ToolCall] = field(default_factory=list)  # calls left to the client (Realtime functions)
    said: str = ""  # the speech before the handed-off calls (their assistant message)
    outputs: list[tuple[ToolCall, str]] = field(default_factory=list)  # the client's results this reply continues
    net_idle: threading.Event = field(default_factory=lambda: _set(threading.Event()))  # no network step runs
    chunks_made: int = 0
    audio_started: bool = False
    samples_written: int = 0
    underruns_at: int = 0  # the sink's underrun count when this reply's audio started
    pacing: ChunkPacing | None = None  # when the TTS makes chunks (set by pump)
    epoch: int = 0  # the history's (ChatContext.epoch) when it began: after a reset since, it is not stored
    task: asyncio.Task[None] | None = None

    def confirm(self, speech_end: float, endpoint: float) -> None:
        """The turn it answers ended at `speech_end` (endpointed at `endpoint`, not the speculation's): it may play."""
        self.trace.speech_end, self.trace.endpoint = speech_end, endpoint
        self.confirmed.set()

    def wrote(self, samples: int, underruns: int) -> None:
        """`samples` more of its audio went to the sink, whose underrun count is `underruns` when its first did."""
        if not self.audio_started:
            self.audio_started, self.underruns_at = True, underruns
        self.samples_written += samples

    def played_from(self, first_sample_time: float | None) -> None:
        """Its audio's first sample reached the speaker at `first_sample_time` (None: the sink cannot say)."""
        if self.audio_started and first_sample_time is not None:
            self.trace.mark("first_sample_played", first_sample_time)

    def heard_text(self, played: int) -> str:
        """What the listener heard after `played` samples of this reply's audio: the text the TTS had consumed
        when it made the frame playing then (audio time), where the utterance can say; else HeardMap's bound."""
        played = played if self.audio_started else 0
        at_frame = getattr(self.utt, "chars_at_frame", None)
        if played <= 0 or at_frame is None or self.responder.speak_text is not None:
            return self.heard.heard(played)  # a whole text given up front is consumed at once: no audio time
        speed = float(getattr(self.utt, "speed", 1.0))  # a time-stretched frame plays 1920 / speed samples
        frame = int((played - 1) * speed) // TTS_FRAME_SAMPLES  # the frame holding the last played sample
        heard = self.heard.whole_words(min(int(at_frame(frame)), len(self.heard.text)))
        # audio played but its first word unfinished: keep that word (within one word; an empty assistant turn
        # breaks chat templates that need alternating roles)
        return heard or self.heard.text.strip().split(" ", 1)[0]


def _set(event: threading.Event) -> threading.Event:
    event.set()
    return event


def start_answer(reply: Reply, chat: ChatLike) -> None:
    """On the compute thread: `respond()` renders and tokenizes the history, and may rewind the cache; a reply
    that continues after the client's function outputs records them and goes on with the open answer."""
    if reply.outputs:
        reply.gen = chat.continue_with_results(reply.said, reply.outputs)
        return
    assert reply.responder.user_text is not None
    reply.gen = chat.respond(reply.responder.user_text)


def settle_answer(reply: Reply, chat: ChatLike, heard: str | None) -> None:
    """On the compute thread: stop the answer and record what was heard; `heard=None` drops it entirely.

    Runs after any `start_answer` job already taken by the worker, so `reply.gen` is final here.
    """
    if reply.gen is None:
        return
    reply.net_idle.wait(NET_SETTLE_S)  # a network step in its thread leaves the generator first (cancel() ran)
    if heard is None:
        chat.discard_answer()
    else:
        chat.finish_turn(heard)


def next_delta(gen: Iterator[str], idle: threading.Event | None = None) -> str | None:
    """The next LLM delta, None at the end. A network LLM's runs in a thread of its own (`idle` is clear then)."""
    if idle is not None:
        idle.clear()
    try:
        return next(gen)
    except StopIteration:
        return None
    finally:
        if idle is not None:
            idle.set()


def llm_step(
    gen: Iterator[str], utt: SpeechUtterance, splitter: ClauseChunker, detector: CallDetector
) -> tuple[bool, str, str]:
    """On the compute thread: one LLM token into the TTS. Returns (finished, speech delta, text pushed to the TTS).

    Only speech reaches the TTS: tool-call text is held by the detector; generation ends once its calls are
    complete (`detector.calls_ready`). The caller ends the TTS text (`end_speech`) when no tool round follows.
    """
    return push_delta(next_delta(gen), utt, splitter, detector)


def push_delta(
    delta: str | None, utt: SpeechUtterance, splitter: ClauseChunker, detector: CallDetector
) -> tuple[bool, str, str]:
    """On the compute thread: `delta` (None: the generation ended) through the call detector into the TTS."""
    if delta is None:
        segments, finished = detector.finish(), True
    else:
        segments = detector.feed(delta)
        finished = detector.calls_ready
        if finished:
            segments += detector.finish()
    speech = "".join(s.text for s in segments if isinstance(s, Speech))
    pieces = splitter.push(speech) if speech else []
    if finished:
        pieces += splitter.flush()  # what was said before a tool call is spoken while the tool runs
        if detector.calls and pieces:
            pieces[-1] += " "  # the answer goes on after the round: keep the words apart
    pushed = ""
    for p in pieces:
        if p:
            utt.push_text(p)
            pushed += p
    return finished, speech, pushed


def end_speech(utt: SpeechUtterance) -> None:
    """On the compute thread: the answer has no more text."""
    utt.end_text()


def say_filler(utt: SpeechUtterance, text: str) -> None:
    """On the compute thread: a filler phrase into the TTS while a slow tool runs."""
    utt.push_text(text)


def continue_answer(reply: Reply, chat: ChatLike, results: list[ToolResult]) -> None:
    """On the compute thread: record the round and go on with the answer (a fresh generator and detector)."""
    assert reply.detector is not None
    said = reply.detector.speech
    reply.gen = chat.continue_with_results(said, [(r.call, r.content) for r in results])
    reply.detector = CallDetector(getattr(chat, "tool_format", None))


def answer_calls(reply: Reply, chat: ChatLike) -> list[ToolCall]:
    """The calls the generation that just ended made: from the detector, or the server's (RemoteChat)."""
    assert reply.detector is not None
    if reply.detector.calls:
        return list(reply.detector.calls)
    return list(getattr(chat, "tool_calls", None) or [])


def token_counts(chat: object) -> dict[str, float]:
    """The answer's token counts for the trace (prompt_tokens, cached_tokens, output_tokens), where the chat
    engine counts them (its `token_usage`); on the compute thread."""
    usage = getattr(chat, "token_usage", None)
    return {} if usage is None else dict(usage())


async def pump(
    reply: Reply,
    engines: Engines,
    compute: Compute,
    cfg: Config,
    toolbox: Toolbox | None = None,
    hand_off: Collection[str] = (),
) -> AsyncIterator[ResponseTextDelta | ResponseAudio]:
    """Run one reply to its last audio chunk, yielding its text deltas and audio chunks as they are made.

    With a `toolbox`, tool calls in the answer run on the event loop (a filler phrase after
    `tools.filler_after_ms`), their results go back to the model and the answer continues in the same reply.
    With `hand_off` (the names of a Realtime client's functions), calls end the reply instead: they are left in
    `reply.handed_off` with the speech before them in `reply.said`, and the answer stays open for their outputs;
    a malformed call or one of a function not offered gets an error result fed back to the model instead.
    """
    ticket, trace = reply.ticket, reply.trace
    speak = reply.responder.speak_text
    if speak is not None:
        reply.heard.pushed(speak)
        reply.utt = await compute.run(engines.tts.start, engines.voice, speak, ticket=ticket)
        reply.pacing = ChunkPacing(engines.tts.sample_rate)
        trace.mark("tts_first_text", time.monotonic())
        while not reply.utt.done:
            async for out in _tts_step(reply, compute, ticket):
                yield out
            await _wait_confirmed(reply)
        return
    splitter = ClauseChunker("clauses" if cfg.tts.text_mode == "chunked" else "stream")
    reply.utt = utt = await compute.run(engines.tts.start, engines.voice, None, ticket=ticket)
    reply.pacing = ChunkPacing(engines.tts.sample_rate)
    await compute.run(start_answer, reply, engines.chat, ticket=ticket)
    assert reply.gen is not None
    calling = toolbox is not None or bool(hand_off)
    reply.detector = CallDetector(getattr(engines.chat, "tool_format", None) if calling else None)
    network = bool(getattr(engines.chat, "blocks_on_network", False))
    # Text just in time: an LLM step only when the TTS made no frame at its last step (it waits for text), so the
    # text pushed when a chunk is made is the text spoken in it (what the heard-text map relies on).
    llm_done, tts_idle, stalls = False, True, 0
    while True:
        if not llm_done and tts_idle:
            assert reply.gen is not None and reply.detector is not None
            if network:  # a remote LLM blocks on the network: off the MLX thread, so other work goes on
                got = await asyncio.to_thread(next_delta, reply.gen, reply.net_idle)
                llm_done, delta, pushed = await compute.run(
                    push_delta, got, utt, splitter, reply.detector, ticket=ticket
                )
            else:
                llm_done, delta, pushed = await compute.run(
                    llm_step, reply.gen, utt, splitter, reply.detector, ticket=ticket
                )
            if delta:
                trace.mark("llm_first_token", time.monotonic())
                reply.answer += delta
                yield ResponseTextDelta(reply.turn, delta, time.monotonic())
            if pushed:
                trace.mark("tts_first_text", time.monotonic())
                reply.heard.pushed(pushed)
                tts_idle = False
            if llm_done:
                calls = answer_calls(reply, engines.chat) if calling else []
                if calls and hand_off:
                    assert reply.detector is not None
                    errors = handoff_errors(calls, hand_off)
                    if errors and reply.tool_rounds < cfg.tools.max_rounds:
                        reply.tool_rounds += 1
                        await compute.run(continue_answer, reply, engines.chat, errors, ticket=ticket)
                        llm_done, tts_idle = False, True
                    elif errors:
                        await compute.run(end_speech, utt, ticket=ticket)
                    else:
                        reply.handed_off, reply.said = calls, reply.detector.speech
                        await compute.run(end_speech, utt, ticket=ticket)
                elif calls:
                    async for out in _tool_round(reply, calls, toolbox, engines, compute, cfg):  # type: ignore[arg-type]
                        yield out
                    llm_done, tts_idle = False, True
                else:
                    await compute.run(end_speech, utt, ticket=ticket)
                    trace.extra.update(await compute.run(token_counts, engines.chat, ticket=ticket))
        elif not utt.done:
            before = utt.frames_emitted
            async for out in _tts_step(reply, compute, ticket):
                yield out
            tts_idle = utt.frames_emitted == before
            # `waiting_for_text` describes the last step; after end_text() a step must make progress.
            stalls = stalls + 1 if llm_done and tts_idle and utt.waiting_for_text and not utt.done else 0
            if stalls > MAX_STALLS:
                raise RuntimeError("the TTS still waits for text after end_text(); the TTS engine broke its contract")
        else:
            return
        await _wait_confirmed(reply)  # speculative work stops after the first chunk until the turn is real


def handoff_errors(calls: list[ToolCall], names: Collection[str]) -> list[ToolResult]:
    """[] when every call can go to the client; else a result per call for the model: what was wrong, or that
    the call was not made because another one of the round was wrong."""
    problems = [c.error or ("" if c.name in names else f"there is no function `{c.name}`") for c in calls]
    if not any(problems):
        return []
    offered = ", ".join(sorted(names))
    return [
        refused([c], f"{p}; the functions are: {offered}" if p else "not made: another call of this turn was wrong")[0]
        for c, p in zip(calls, problems, strict=True)
    ]


async def _tool_round(
    reply: Reply, calls: list[ToolCall], toolbox: Toolbox, engines: Engines, compute: Compute, cfg: Config
) -> AsyncIterator[ResponseAudio]:
    """Run one round of `calls` while the TTS speaks what came before them; then continue the answer."""
    assert reply.utt is not None
    await reply.confirmed.wait()  # a speculative answer never acts: tools run only for a turn that is real
    reply.tool_rounds += 1
    if reply.tool_rounds > cfg.tools.max_rounds:
        why = f"no more tool calls in this answer (at most {cfg.tools.max_rounds} rounds); answer with what you have"
        results = refused(calls, why)
    else:
        round_ = reply.tool_round = toolbox.start(calls)
        started = time.monotonic()
        try:
            async for out in _speak_pending(reply, compute):
                yield out
            wait = max(cfg.tools.filler_after_ms / 1000.0 - (time.monotonic() - started), 0.0)
            if not await round_.done_within(wait) and (filler := pick_filler(cfg.tools.filler)):
                filler = filler.strip() + " "
                await compute.run(say_filler, reply.utt, filler, ticket=reply.ticket)
                reply.heard.pushed(filler)
                async for out in _speak_pending(reply, compute):
                    yield out
            results = await round_.results()
        finally:
            round_.cancel()  # no-op when done; a barge-in (this task cancelled) stops the calls
            reply.tool_round = None
    await compute.run(continue_answer, reply, engines.chat, results, ticket=reply.ticket)


async def _speak_pending(reply: Reply, compute: Compute) -> AsyncIterator[ResponseAudio]:
    """Step the TTS until it has spoken all the text it was given (it waits for more)."""
    utt = reply.utt
    assert utt is not None
    while not utt.done:
        before = utt.frames_emitted
        async for out in _tts_step(reply, compute, reply.ticket):
            yield out
        if utt.frames_emitted == before and utt.waiting_for_text:
            return
        await _wait_confirmed(reply)


async def _wait_confirmed(reply: Reply) -> None:
    """An unconfirmed reply stops after SPECULATIVE_CHUNKS chunks; once confirmed, what it made starts playing."""
    if not reply.confirmed.is_set() and reply.chunks_made >= SPECULATIVE_CHUNKS:
        await reply.confirmed.wait()
        if reply.pacing is not None:
            reply.pacing.held_until(time.monotonic())


async def _tts_step(reply: Reply, compute: Compute, ticket: Ticket) -> AsyncIterator[ResponseAudio]:
    utt, pacing = reply.utt, reply.pacing
    assert utt is not None
    decode = None if pacing is None else pacing.decide(time.monotonic())
    before, start = utt.frames_emitted, time.monotonic()
    chunk = await compute.run(utt.step, decode, ticket=ticket)
    end = time.monotonic()
    samples = 0 if chunk is None else len(chunk)
    if pacing is not None:
        if utt.frames_emitted > before:
            pacing.frame(start, end, samples > 0)
        if samples:
            pacing.chunk(end, samples)
    if chunk is not None and samples:
        reply.trace.mark("tts_first_audio", end)
        reply.heard.chunk(len(chunk))
        reply.chunks_made += 1
        yield ResponseAudio(reply.turn, np.asarray(chunk, dtype=np.float32), end)
