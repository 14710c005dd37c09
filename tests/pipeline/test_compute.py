"""The compute thread: one owner thread, results and exceptions back to asyncio, priorities, stale tickets."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from assistant.compute import Compute, Generation, Priority, Stale
from tests.pipeline.harness import eventually


def test_results_and_exceptions_come_back_from_one_thread() -> None:
    """Every job runs on the same worker thread (not the loop's); its result or exception reaches the awaiter."""

    async def main() -> None:
        c = Compute()
        try:
            idents = {await c.run(threading.get_ident) for _ in range(5)}
            assert len(idents) == 1 and threading.get_ident() not in idents
            assert await c.run(lambda a, b: a + b, 2, 3) == 5
            with pytest.raises(ZeroDivisionError):
                await c.run(lambda: 1 / 0)
        finally:
            assert c.close()

    asyncio.run(main())


def test_urgent_job_overtakes_queued_steps() -> None:
    """An URGENT job submitted behind queued REPLY jobs runs right after the job in progress."""
    c = Compute()
    gate, order = threading.Event(), []
    try:
        first = c.submit(gate.wait)  # occupies the worker
        later = [c.submit(order.append, f"reply{i}") for i in range(3)]
        urgent = c.submit(order.append, "urgent", priority=Priority.URGENT)
        gate.set()
        for f in [first, *later, urgent]:
            f.result(timeout=10)
        assert order == ["urgent", "reply0", "reply1", "reply2"]
    finally:
        c.close()


def test_stale_ticket_is_skipped() -> None:
    """A job whose generation was bumped before it ran never runs and raises Stale."""
    c = Compute()
    gen, gate, ran = Generation(), threading.Event(), []
    try:
        c.submit(gate.wait)
        fut = c.submit(ran.append, 1, ticket=gen.ticket())
        gen.bump()
        gate.set()
        with pytest.raises(Stale):
            fut.result(timeout=10)
        assert ran == [] and c.jobs_skipped == 1
    finally:
        c.close()


def test_sliced_generation_cancels_within_one_step() -> None:
    """A generator stepped one job at a time stops within one step of a cancel, and is closed on the worker."""

    async def main() -> None:
        c = Compute()
        steps, closed_on = [], []

        def endless() -> Iterator[int]:
            try:
                i = 0
                while True:
                    steps.append(i)
                    yield i
                    i += 1
            finally:
                closed_on.append(threading.get_ident())

        gen_counter = Generation()
        it = endless()

        async def consume() -> None:
            ticket = gen_counter.ticket()
            while True:
                await c.run(next, it, priority=Priority.REPLY, ticket=ticket)

        task = asyncio.create_task(consume())
        await eventually(lambda: len(steps) >= 10)
        at_cancel = len(steps)
        gen_counter.bump()
        with pytest.raises(Stale):
            await task
        await c.run(it.close, priority=Priority.URGENT)
        worker = await c.run(threading.get_ident)
        assert len(steps) - at_cancel <= 1
        assert closed_on == [worker]
        c.close()

    asyncio.run(main())


def test_close_cancels_waiting_jobs_and_ends_thread() -> None:
    """close() ends the thread after the job in progress and cancels what was queued."""
    c = Compute()
    gate = threading.Event()
    c.submit(gate.wait)
    queued = c.submit(lambda: None, priority=Priority.BACKGROUND)
    threading.Timer(0.05, gate.set).start()
    assert c.close(timeout=5)
    assert queued.cancelled() and not c.alive


def test_clearing_the_cache_after_close_is_a_no_op_and_other_jobs_are_refused() -> None:
    """A request that ends at shutdown frees the MLX cache after the thread closed: that is a done future, not an
    error; any other job is still refused."""
    compute = Compute()
    assert compute.clear_cache().result(5.0) is None  # while open it runs on the thread
    assert compute.close(5.0)
    assert compute.clear_cache().done()
    with pytest.raises(RuntimeError, match="closed"):
        compute.submit(int)
