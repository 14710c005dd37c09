"""The daemon's lifetime: run the pipeline and its services until SIGINT/SIGTERM, then stop within 2 s.

Also the adapter the composition root needs: a microphone source that reopens a lost device. The terminal's
status line is assistant/console.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import numpy as np

from assistant.audio.format import AudioBlock
from assistant.audio.sinks import AudioSource
from assistant.console import Console, StatusLine
from assistant.conversation import Conversation
from assistant.errors import AudioDeviceError
from assistant.logs import kv

log = logging.getLogger("assistant.daemon")

SHUTDOWN_S = 2.0  # SIGINT/SIGTERM to exit, at most
Service = Callable[[Conversation], AbstractAsyncContextManager[Any]]


class CaptureLike(AudioSource, Protocol):
    async def __aenter__(self) -> AudioSource: ...
    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> Any: ...


class ReopeningSource:
    """An AudioSource over a capture factory: opens on first read, closes on AudioDeviceError, reopens next read.

    The pipeline waits `audio.device_retry_s` between failed reads, so a lost device is retried at that pace.
    """

    def __init__(self, open_capture: Callable[[], CaptureLike]) -> None:
        self._open = open_capture
        self._capture: CaptureLike | None = None
        self._source: AudioSource | None = None

    async def read(self) -> AudioBlock | np.ndarray:
        if self._source is None:
            capture = self._open()
            self._source = await capture.__aenter__()
            self._capture = capture
        try:
            return await self._source.read()
        except AudioDeviceError:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        capture, self._capture, self._source = self._capture, None, None
        if capture is not None:
            with contextlib.suppress(Exception):
                await capture.__aexit__(None, None, None)


async def serve(
    pipeline: Conversation,
    services: Sequence[Service] = (),
    console: Console | None = None,
    ready: Callable[[], None] | None = None,
) -> int:
    """Run until SIGINT/SIGTERM (or the source fails for good); stop streams and services within SHUTDOWN_S."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    tasks: list[asyncio.Task[Any]] = []
    code, began = 0, time.monotonic()
    try:
        await pipeline.warmup()  # the first turn is as fast as the tenth: nothing compiles after "listening"
        async with _services(pipeline, services):
            tasks.append(asyncio.create_task(pipeline.run(), name="listen"))
            if console is not None:
                tasks.append(asyncio.create_task(StatusLine(pipeline, console).run(), name="status"))
            stopper = asyncio.create_task(stop.wait(), name="stop")
            log.info("listening", extra=kv(mode=pipeline.cfg.pipeline.mode))
            if ready is not None:
                ready()
            done, _ = await asyncio.wait([tasks[0], stopper], return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if tasks[0] in done and (exc := tasks[0].exception()) is not None:
                log.error("the listening loop failed", exc_info=exc)
                code = 1
            began = time.monotonic()
            log.info("stopping")
            await _shutdown(pipeline, tasks)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    log.info("stopped", extra=kv(shutdown_s=round(time.monotonic() - began, 3)))
    return code


@contextlib.asynccontextmanager
async def _services(pipeline: Conversation, services: Sequence[Service]) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for make in services:
            await stack.enter_async_context(make(pipeline))
        try:
            yield
        finally:
            with contextlib.suppress(TimeoutError):  # services get what is left of the budget
                async with asyncio.timeout(SHUTDOWN_S / 2):
                    await stack.aclose()


async def _shutdown(pipeline: Conversation, tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    try:
        async with asyncio.timeout(SHUTDOWN_S / 2):
            await asyncio.gather(*tasks, return_exceptions=True)
            await pipeline.aclose()
    except TimeoutError:
        log.warning("shutdown took too long; exiting anyway")


@contextlib.asynccontextmanager
async def hotkey_service(pipeline: Conversation) -> AsyncIterator[None]:
    """The push-to-talk hotkey for the pipeline's config; when it cannot run, one line says why and we go on."""
    from assistant.hotkey import Hotkey

    loop = asyncio.get_running_loop()
    cfg = pipeline.cfg.pipeline
    hotkey = Hotkey(
        cfg.hotkey,
        cfg.hotkey_mode,
        on_start=lambda: loop.call_soon_threadsafe(pipeline.ptt_start),
        on_stop=lambda: loop.call_soon_threadsafe(pipeline.ptt_stop),
    )
    problem = hotkey.start()
    if problem is not None:
        log.warning(problem)
    try:
        yield
    finally:
        hotkey.stop()
