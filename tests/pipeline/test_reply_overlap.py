"""Two replies alive at once: cancelling one (the spoken apology, a `say`) must not stop the other."""

from __future__ import annotations

import asyncio
import threading

from assistant.events import BargeIn, ResponseDone
from tests.pipeline.doubles import FakeSink, Message, ScriptedChat
from tests.pipeline.harness import ANSWER, Harness, eventually

FULL = "".join(ANSWER)


def test_a_turn_confirmed_over_a_say_is_answered() -> None:
    """A `say` that starts while the user speaks is cut when their turn is confirmed, and that turn is answered."""

    async def main() -> None:
        async with Harness(sink=FakeSink(auto=False)) as h:
            h.speak("hello")  # the user's turn has begun
            spoken = asyncio.create_task(h.p.say("sorry I could not answer"))  # as the apology after an error
            await asyncio.sleep(0)
            h.silence(3)  # the first silence starts a speculative answer
            await eventually(lambda: h.chat.prompts == ["hello"])
            h.silence(3)  # the end of the turn confirms it, cutting the say
            barge = await h.next_event(BargeIn)
            h.sink.auto = True  # the say was still playing (its audio unplayed) when the turn ended
            await spoken  # the say ended (cut short)
            done = await h.next_event(ResponseDone, lambda e: e.turn > barge.turn)
            assert done.text == FULL and not done.interrupted
            assert h.chat.history == [Message("user", "hello"), Message("assistant", FULL)]

    asyncio.run(main())


def test_an_ask_cut_by_a_second_ask_and_an_interrupt_still_returns() -> None:
    """An ask interrupted by a second ask, which an interrupt cuts while it waits for the first answer to be
    recorded, still returns (the interrupt cancelled that recording too, and the first asker waited forever)."""

    async def main() -> None:
        gate = threading.Semaphore(0)  # each LLM step waits here: the compute thread is busy when the cuts come
        async with Harness(chat=ScriptedChat(list(ANSWER), gate=gate)) as h:
            first = asyncio.create_task(h.p.ask("first"))
            await eventually(lambda: h.chat.waiting)  # its first step holds the compute thread
            second = asyncio.create_task(h.p.ask("second"))
            await asyncio.sleep(0.05)  # the second reply now waits for the first one's recording
            h.p.command("interrupt")
            for _ in range(4 * len(ANSWER)):
                gate.release()
            async with asyncio.timeout(10):
                assert await first == "" and await second == ""

    asyncio.run(main())
