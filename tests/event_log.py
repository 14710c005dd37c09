"""One subscriber's record of a conversation's events, for tests that run a real daemon in the room."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from assistant.events import LatencyTrace, PartialTranscript, ResponseTextDelta, StateChanged


class EventLog:
    """Every event a subscription delivered, in order; waits are a safety net (`wait_s`), never a timing claim."""

    def __init__(self, conversation: Any, wait_s: float, events: AsyncIterator[Any] | None = None) -> None:
        # a daemon's subscription by default; a Realtime session hands its own event stream (`events()`)
        self.sub = events if events is not None else conversation.subscribe(100_000)
        self.seen: list[Any] = []
        self.wait_s = wait_s

    async def until(self, kind: type, pred: Callable[[Any], bool] = lambda e: True) -> Any:
        """The next event of `kind` matching `pred`; AssertionError with the timeline if none comes in time."""

        async def find() -> Any:
            async for ev in self.sub:
                self.seen.append(ev)
                if isinstance(ev, kind) and pred(ev):
                    return ev
            raise AssertionError("subscription closed")

        try:
            return await asyncio.wait_for(find(), self.wait_s)
        except TimeoutError:
            raise AssertionError(f"no {kind.__name__} within {self.wait_s:g} s; events: {self.timeline()}") from None

    async def drain(self, seconds: float) -> None:
        """Collect what arrives for `seconds` (to show that nothing more came)."""

        async def collect() -> None:
            async for ev in self.sub:
                self.seen.append(ev)

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(collect(), seconds)

    def since(self, mark: int, kind: type) -> list[Any]:
        return [e for e in self.seen[mark:] if isinstance(e, kind)]

    def index(self, kind: type, pred: Callable[[Any], bool] = lambda e: True) -> int:
        return next(i for i, e in enumerate(self.seen) if isinstance(e, kind) and pred(e))

    def timeline(self) -> str:
        """The events seen so far, one short word each, for a failure message."""
        chatty = (ResponseTextDelta, PartialTranscript, LatencyTrace)
        return " ".join(f"{type(e).__name__}{_brief(e)}" for e in self.seen if not isinstance(e, chatty))


def _brief(ev: Any) -> str:
    turn = getattr(ev, "turn", None)
    if isinstance(ev, StateChanged):
        return f"({ev.new.value})"
    return "" if turn is None else f"({turn})"
