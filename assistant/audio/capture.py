"""The microphone: a sounddevice InputStream handed to asyncio as int16 16 kHz mono blocks with their capture time.

The PortAudio callback copies each block with the time its first sample reached the ADC (`inputBufferAdcTime`,
carried over to the monotonic clock) and passes it to the event loop with `loop.call_soon_threadsafe`; the loop
converts it (mono, 16 kHz) and appends it to a bounded queue that `read()` awaits. Nothing polls. A block that
finds the queue full is dropped and counted in `overflows`, as are PortAudio's own input overflows. Opening and
closing run off the event loop, each PortAudio call bounded (`devices.call_async`); a hung stream is abandoned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any

import numpy as np

from assistant.audio import devices
from assistant.audio.format import CAPTURE_RATE, AudioBlock, StreamResampler, float32_to_int16, frame_samples
from assistant.config import AudioConfig
from assistant.errors import AudioDeviceError

log = logging.getLogger("assistant.audio.capture")

FIRST_BLOCK_S = 5.0  # a device may take a moment to deliver its first block (PulseAudio: up to ~2 s)
NO_AUDIO_S = 2.0  # then a block arrives every block_ms; this long without one means the device is gone


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
        self._blocks: deque[AudioBlock] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: AudioDeviceError | None = None
        self._resampler: StreamResampler | None = None
        self._got_first = False
        self._generation = 0  # which stream is current: an old one's late blocks and finished callback are not
        self._suspended = False  # closed for a device switch: read() waits for resume()

    async def __aenter__(self) -> Capture:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def open(self) -> None:
        """Open and start the input stream; the event loop never waits on PortAudio. Raises AudioDeviceError
        naming the fix (also when the sound server does not answer)."""
        self._loop = asyncio.get_running_loop()
        self._blocks.clear()
        await self._start_stream()

    async def _start_stream(self) -> None:
        """Choose the device (the system default anew, if configured so) and open and start a stream on it."""
        sd = devices._sounddevice()
        cfg = self.cfg
        device = await devices.call_async(lambda: devices.pick(cfg.input_device, "input"), "listing input devices")
        fmt = await devices.call_async(
            lambda: devices.negotiate(device, "input", CAPTURE_RATE, "int16", cfg.device_rate),
            "checking the input format",
        )
        self.device, self.format = device, fmt
        self._resampler = StreamResampler(fmt.rate, CAPTURE_RATE) if fmt.rate != CAPTURE_RATE else None
        self._error, self._got_first = None, False
        self._generation += 1
        generation = self._generation
        try:
            stream = await devices.open_stream_async(
                lambda: sd.InputStream(
                    device=device.index,
                    samplerate=fmt.rate,
                    channels=fmt.channels,
                    dtype="int16",
                    blocksize=frame_samples(fmt.rate, cfg.block_ms),
                    latency="low",
                    callback=lambda *a: self._callback(generation, *a),
                    finished_callback=lambda: self._finished(generation),
                ),
                "opening the input stream",
            )
        except (sd.PortAudioError, ValueError) as e:
            raise devices.describe_open_error(device, "input", e) from e
        self._stream = stream
        try:
            await devices.call_async(stream.start, "starting the input stream")
        except (sd.PortAudioError, AudioDeviceError) as e:
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
        """Stop and close the stream on a thread of its own; returns at once (a stream whose device vanished
        may hang there: it is abandoned)."""
        self._suspended = False
        stream, self._stream = self._stream, None
        if stream is not None:
            devices.release(stream, "the input stream")
        self._wake()

    def suspend(self) -> None:
        """Close the stream for a switch of device (PortAudio is about to restart); returns at once. Blocks
        already captured, also those still on their way from the old stream, stay readable; read() then waits
        for resume() instead of reporting a lost device."""
        if self._stream is None:
            return
        self._suspended = True
        stream, self._stream = self._stream, None
        devices.release(stream, "the input stream")

    async def resume(self) -> None:
        """Reopen on the (new) default device after suspend(); if that fails, read() raises AudioDeviceError (so
        the caller's reopen-and-retry takes over)."""
        if not self._suspended:
            return
        self._suspended = False
        try:
            await self._start_stream()
        except AudioDeviceError as e:
            self._error = e
        finally:  # also when cancelled: read() must look again (it waits without a timeout while suspended)
            self._wake()

    # ---- PortAudio thread ----------------------------------------------------------------------------------

    def _callback(self, generation: int, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        now = time.monotonic()
        # PortAudio's clock is not ours: carry over how long ago the first sample reached the ADC
        ago = time_info.currentTime - time_info.inputBufferAdcTime
        t = now - (ago if 0.0 <= ago < 1.0 else frames / (self.format.rate if self.format else CAPTURE_RATE))
        self._post(self._deliver, generation, indata.copy(), t, bool(status.input_overflow))

    def _finished(self, generation: int) -> None:
        if generation == self._generation:  # a stream we released on purpose is no loss
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

    def _deliver(self, generation: int, block: np.ndarray, t: float, overflowed: bool) -> None:
        # while suspended, the last blocks of the old stream are real audio; after close() nothing is wanted
        if self._stream is None and not self._suspended:
            return
        if generation != self._generation and not self._suspended:
            return  # a block of the old stream arriving after the new one opened: it would be out of order
        if overflowed:
            self.overflows += 1
            log.warning("microphone overflow: PortAudio dropped input (%d so far)", self.overflows)
        if len(self._blocks) >= self.cfg.capture_queue_blocks:
            self.overflows += 1
            log.warning(
                "capture queue full (%d blocks): a block was dropped; the consumer is too slow", len(self._blocks)
            )
            return
        self._blocks.append(self._convert(block, t))
        self._wake()

    def _convert(self, block: np.ndarray, t: float) -> AudioBlock:
        if block.shape[1] == 1 and self._resampler is None:
            return AudioBlock(block[:, 0], t)
        mono = block.astype(np.float32).mean(axis=1) / 32768.0
        if self._resampler is not None:
            t -= self._resampler.held_s  # the first output sample comes from input held back from earlier blocks
            mono = self._resampler.push(mono)
        return AudioBlock(float32_to_int16(mono), t)

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

    async def read(self) -> AudioBlock:
        """The next int16 16 kHz mono block and its capture time; AudioDeviceError when the device stops or is
        lost."""
        while not self._blocks:
            if self._error is not None:
                raise self._error
            if self._stream is None and not self._suspended:
                raise AudioDeviceError("the microphone is not open; use `async with Capture(cfg)`")
            self._waiter = asyncio.get_running_loop().create_future()
            timeout = None if self._suspended else NO_AUDIO_S if self._got_first else FIRST_BLOCK_S
            try:
                async with asyncio.timeout(timeout):  # not wait_for: see tests/test_cancellation.py
                    await self._waiter
            except TimeoutError:
                self._fail(f"no audio for {timeout:g} s")
            finally:
                self._waiter = None
        block = self._blocks.popleft()
        self._got_first = True
        self.samples_read += len(block.samples)
        return block
