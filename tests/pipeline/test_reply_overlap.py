"""Two replies alive at once: cancelling one (the spoken apology, a `say`) must not stop the other."""

from __future__ import annotations

import asyncio

from assistant.events import BargeIn, ResponseDone
from tests.pipeline.doubles import FakeSink, Message
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
