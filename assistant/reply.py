"""One reply: transcript -> LLM deltas -> TTS incremental text -> audio chunks, one compute step at a time.

The pump feeds text just in time: an LLM token whenever the TTS waits for text, else a TTS frame, so the answer
starts sounding after the first frames while the rest is generated. Every step is its own compute job carrying
the reply's ticket: a barge-in or a resumed utterance bumps the generation and the next step never runs.
Audio is held back until the turn is confirmed (`confirmed` is set), so nothing speculative is ever played.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from assistant.compute import Compute, Priority, Ticket
from assistant.config import Config
from assistant.turns import AudioRing, ChatLike, Engines, HeardMap, TranscriptLike, TurnTrace, UtteranceLike

SPECULATIVE_CHUNKS = 1  # audio chunks made ahead while the turn is unconfirmed; then the reply waits
MAX_STALLS = 3  # TTS steps without a frame after end_text() before the TTS is declared stuck


class TextSplitter(Protocol):
    def push(self, delta: str) -> list[str]: ...
    def flush(self) -> list[str]: ...


@dataclass(eq=False)
class Reply:
    """The state of one answer; owned by the event loop, its engine objects touched only on the compute thread."""

    turn: int
    ticket: Ticket
    trace: TurnTrace
    confirmed: asyncio.Event
    result: asyncio.Future[str]
    user_text: str | None = None  # None: transcribe the user's speech first
    speak_text: str | None = None  # say(): speak exactly this, no LLM
    transcript: TranscriptLike | None = None
    heard: HeardMap = field(default_factory=HeardMap)
    answer: str = ""  # everything the LLM generated so far
    gen: Iterator[str] | None = None
    utt: UtteranceLike | None = None
    held_audio: list[np.ndarray] = field(default_factory=list)
    held_deltas: list[str] = field(default_factory=list)
    audio_started: bool = False
    samples_written: int = 0
    task: asyncio.Task[None] | None = None

    @property
    def records_history(self) -> bool:
        """True when the LLM answered, so the chat history must get a `finish_turn`."""
        return self.gen is not None


class ReplyHooks(Protocol):
    """What the pump asks of the pipeline (the event loop side)."""

    def on_transcript(self, reply: Reply) -> None: ...
    def on_delta(self, reply: Reply, delta: str) -> None: ...
    def on_reply_audio(self, reply: Reply, chunk: np.ndarray) -> None: ...


def _splitter(cfg: Config) -> TextSplitter | None:
    """Speakable pieces for the TTS: words as they complete (incremental) or clauses (chunked)."""
    try:
        from assistant.text import ClauseChunker
    except ImportError:  # text.py not in this build: incremental mode passes the raw deltas
        if cfg.tts.text_mode == "chunked":
            raise
        return None
    return ClauseChunker("clauses" if cfg.tts.text_mode == "chunked" else "stream")


def start_answer(reply: Reply, chat: ChatLike) -> None:
    """On the compute thread: `respond()` renders and tokenizes the history, and may rewind the cache."""
    assert reply.user_text is not None
    reply.gen = chat.respond(reply.user_text)


def settle_answer(reply: Reply, chat: ChatLike, heard: str | None) -> None:
    """On the compute thread: stop the answer and record what was heard; `heard=None` drops it entirely.

    Runs after any `start_answer` job already taken by the worker, so `reply.gen` is final here. The Chat has no
    "discard": a speculative answer is recorded empty and that exchange is then removed from the history (the
    prompt cache rewinds to the longest common prefix on the next turn).
    """
    gen = reply.gen
    if gen is None:
        return
    if isinstance(gen, Generator):
        gen.close()
    if heard is not None:
        chat.finish_turn(heard)
        return
    chat.finish_turn("")
    history = chat.history
    user = (reply.user_text or "").strip()
    if len(history) >= 2 and history[-1].content == "" and history[-2].content == user:
        del history[-2:]


def llm_step(gen: Iterator[str], utt: UtteranceLike, splitter: TextSplitter | None) -> tuple[bool, str, str]:
    """On the compute thread: one LLM token into the TTS. Returns (finished, delta, text pushed to the TTS)."""
    try:
        delta = next(gen)
    except StopIteration:
        pieces = splitter.flush() if splitter else []
        finished = True
        delta = ""
    else:
        pieces = splitter.push(delta) if splitter else [delta]
        finished = False
    pushed = ""
    for p in pieces:
        if p:
            utt.push_text(p)
            pushed += p
    if finished:
        utt.end_text()
    return finished, delta, pushed


class Feedable(Protocol):
    """An utterance whose audio from the ring goes to the transcriber: [start, fed_to) was submitted."""

    fed_to: int
    feeding: bool  # a feed job is in flight


def feed_transcriber(
    user: Feedable,
    ring: AudioRing,
    compute: Compute,
    engines: Engines,
    done: Callable[[Any, Any], None],
    force: bool = False,
) -> None:
    """Submit the utterance's new audio to the transcriber: one feed job in flight, later audio coalesced.

    `done(user, future)` runs on the event loop when the job ends (its result is a partial transcript or None).
    """
    if (user.feeding and not force) or user.fed_to >= ring.end:
        return
    audio = ring.slice(user.fed_to, ring.end)
    user.fed_to, user.feeding = ring.end, True
    fut = compute.submit(engines.transcriber.feed, audio, priority=Priority.URGENT)
    loop = asyncio.get_running_loop()
    fut.add_done_callback(lambda f: loop.call_soon_threadsafe(done, user, f))


async def pump(reply: Reply, engines: Engines, compute: Compute, cfg: Config, hooks: ReplyHooks) -> None:
    """Run one reply to its last audio chunk (the caller waits for playback and records the turn)."""
    ticket, trace = reply.ticket, reply.trace
    if reply.speak_text is not None:
        reply.heard.pushed(reply.speak_text)
        reply.utt = await compute.run(engines.tts.start, engines.voice, reply.speak_text, ticket=ticket)
        trace.mark("tts_first_text", time.monotonic())
        await _drain_tts(reply, compute, hooks, ticket)
        return
    if reply.user_text is None:
        reply.transcript = await compute.run(engines.transcriber.finalize, priority=Priority.URGENT, ticket=ticket)
        trace.mark("stt_final", time.monotonic())
        hooks.on_transcript(reply)
        if not reply.transcript.text.strip():
            return  # nothing was said: no answer
        reply.user_text = reply.transcript.text
    splitter = _splitter(cfg)
    reply.utt = utt = await compute.run(engines.tts.start, engines.voice, None, ticket=ticket)
    await compute.run(start_answer, reply, engines.chat, ticket=ticket)
    gen = reply.gen
    assert gen is not None
    # Text just in time: an LLM step only when the TTS made no frame at its last step (it waits for text), so the
    # text pushed when a chunk is made is the text spoken in it (what the heard-text map relies on).
    # (`waiting_for_text` describes the last step, so it is stale right after a push: it is not used here.)
    llm_done, tts_idle, stalls = False, True, 0
    while True:
        if not llm_done and tts_idle:
            llm_done, delta, pushed = await compute.run(llm_step, gen, utt, splitter, ticket=ticket)
            if delta:
                trace.mark("llm_first_token", time.monotonic())
                reply.answer += delta
                hooks.on_delta(reply, delta)
            if pushed:
                trace.mark("tts_first_text", time.monotonic())
                reply.heard.pushed(pushed)
                tts_idle = False
        elif not utt.done:
            before = utt.frames_emitted
            await _tts_step(reply, compute, hooks, ticket)
            tts_idle = utt.frames_emitted == before
            # `waiting_for_text` describes the last step; after end_text() a step must make progress.
            stalls = stalls + 1 if llm_done and tts_idle and utt.waiting_for_text and not utt.done else 0
            if stalls > MAX_STALLS:
                raise RuntimeError("the TTS still waits for text after end_text(); the TTS engine broke its contract")
        else:
            return
        if not reply.confirmed.is_set() and len(reply.held_audio) >= SPECULATIVE_CHUNKS:
            await reply.confirmed.wait()  # speculative work stops after the first chunk until the turn is real


async def _drain_tts(reply: Reply, compute: Compute, hooks: ReplyHooks, ticket: Ticket) -> None:
    assert reply.utt is not None
    while not reply.utt.done:
        await _tts_step(reply, compute, hooks, ticket)


async def _tts_step(reply: Reply, compute: Compute, hooks: ReplyHooks, ticket: Ticket) -> None:
    assert reply.utt is not None
    chunk = await compute.run(reply.utt.step, ticket=ticket)
    if chunk is not None and len(chunk):
        reply.trace.mark("tts_first_audio", time.monotonic())
        reply.heard.chunk(len(chunk))
        hooks.on_reply_audio(reply, np.asarray(chunk, dtype=np.float32))
