"""The wake phrase as a policy of the turn core, through the conversation with scripted doubles."""

from __future__ import annotations

import asyncio
import time

from assistant.events import AttentionChanged, FinalTranscript, ResponseDone
from tests.pipeline.harness import ANSWER, Harness

FULL = "".join(ANSWER)

# The doubles' vocabulary has no "hey nova": "hello" stands for the phrase (the matching itself is tested in
# tests/integ/test_wake.py); what is proved here is which turns the core answers and records.
WAKE = {"pipeline.wake_phrase": "hello"}


def now_speaking(h: Harness, *words: str) -> None:
    """Speak `words` with capture times of now (the follow-up window is measured on the real clock)."""
    h.t = time.monotonic()
    h.speak(*words)
    h.silence(6)


def test_turns_without_the_phrase_are_ignored() -> None:
    """Unaddressed turns get a transcript but no LLM call, no reply and no history; an addressed one is answered
    without the phrase, and the assistant announces it is engaged."""

    async def main() -> None:
        async with Harness(WAKE) as h:
            for _ in range(3):
                now_speaking(h, "what", "time")
                assert (await h.next_event(FinalTranscript)).text == "what time"
            now_speaking(h, "hello", "what", "time", "is", "it")
            await h.next_event(ResponseDone)
            assert h.chat.prompts == ["what time is it"]
            assert [m.role for m in h.chat.history] == ["user", "assistant"]
            assert [e.attention for e in h.of(AttentionChanged)] == ["engaged"]

    asyncio.run(main())


def test_follow_up_inside_the_window_is_answered_and_after_it_is_not() -> None:
    """Within pipeline.follow_up_s after the reply a turn needs no phrase; once the window closes (an event says
    so) it does again."""

    async def main() -> None:
        async with Harness({**WAKE, "pipeline.follow_up_s": 1.0}) as h:
            now_speaking(h, "hello", "what", "time")
            await h.next_event(ResponseDone)
            now_speaking(h, "is", "it")
            done = await h.next_event(ResponseDone)
            assert done.text == FULL and h.chat.prompts == ["what time", "is it"]
            await h.next_event(AttentionChanged, lambda e: e.attention == "listening_for_name")
            now_speaking(h, "what", "time")
            assert (await h.next_event(FinalTranscript)).text == "what time"
            await asyncio.sleep(0.1)
            assert h.chat.prompts == ["what time", "is it"] and len(h.chat.history) == 4

    asyncio.run(main())


def test_push_to_talk_and_text_bypass_the_phrase() -> None:
    """A hotkey turn and an `ask` are answered without the phrase."""

    async def main() -> None:
        async with Harness({**WAKE, "pipeline.mode": "both", "pipeline.follow_up_s": 0.0}) as h:
            h.p.command("ptt_start")
            h.t = time.monotonic()
            h.speak("what", "time")
            h.p.command("ptt_stop")
            await h.next_event(ResponseDone)
            assert await h.p.ask("is it") == FULL
            assert h.chat.prompts == ["what time", "is it"]

    asyncio.run(main())
