"""Headless sessions (assistant/conversation.py) with the scripted engine doubles: turns, replies, cancel, truncate."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

from assistant.compute import Compute
from assistant.config import Config
from assistant.conversation import Conversation
from assistant.engines import Engines
from assistant.errors import AssistantError, ConfigError, InputError
from assistant.events import (
    BargeIn,
    ErrorEvent,
    FinalTranscript,
    ResponseAudio,
    ResponseDone,
    ResponseStarted,
    ResponseTextDelta,
    SpeechEnded,
    SpeechStarted,
)
from assistant.sessions import RealtimeSession, Sessions
from tests.event_log import EventLog
from tests.pipeline.doubles import (
    FakeSink,
    ScriptedChat,
    WordTts,
    make_engines,
    noise_block,
    silence_block,
    word_block,
)
from tests.pipeline.harness import ANSWER, WAIT_S

FRAME_MS = 10  # one WordTts frame (240 samples at 24 kHz)


class DoubleEngines:
    """EngineSource over the doubles: every session gets its own ScriptedChat and transcriber."""

    def __init__(self) -> None:
        self.chats: list[ScriptedChat] = []
        self.gate: threading.Semaphore | None = None  # TTS steps wait on it when set

    def new_session(self, voice: str | None) -> Engines:
        self.chats.append(ScriptedChat(list(ANSWER)))
        engines, _ = make_engines(self.chats[-1], tts=WordTts(self.gate))
        return engines


class Client(EventLog):
    """Collects a session's events as a Realtime connection would."""

    def __init__(self, session: RealtimeSession) -> None:
        super().__init__(session, WAIT_S, session.events())
        self.session = session

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.seen if isinstance(e, kind)]

    def speak(self, *words: str, blocks: int = 4) -> None:
        for w in words:
            for _ in range(blocks):
                self.session.on_audio(word_block(w))

    def silence(self, blocks: int) -> None:
        for _ in range(blocks):
            self.session.on_audio(silence_block())


async def opened(limit: int = 2) -> tuple[Sessions, DoubleEngines, Conversation, Compute]:
    cfg = Config().replace({"pipeline.mode": "hands_free", "vad.preroll_ms": 0})
    compute = Compute()
    daemon_chat = ScriptedChat(["daemon"])
    engines, _ = make_engines(daemon_chat)
    pipeline = Conversation(cfg, engines, None, FakeSink(), compute)
    source = DoubleEngines()
    return Sessions(pipeline, source, limit), source, pipeline, compute


async def closed(pipeline: Conversation, compute: Compute, *sessions: RealtimeSession) -> None:
    for s in sessions:
        await s.aclose()
    await pipeline.aclose()
    await asyncio.to_thread(compute.close, 2.0)


def test_server_vad_turn_is_transcribed_and_answered_with_audio() -> None:
    """With server VAD, speech then silence gives SpeechStarted/Ended, the transcript, and a full reply in order."""

    async def body() -> None:
        sessions, source, pipeline, compute = await opened()
        session = await sessions.open_session()
        c = Client(session)
        c.silence(2)
        c.speak("what", "time")
        c.silence(8)
        done = await c.until(ResponseDone)
        kinds = [type(e) for e in c.seen]
        order = [kinds.index(k) for k in (SpeechStarted, SpeechEnded, FinalTranscript, ResponseStarted)]
        assert order == sorted(order)
        assert c.of(FinalTranscript)[0].text == "what time"
        answer = "".join(e.text for e in c.of(ResponseTextDelta))
        assert answer == "".join(ANSWER) and done.text == answer and not done.interrupted
        audio = c.of(ResponseAudio)
        assert audio and all(a.turn == done.turn for a in audio) and sum(len(a.audio) for a in audio) > 0
        chat = source.chats[0]
        await asyncio.sleep(0.05)  # finish_turn runs on the compute thread before ResponseDone: already there
        assert [(m.role, m.content) for m in chat.history] == [("user", "what time"), ("assistant", answer.strip())]
        assert pipeline.engines.chat.history == []  # the daemon's own conversation is untouched
        await closed(pipeline, compute, session)

    asyncio.run(body())


def test_manual_turns_commit_then_answer_text_and_speech_together() -> None:
    """Without turn detection, audio waits for commit; a text item and the transcript are answered as one reply."""

    async def body() -> None:
        sessions, source, pipeline, compute = await opened()
        session = await sessions.open_session()
        c = Client(session)
        session.set_turn_detection(None, False, False)
        c.speak("hello", "world")
        c.silence(10)  # no VAD: silence does not end the turn
        session.command("commit")
        final = await c.until(FinalTranscript)
        assert final.text == "hello world" and not c.of(SpeechStarted)
        session.add_user_text("what time is it")
        session.create_response()
        done = await c.until(ResponseDone)
        assert not done.interrupted
        assert source.chats[0].prompts == ["hello world\nwhat time is it"]
        await closed(pipeline, compute, session)

    asyncio.run(body())


def test_commit_then_create_waits_for_the_transcript() -> None:
    """response.create right after commit answers the committed speech (it waits for the transcription)."""

    async def body() -> None:
        sessions, source, pipeline, compute = await opened()
        session = await sessions.open_session()
        c = Client(session)
        session.set_turn_detection(None, False, False)
        c.speak("stop", "now")
        session.command("commit")
        session.create_response()
        await c.until(ResponseDone)
        assert source.chats[0].prompts == ["stop now"]
        await closed(pipeline, compute, session)

    asyncio.run(body())


def test_cancel_and_truncate_keep_only_what_was_heard() -> None:
    """cancel_response ends the reply as interrupted; truncate_response trims its history entry to the heard words."""

    async def body() -> None:
        sessions, source, pipeline, compute = await opened()
        session = await sessions.open_session()
        c = Client(session)
        session.add_user_text("count")
        session.create_response()
        done = await c.until(ResponseDone)
        full = done.text.strip()
        chat = source.chats[0]
        session.truncate_response(done.turn, 3 * FRAME_MS)
        await asyncio.sleep(0.05)
        for _ in range(200):
            if chat.history[-1].interrupted:
                break
            await asyncio.sleep(0.01)
        heard = chat.history[-1]
        assert heard.role == "assistant" and heard.interrupted
        assert heard.content and full.startswith(heard.content) and len(heard.content) < len(full)
        assert full[len(heard.content)] == " "  # cut at a word boundary
        with pytest.raises(InputError):
            session.truncate_response(99, 10)

        session.add_user_text("again")
        session.create_response()
        await c.until(ResponseAudio, lambda e: e.turn == done.turn + 1)
        session.command("interrupt")
        cancelled = await c.until(ResponseDone, lambda e: e.turn == done.turn + 1)
        assert cancelled.interrupted
        await closed(pipeline, compute, session)

    asyncio.run(body())


def test_sessions_are_limited_and_voices_checked() -> None:
    """Past server.realtime_sessions opening fails with the fix; an unknown voice or an out-of-range turn
    detection is a ConfigError that changes nothing."""

    async def body() -> None:
        sessions, _, pipeline, compute = await opened(limit=1)
        session = await sessions.open_session()
        with pytest.raises(AssistantError, match="realtime_sessions"):
            await sessions.open_session()
        with pytest.raises(ConfigError, match="alice"):
            session.set_voice("nobody")
        session.set_voice("alice")
        await asyncio.sleep(0.05)
        for _ in range(200):
            if session.conversation.engines.voice == "alice":
                break
            await asyncio.sleep(0.01)
        assert session.conversation.engines.voice == "alice"  # loaded by the session's TTS (the daemon's, shared)
        with pytest.raises(InputError):
            session.on_audio(np.zeros(10, np.float32))
        before = (session.conversation.core.policy, session.conversation.cfg)
        with pytest.raises(ConfigError, match="silence_duration_ms 20"):
            session.set_turn_detection(20, False, False)  # below vad.hangover_ms's range: nothing changes
        assert (session.conversation.core.policy, session.conversation.cfg) == before
        await session.aclose()
        again = await sessions.open_session()  # the slot came back
        await closed(pipeline, compute, again)

    asyncio.run(body())


def test_speech_during_a_reply_interrupts_it_and_is_answered() -> None:
    """With interrupt_response, speech during a reply ends it as interrupted (history: the part sent); the
    interruption is transcribed and answered; noise that never becomes words is not answered."""

    async def body() -> None:
        gate = threading.Semaphore(0)
        sessions, source, pipeline, compute = await opened()
        source.gate = gate
        session = await sessions.open_session()
        c = Client(session)
        session.add_user_text("count")
        session.create_response()
        gate.release(3)
        first = await c.until(ResponseAudio)
        c.speak("stop", "now")  # the VAD double needs 3 voiced blocks while the reply plays
        gate.release(10_000)
        cut = await c.until(ResponseDone, lambda e: e.turn == first.turn)
        assert cut.interrupted and c.of(BargeIn)
        c.silence(8)
        final = await c.until(FinalTranscript)
        assert final.text == "stop now"
        answer = await c.until(ResponseDone, lambda e: e.turn > first.turn)
        assert not answer.interrupted
        chat = source.chats[0]
        assert chat.prompts == ["count", "stop now"]
        assert chat.history[1].role == "assistant" and chat.history[1].interrupted
        assert chat.history[1].content == cut.text

        for _ in range(5):
            c.session.on_audio(noise_block())
        c.silence(8)
        assert (await c.until(FinalTranscript)).text == ""
        await asyncio.sleep(0.2)
        assert not c.of(ErrorEvent) and len(c.of(ResponseStarted)) == 2
        await closed(pipeline, compute, session)

    asyncio.run(body())


def test_response_instructions_apply_to_that_response_only() -> None:
    """response.create instructions are the system prompt for that answer; the session's come back after it."""

    async def body() -> None:
        sessions, source, pipeline, compute = await opened()
        session = await sessions.open_session()
        c = Client(session)
        chat = source.chats[0]
        prompts: list[str] = []
        during: list[str] = []
        chat.set_system_prompt = prompts.append  # type: ignore[method-assign]
        respond = chat.respond

        def recording_respond(text: str) -> Any:
            during.append(prompts[-1])
            return respond(text)

        chat.respond = recording_respond  # type: ignore[method-assign]
        session.set_instructions("Be brief.")
        session.add_user_text("hello")
        session.create_response("Be cheerful.")
        await c.until(ResponseDone)
        await asyncio.sleep(0.05)
        for _ in range(200):
            if prompts[-1] == "Be brief.":
                break
            await asyncio.sleep(0.01)
        assert during == ["Be cheerful."] and prompts[-1] == "Be brief."
        await closed(pipeline, compute, session)

    asyncio.run(body())
