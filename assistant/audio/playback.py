"""The speaker: a sounddevice OutputStream fed from a jitter buffer of float32 chunks.

`write()` resamples a chunk to the device rate and queues it (never blocks); the PortAudio callback takes what it
needs, or plays silence. Each block handed to PortAudio is logged with the time its first sample reaches the DAC
(`outputBufferDacTime`), so `played_samples` counts only audio that has actually been played.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from types import TracebackType
from typing import Any

import numpy as np

from assistant.audio import devices
from assistant.audio.format import SILENT_DBFS, TTS_RATE, StreamResampler, frame_samples, level_dbfs
from assistant.config import AudioConfig
from assistant.errors import AudioDeviceError, InputError

log = logging.getLogger("assistant.audio.playback")


NO_CALLBACK_S = 1.0  # a running stream calls back every block_ms; this long without a call: it is stuck


class Playback:
    """Context manager (or start()/close()): float32 mono audio at `rate` out of the configured speaker.

    Between two flush() calls the written audio is one continuous stream: a gap (the buffer ran dry, then more
    audio came) plays silence and counts as an underrun; after it the start-up prebuffer is rebuilt.
    """

    def __init__(self, cfg: AudioConfig, rate: int = TTS_RATE):
        self.cfg = cfg
        self.rate = rate
        self.underruns = 0
        self.overflows = 0  # chunks refused because playback_buffer_s was full
        self.restarts = 0  # streams that died by themselves and were reopened
        self.output_latency_s = 0.0
        self.first_sample_dac_time: float | None = None
        self.level_dbfs = SILENT_DBFS  # RMS level of the block handed to the device last, dB full scale
        self.device: devices.Device | None = None
        self.format: devices.Format | None = None
        self._stream: Any = None
        self._lost = False  # the stream stopped by itself: the device is gone
        self._restarting = False  # flush() is stopping the stream on purpose
        self._last_callback = 0.0
        self._lock = threading.Lock()
        # the resampler has its own lock: write() resamples outside `_lock`, so the PortAudio callback is never
        # kept waiting while a chunk is converted (that made it miss deadlines at 48 kHz)
        self._resample_lock = threading.Lock()
        self._resampler: StreamResampler | None = None
        self._reset_buffer()

    def _reset_buffer(self) -> None:
        """Forget queued audio and the played position (with the lock held, or before the stream exists)."""
        self._chunks: deque[np.ndarray] = deque()
        self._queued = 0  # device-rate samples in _chunks
        self._written = 0  # `rate` samples written since flush
        self._prebuffering = True
        self._first_queued_at: float | None = None
        self._starved = False  # the buffer ran dry after playing: the next write is an underrun
        self._marks: deque[tuple[float, int]] = deque()  # (DAC time of a block's first sample, its samples)
        self._played_before = 0  # device samples of blocks no longer in _marks, all played
        self.first_sample_dac_time = None
        if self._resampler is not None:
            with self._resample_lock:
                self._resampler.reset()

    def __enter__(self) -> Playback:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        """Open and start the output stream. Raises AudioDeviceError naming the fix."""
        device = devices.pick(self.cfg.output_device, "output")
        fmt = devices.negotiate(device, "output", self.rate, "float32", self.cfg.device_rate)
        self.device, self.format = device, fmt
        with self._lock:
            self._resampler = StreamResampler(self.rate, fmt.rate) if fmt.rate != self.rate else None
            self._reset_buffer()
        self._prebuffer = frame_samples(fmt.rate, self.cfg.output_prebuffer_ms)
        self._max_queued = round(fmt.rate * self.cfg.playback_buffer_s)
        self._open(device, fmt)
        log.info(
            "speaker open: %s (device %d) at %d Hz x%d, latency %.0f ms",
            device.name,
            device.index,
            fmt.rate,
            fmt.channels,
            self.output_latency_s * 1000,
        )

    def _open(self, device: devices.Device, fmt: devices.Format) -> None:
        sd = devices._sounddevice()
        try:
            stream = sd.OutputStream(
                device=device.index,
                samplerate=fmt.rate,
                channels=fmt.channels,
                dtype="float32",
                blocksize=frame_samples(fmt.rate, self.cfg.block_ms),
                latency="low",
                callback=self._callback,
                finished_callback=self._finished,
            )
        except (sd.PortAudioError, ValueError) as e:
            raise devices.describe_open_error(device, "output", e) from e
        self._lost = False
        devices.stream_opened()
        self._stream = stream
        self.output_latency_s = float(stream.latency)
        self._last_callback = time.monotonic()  # counts from the start: the first call may take a moment
        try:
            stream.start()
        except sd.PortAudioError as e:
            self.close()
            raise devices.describe_open_error(device, "output", e) from e

    def _recover(self) -> None:
        """The stream died or stalled: abandon it and open a new one on the same device (queued audio is kept).
        PortAudio's ALSA backend loses streams this way on an overloaded machine, not only on unplugging."""
        old, self._stream = self._stream, None
        devices.stream_closed()
        threading.Thread(target=_abandon, args=(old,), name="playback-close", daemon=True).start()
        assert self.device is not None and self.format is not None
        try:
            self._open(self.device, self.format)
        except AudioDeviceError as e:
            raise AudioDeviceError(
                f"speaker {self.device.name!r} stopped (device unplugged or the sound server went away) and cannot "
                f"be reopened; reconnect it or choose another with audio.output_device, then start() again "
                f"(retry every {self.cfg.device_retry_s:g} s). {e}"
            ) from e
        self.restarts += 1
        log.warning("speaker stream stopped by itself; reopened it (%d so far)", self.restarts)

    def close(self) -> None:
        """Stop the stream at once (queued audio is dropped) and release the device."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        devices.stream_closed()
        try:
            stream.abort()
            stream.close()
        except Exception as e:  # the device is already gone: nothing left to release
            log.debug("closing the output stream: %s", e)

    @property
    def block_samples(self) -> int:
        """Samples at `rate` in one audio block: flush() silences the output within this many."""
        return frame_samples(self.rate, self.cfg.block_ms)

    def write(self, chunk: np.ndarray) -> None:
        """Queue float32 mono samples at `rate` for playback; returns at once. A stream that died or stalled is
        reopened first; AudioDeviceError when that fails (the speaker is gone)."""
        if not isinstance(chunk, np.ndarray) or chunk.ndim != 1 or chunk.dtype != np.float32:
            what = f"{chunk.dtype} {chunk.shape}" if isinstance(chunk, np.ndarray) else type(chunk).__name__
            raise InputError(f"Playback.write expects a 1-D float32 array at {self.rate} Hz, got {what}")
        if self._stream is None:
            raise AudioDeviceError("the speaker is not open; call Playback.start() first")
        if self._lost or time.monotonic() - self._last_callback > NO_CALLBACK_S:
            self._recover()
        with self._resample_lock:
            out = self._resampler.push(chunk) if self._resampler is not None else chunk.copy()
        with self._lock:
            if self._queued + len(out) > self._max_queued:
                self.overflows += 1
                log.warning("playback buffer full (%.0f s queued): a chunk was dropped", self.cfg.playback_buffer_s)
                return
            if self._starved:
                self.underruns += 1
                self._starved, self._prebuffering = False, True
            if len(out):
                self._chunks.append(out)
                self._queued += len(out)
                self._first_queued_at = self._first_queued_at or time.monotonic()
            self._written += len(chunk)

    def _finished(self) -> None:
        """PortAudio: the stream stopped. Expected after close() and during flush(); otherwise the device is gone."""
        if self._stream is not None and not self._restarting:
            self._lost = True

    def flush(self) -> None:
        """Drop all queued audio, also what the device has buffered: silence within one audio block (barge-in).
        Resets `played_samples`."""
        with self._lock:
            self._reset_buffer()
        stream = self._stream
        if stream is None:
            return
        # what PortAudio and the sound server already hold would play on for their latency: abort discards it
        t0 = time.monotonic()
        self._restarting = True
        try:
            stream.abort()
            stream.start()
        except Exception as e:
            self._lost = True
            raise AudioDeviceError(
                f"speaker {self.device.name if self.device else '?'!r} failed on restart after flush ({e}); "
                f"reconnect it or choose another with audio.output_device"
            ) from e
        finally:
            self._restarting = False
            self._last_callback = time.monotonic()
        log.debug("flush took %.1f ms", (time.monotonic() - t0) * 1000)

    @property
    def played_samples(self) -> int:
        """Samples (at `rate`) of the audio written since the last flush() that have reached the DAC by now."""
        now = time.monotonic()
        dev_rate = self.format.rate if self.format else self.rate
        with self._lock:
            while self._marks and self._marks[0][0] + self._marks[0][1] / dev_rate <= now:
                self._played_before += self._marks.popleft()[1]
            played = self._played_before
            if self._marks and self._marks[0][0] < now:
                played += int((now - self._marks[0][0]) * dev_rate)
            return min(self._written, round(played * self.rate / dev_rate))

    @property
    def queued_s(self) -> float:
        """Seconds of audio written but not yet handed to the device."""
        with self._lock:
            return self._queued / (self.format.rate if self.format else self.rate)

    # ---- PortAudio thread ----------------------------------------------------------------------------------

    def _tail_flushed(self) -> bool:
        """Ran dry (`_lock` held): queue the resampler's last samples, which wait for input that may never come.
        False when there are none, or when write() is resampling right now (more audio is on its way)."""
        assert self._resampler is not None
        if not self._resample_lock.acquire(blocking=False):
            return False
        try:
            if not self._resampler.pending:
                return False
            tail = self._resampler.flush()
        finally:
            self._resample_lock.release()
        self._chunks.append(tail)
        self._queued += len(tail)
        return True

    def _callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        now = self._last_callback = time.monotonic()
        # PortAudio's clock is not ours: carry over the delay until this block is heard
        delay = time_info.outputBufferDacTime - time_info.currentTime
        dac = now + (delay if 0.0 < delay < 1.0 else self.output_latency_s)
        with self._lock:
            if status.output_underflow:
                self.underruns += 1
            if (
                self._prebuffering
                and self._queued
                and (
                    self._queued >= self._prebuffer
                    or now - (self._first_queued_at or now) >= self.cfg.output_prebuffer_ms / 1000
                )
            ):
                self._prebuffering = False
            n = 0 if self._prebuffering else self._take(outdata, frames)
            if n < frames and not self._prebuffering and self._resampler is not None and self._tail_flushed():
                n += self._take(outdata[n:], frames - n)
            if n:
                self._marks.append((dac, n))
                if self.first_sample_dac_time is None:
                    self.first_sample_dac_time = dac
            if n < frames and not self._prebuffering and not self._queued and (self._marks or self._played_before):
                self._starved = True
        if n < frames:
            outdata[n:] = 0.0
        # what the speaker plays now, for Vad.set_playback (the barge-in energy margin is over this)
        self.level_dbfs = level_dbfs(outdata[:, 0])

    def _take(self, outdata: np.ndarray, frames: int) -> int:
        """Move up to `frames` queued samples into `outdata` (every channel); returns how many."""
        n = 0
        while n < frames and self._chunks:
            head = self._chunks[0]
            k = min(frames - n, len(head))
            outdata[n : n + k] = head[:k, None]
            n += k
            if k == len(head):
                self._chunks.popleft()
            else:
                self._chunks[0] = head[k:]
        self._queued -= n
        return n


def _abandon(stream: Any) -> None:
    """Release a dead stream; it may hang in PortAudio, which is why this runs on a thread nobody waits for."""
    try:
        stream.abort()
        stream.close()
    except Exception as e:
        log.debug("closing a dead output stream: %s", e)
