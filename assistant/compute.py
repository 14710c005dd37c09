"""The one thread that owns MLX: every model call (STT, LLM, TTS) runs here, one job at a time.

MLX streams are per thread (and Metal crashes under concurrent use), so asyncio never calls a model directly:
it submits a job and awaits the result, which comes back through `loop.call_soon_threadsafe`. Long generations
are sliced: a job is ONE step of a generator (an LLM token, a TTS frame), so a cancel or a more urgent job (a
barge-in's transcription) waits at most one step. Jobs carry a `Ticket` from a `Generation` counter; bumping
the counter makes every older ticket stale, and stale jobs are skipped instead of run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import enum
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

log = logging.getLogger("assistant.compute")

T = TypeVar("T")

FOREGROUND_GRACE_S = 0.01  # background work waits this long after a reply step for the reply's next step
QUEUE_LIMIT = 1024  # jobs waiting; the pipeline keeps one step per stream in flight, so this is never near


class Priority(enum.IntEnum):
    """Lower runs first; equal priorities run in submission order."""

    URGENT = 0  # transcription of the user's speech, closing cancelled generators
    REPLY = 1  # LLM tokens and TTS frames of the current answer
    BACKGROUND = 2  # cache clearing, warm-ups


# The most urgent priority jobs submitted in the current context may have (see `lowered`).
_ceiling: contextvars.ContextVar[Priority] = contextvars.ContextVar("compute_ceiling", default=Priority.URGENT)


@contextlib.contextmanager
def lowered(priority: Priority) -> Iterator[None]:
    """Jobs submitted in this context, and by tasks started in it, run at `priority` or below.

    The server wraps WebSocket text commands (say, ask) in it, so the voice loop's steps always run first.
    """
    token = _ceiling.set(priority)
    try:
        yield
    finally:
        _ceiling.reset(token)


class Stale(Exception):
    """The job's generation was cancelled before the job ran; it did not run."""


class Generation:
    """A counter: `ticket()` names the current generation, `bump()` makes every earlier ticket stale."""

    def __init__(self) -> None:
        self.value = 0

    def bump(self) -> int:
        self.value += 1  # single int store: safe to read from the worker thread
        return self.value

    def ticket(self) -> Ticket:
        return Ticket(self, self.value)


@dataclass(frozen=True)
class Ticket:
    counter: Generation
    value: int

    @property
    def live(self) -> bool:
        return self.counter.value == self.value


@dataclass(order=True)
class _Job:
    priority: int
    seq: int
    fn: Callable[[], Any] = field(compare=False)
    future: concurrent.futures.Future[Any] = field(compare=False)
    ticket: Ticket | None = field(compare=False, default=None)


@dataclass(frozen=True)
class StepResult:
    """One step of a generator: `value` when `done` is False; `done` when it was exhausted."""

    done: bool
    value: Any = None


class Compute:
    """A worker thread with a priority queue of jobs. Thread-safe `submit`; `run`/`step` for asyncio callers."""

    started = False  # whether any worker ever ran in this process (see cli.main: MLX's exit from a sub-thread)

    def __init__(self, name: str = "mlx") -> None:
        Compute.started = True
        self._queue: queue.PriorityQueue[_Job] = queue.PriorityQueue(QUEUE_LIMIT)
        self._seq = itertools.count()
        self._stopping = False
        self.jobs_run = 0
        self.jobs_skipped = 0
        self._foreground_done = 0.0  # when the last job above background priority finished (worker's clock)
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    # ---- submitting ----------------------------------------------------------------------------------------

    def submit(
        self, fn: Callable[..., T], *args: Any, priority: Priority = Priority.REPLY, ticket: Ticket | None = None
    ) -> concurrent.futures.Future[T]:
        """Queue `fn(*args)` for the worker; the future raises `Stale` if `ticket` went stale before it ran."""
        if self._stopping:
            raise RuntimeError("compute thread is closed")
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        job = _Job(max(int(priority), int(_ceiling.get())), next(self._seq), (lambda: fn(*args)), fut, ticket)
        try:
            self._queue.put_nowait(job)
        except queue.Full as e:
            raise RuntimeError(f"compute queue is full ({QUEUE_LIMIT} jobs); a caller is not awaiting its jobs") from e
        return fut

    async def run(
        self, fn: Callable[..., T], *args: Any, priority: Priority = Priority.REPLY, ticket: Ticket | None = None
    ) -> T:
        """Run `fn(*args)` on the worker and return its result (or raise its exception, or `Stale`)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[T] = loop.create_future()
        fut = self.submit(fn, *args, priority=priority, ticket=ticket)

        def settle(done: concurrent.futures.Future[T]) -> None:
            if waiter.done():
                return
            if done.cancelled():
                waiter.cancel()
            elif (exc := done.exception()) is not None:
                waiter.set_exception(exc)
            else:
                waiter.set_result(done.result())

        # The callback fires on the worker thread; hop to the loop without polling.
        fut.add_done_callback(lambda done: loop.call_soon_threadsafe(settle, done))
        try:
            return await waiter
        except asyncio.CancelledError:
            fut.cancel()  # not started yet: it will never run
            raise

    async def step(
        self, gen: Iterator[T], priority: Priority = Priority.REPLY, ticket: Ticket | None = None
    ) -> StepResult:
        """Advance `gen` by one `next()` on the worker."""
        return await self.run(_next, gen, priority=priority, ticket=ticket)

    def clear_cache(self) -> concurrent.futures.Future[None]:
        """Free MLX's buffer cache between turns and requests (long-run memory stays flat). Once the thread is
        closed there is nothing to free it for (a request that ends at shutdown): a done future."""
        try:
            return self.submit(_clear_mlx_cache, priority=Priority.BACKGROUND)
        except RuntimeError:
            if not self._stopping:
                raise
            done: concurrent.futures.Future[None] = concurrent.futures.Future()
            done.set_result(None)
            return done

    # ---- lifetime ------------------------------------------------------------------------------------------

    def close(self, timeout: float = 1.0) -> bool:
        """Stop after the job in progress; queued jobs are cancelled. True when the thread ended in time."""
        if not self._stopping:
            self._stopping = True
            stop: concurrent.futures.Future[None] = concurrent.futures.Future()
            self._queue.put(_Job(-1, next(self._seq), _stop_marker, stop))
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _after_grace(self, job: _Job) -> _Job:
        """A background job waits up to FOREGROUND_GRACE_S after a foreground one: a reply's next step is
        submitted by asyncio only once the last one's result arrives, and it must not find the thread busy."""
        wait = self._foreground_done + FOREGROUND_GRACE_S - time.monotonic()
        if wait <= 0:
            return job
        try:
            other = self._queue.get(timeout=wait)  # one bounded wait for a more urgent job, not a polling loop
        except queue.Empty:
            return job
        first, later = (other, job) if other < job else (job, other)
        self._queue.put_nowait(later)
        return first

    def _work(self) -> None:
        while True:
            job = self._queue.get()  # blocks: the thread sleeps until work arrives
            if job.priority >= Priority.BACKGROUND:
                job = self._after_grace(job)
            if job.fn is _stop_marker:
                break
            if not job.future.set_running_or_notify_cancel():
                self.jobs_skipped += 1
                continue
            if job.ticket is not None and not job.ticket.live:
                self.jobs_skipped += 1
                job.future.set_exception(Stale("cancelled before it ran"))
                continue
            try:
                result = job.fn()
            except BaseException as e:  # every failure goes back to the awaiting side
                job.future.set_exception(e)
            else:
                job.future.set_result(result)
            self.jobs_run += 1
            if job.priority < Priority.BACKGROUND:
                self._foreground_done = time.monotonic()
        while True:  # cancel what is left so no awaiting task hangs
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            job.future.cancel()


def _stop_marker() -> None:
    """Identity marker of the stop job; never called."""


def _next(gen: Iterator[Any]) -> StepResult:
    try:
        return StepResult(False, next(gen))
    except StopIteration:
        return StepResult(True)


def _clear_mlx_cache() -> None:
    import mlx.core as mx

    mx.clear_cache()
