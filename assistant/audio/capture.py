"""The microphone: a sounddevice InputStream handed to asyncio as int16 16 kHz mono blocks.

The PortAudio callback copies each block and passes it to the event loop with `loop.call_soon_threadsafe`; the
loop converts it (mono, 16 kHz) and appends it to a bounded queue that `read()` awaits. Nothing polls. A block that
finds the queue full is dropped and counted in `overflows`, as are PortAudio's own input overflows.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any

import numpy as np

from assistant.audio import devices
from assistant.audio.format import CAPTURE_RATE, StreamResampler, float32_to_int16, frame_samples
from assistant.config import AudioConfig
from assistant.errors import AudioDeviceError
from assistant.events import DeviceStatus

log = logging.getLogger("assistant.audio.capture")

FIRST_BLOCK_S = 5.0  # a device may take a moment to deliver its first block (PulseAudio: up to ~2 s)
NO_AUDIO_S = 2.0  # then a block arrives every block_ms; this long without one means the device is gone
CLOSE_WAIT_S = 2.0  # a stream whose device vanished can hang in close(); we stop waiting after this


class Capture:
    """Async context manager: the configured microphone as int16 16 kHz mono blocks of `audio.block_ms`."""

    def __init__(self, cfg: AudioConfig):
        self.cfg = cfg
        self.overflows = 0
        self.samples_read = 0  # 16 kHz samples returned by read()
        self.device: devices.Device | None = None
        self.format: devices.Format | None = None
        self._stream: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._blocks: deque[np.ndarray] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: AudioDeviceError | None = None
        self._resampler: StreamResampler | None = None
        self._got_first = False

    async def __aenter__(self) -> Capture:
        self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> None:
        """Open and start the input stream (from the event loop). Raises AudioDeviceError naming the fix."""
        self._loop = asyncio.get_running_loop()
        sd = devices._sounddevice()
        device = devices.pick(self.cfg.input_device, "input")
        fmt = devices.negotiate(device, "input", CAPTURE_RATE, "int16", self.cfg.device_rate)
        self.device, self.format = device, fmt
        self._resampler = StreamResampler(fmt.rate, CAPTURE_RATE) if fmt.rate != CAPTURE_RATE else None
        self._blocks.clear()
        self._error, self._got_first = None, False
        try:
            stream = sd.InputStream(
                device=device.index,
                samplerate=fmt.rate,
                channels=fmt.channels,
                dtype="int16",
                blocksize=frame_samples(fmt.rate, self.cfg.block_ms),
                latency="low",
                callback=self._callback,
                finished_callback=self._finished,
            )
        except (sd.PortAudioError, ValueError) as e:
            raise devices.describe_open_error(device, "input", e) from e
        devices.stream_opened()
        self._stream = stream
        try:
            stream.start()
        except sd.PortAudioError as e:
            self.close()
            raise devices.describe_open_error(device, "input", e) from e
        log.info(
            "microphone open: %s (device %d) at %d Hz x%d%s",
            device.name,
            device.index,
            fmt.rate,
            fmt.channels,
            "" if self._resampler is None else f", resampled to {CAPTURE_RATE} Hz",
        )

    def close(self) -> None:
        """Stop and close the stream; a stream whose device vanished is abandoned after CLOSE_WAIT_S."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        devices.stream_closed()

        def shut() -> None:
            try:
                stream.abort()
                stream.close()
            except Exception as e:  # the device is already gone: nothing left to release
                log.debug("closing the input stream: %s", e)

        closer = threading.Thread(target=shut, name="capture-close", daemon=True)
        closer.start()
        closer.join(CLOSE_WAIT_S)
        if closer.is_alive():
            log.warning("the input stream did not close within %.0f s; abandoned", CLOSE_WAIT_S)

    # ---- PortAudio thread ----------------------------------------------------------------------------------

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        self._post(self._deliver, indata.copy(), bool(status.input_overflow))

    def _finished(self) -> None:
        self._post(self._fail, "the input stream stopped (device unplugged or the sound server went away)")

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed between the check and the call
            pass

    # ---- event loop ----------------------------------------------------------------------------------------

    def _deliver(self, block: np.ndarray, overflowed: bool) -> None:
        if self._stream is None:
            return
        if overflowed:
            self.overflows += 1
            log.warning("microphone overflow: PortAudio dropped input (%d so far)", self.overflows)
        if len(self._blocks) >= self.cfg.capture_queue_blocks:
            self.overflows += 1
            log.warning(
                "capture queue full (%d blocks): a block was dropped; the consumer is too slow", len(self._blocks)
            )
            return
        self._blocks.append(self._convert(block))
        self._wake()

    def _convert(self, block: np.ndarray) -> np.ndarray:
        if block.shape[1] == 1 and self._resampler is None:
            return block[:, 0]
        mono = block.astype(np.float32).mean(axis=1) / 32768.0
        if self._resampler is not None:
            mono = self._resampler.push(mono)
        return float32_to_int16(mono)

    def _fail(self, why: str) -> None:
        if self._stream is None or self._error is not None:
            return
        name = self.device.name if self.device else "?"
        self._error = AudioDeviceError(
            f"microphone {name!r} stopped: {why}; reconnect it or choose another with audio.input_device "
            f"(retrying every {self.cfg.device_retry_s:g} s)"
        )
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self) -> np.ndarray:
        """The next int16 16 kHz mono block; raises AudioDeviceError when the device stops or is lost."""
        while not self._blocks:
            if self._error is not None:
                raise self._error
            if self._stream is None:
                raise AudioDeviceError("the microphone is not open; use `async with Capture(cfg)`")
            self._waiter = asyncio.get_running_loop().create_future()
            timeout = NO_AUDIO_S if self._got_first else FIRST_BLOCK_S
            try:
                await asyncio.wait_for(self._waiter, timeout)
            except TimeoutError:
                self._fail(f"no audio for {timeout:g} s")
            finally:
                self._waiter = None
        block = self._blocks.popleft()
        self._got_first = True
        self.samples_read += len(block)
        return block


async def microphone(cfg: AudioConfig, report: Callable[[DeviceStatus], None]) -> AsyncIterator[np.ndarray]:
    """Blocks from the microphone forever. A stream that fails is reopened at once (PortAudio's ALSA backend
    drops streams on an overloaded machine); if that fails too, it reports DeviceStatus(ok=False), retries every
    `audio.device_retry_s`, and reports DeviceStatus(ok=True) when the device is back."""
    failures, reported = 0, False
    first: AudioDeviceError | None = None  # what went wrong, rather than why reopening failed
    while True:
        try:
            async with Capture(cfg) as capture:
                while True:
                    block = await capture.read()
                    if reported:
                        report(DeviceStatus("input", True, "microphone is back", time.monotonic()))
                    failures, reported, first = 0, False, None
                    yield block
        except AudioDeviceError as e:
            failures += 1
            if failures == 1:
                first = e
                log.warning("%s; reopening", e)
                continue
            if not reported:
                log.error("%s", first or e)
                log.debug("reopening failed: %s", e)
                report(DeviceStatus("input", False, str(first or e), time.monotonic()))
                reported = True
        await asyncio.sleep(cfg.device_retry_s)
