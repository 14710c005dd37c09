"""Event fan-out: every subscriber has its own bounded queue; when full, the oldest event is dropped and counted
(the oldest of the lowest rank, for a subscriber that ranks its events)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

E = TypeVar("E")


class Subscription(Generic[E]):
    """An async iterator of events over a bounded drop-oldest queue; `dropped` counts what was lost. With `rank`,
    a full queue loses the oldest event of the lowest rank (the new one, if it ranks below all queued)."""

    def __init__(
        self, maxsize: int, on_close: Callable[[Subscription[E]], None], rank: Callable[[E], int] | None = None
    ) -> None:
        self._items: deque[E] = deque()
        self._maxsize = max(1, maxsize)
        self._wake = asyncio.Event()
        self._on_close = on_close
        self._rank = rank
        self.closed = False
        self.dropped = 0

    def put(self, event: E) -> None:
        if len(self._items) >= self._maxsize:
            self.dropped += 1
            if self._rank is None:
                self._items.popleft()
            else:
                rank = self._rank
                lowest = min(range(len(self._items)), key=lambda i: rank(self._items[i]))
                if rank(event) < rank(self._items[lowest]):
                    return
                del self._items[lowest]
        self._items.append(event)
        self._wake.set()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._on_close(self)
            self._wake.set()

    def __aiter__(self) -> AsyncIterator[E]:
        return self

    async def __anext__(self) -> E:
        while not self._items:
            if self.closed:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()
        return self._items.popleft()


class EventBus(Generic[E]):
    """Publishes each event to every open subscription (never blocks the publisher)."""

    def __init__(self) -> None:
        self._subs: set[Subscription[E]] = set()

    def subscribe(self, maxsize: int, rank: Callable[[E], int] | None = None) -> Subscription[E]:
        sub: Subscription[E] = Subscription(maxsize, self._subs.discard, rank)
        self._subs.add(sub)
        return sub

    def publish(self, event: E) -> None:
        for sub in list(self._subs):
            sub.put(event)

    def close(self) -> None:
        for sub in list(self._subs):
            sub.close()

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    @property
    def dropped(self) -> int:
        return sum(s.dropped for s in self._subs)
