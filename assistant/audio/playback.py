"""The speaker: a sounddevice OutputStream fed from a jitter buffer of float32 chunks.

`write()` resamples a chunk to the device rate and queues it (never blocks); the PortAudio callback takes what it
needs, or plays silence. Each block handed to PortAudio is logged with the time its first sample reaches the DAC
(`outputBufferDacTime` on the monotonic clock), so `played_samples`, `played_before(t)` and `level_at(t)` count
only audio that has actually been played.

No stream call runs on the caller's thread: a supervisor thread opens, restarts (after flush), recovers and
closes the stream, each PortAudio call bounded by `devices.call`. When the device is lost the queued audio is
dropped, DeviceStatus(kind="output", ok=False) is reported, and the stream is reopened every
`audio.device_retry_s` until a device is back (then ok=True); meanwhile `write()` discards what it is given.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any

import numpy as np

from assistant.audio import devices
from assistant.audio.format import TTS_RATE, StreamResampler, frame_samples
from assistant.config import AudioConfig
from assistant.errors import AudioDeviceError, InputError
from assistant.events import DeviceStatus

log = logging.getLogger("assistant.audio.playback")

SILENT_DBFS = -120.0  # the level reported for digital silence
NO_CALLBACK_S = 2.0  # a running stream calls back every block_ms; this long without a call: it is stuck
WATCH_S = 0.25  # how often the supervisor looks for a stuck stream
HISTORY_S = 30.0  # blocks kept for played_before(t) / level_at(t) (older ones are summed up)
MAX_LEAD_S = 2.0  # the most audio buffered ahead before a run starts, however irregular generation was
PACE_WRITES = 400  # writes the pacer remembers (~30 s of 80 ms TTS frames)
RUN_BREAK_S = 1.0  # a pause between writes this long starts a new run for the pacer (the reply waited on text)
# The device's own buffer: PortAudio's "low" latency at first; when the device runs dry while our queue still
# holds audio (the callback was not scheduled in time: a busy machine), the next run gets twice as much, up to this.
MAX_DEVICE_LATENCY_S = 0.25
DEVICE_STARVED_RUNS = 2  # underflows with audio queued in a run before the device buffer grows


class Pacer:
    """How far ahead to buffer before a run starts, from the measured time between generated chunks.

    Between two writes the queue loses the wall time and gains the chunk's length; the deepest that running
    balance fell below its start in a recent run (a reply, or its part after a pause) is the lead that would have
    played that run without a gap. Generation close to real time, or irregular (a busy machine), gives a larger
    lead; fast, regular generation leaves the configured minimum. (The deepest fall from any earlier peak, as
    this once took, also counted surplus built up and spent without a gap, and carried a balance over from reply
    to reply: a run's last chunk is never credited, so the lead grew with each reply, up to MAX_LEAD_S.)
    """

    def __init__(self, base_s: float, max_s: float = MAX_LEAD_S) -> None:
        self.base_s, self.max_s = base_s, max_s
        # (starts a run, audio s of the previous chunk - wall s since it)
        self._steps: deque[tuple[bool, float]] = deque(maxlen=PACE_WRITES)
        self._last: tuple[float, float] | None = None  # (time, audio seconds) of the previous write
        self._new_run = True  # the next step is the first of a run

    def note(self, t: float, audio_s: float) -> None:
        """A chunk of `audio_s` seconds was written at monotonic time `t`."""
        if self._last is not None and 0.0 <= t - self._last[0] < RUN_BREAK_S:
            self._steps.append((self._new_run, self._last[1] - (t - self._last[0])))
            self._new_run = False
        else:
            self._new_run = True
        self._last = (t, audio_s)

    def new_run(self) -> None:
        """The next write starts a new run (after flush): the pause before it is not generation time."""
        self._last = None

    def lead_s(self) -> float:
        """Seconds of audio to have queued before playing (at least base_s, at most max_s)."""
        balance = deficit = 0.0
        for starts, step in self._steps:
            balance = (0.0 if starts else balance) + step
            deficit = max(deficit, -balance)
        return min(self.max_s, self.base_s + deficit)


def _settle(done: concurrent.futures.Future[None]) -> None:
    """Mark a switch request done, unless its caller stopped waiting (a cancelled future takes no result)."""
    if done.set_running_or_notify_cancel():
        done.set_result(None)


class Playback:
    """Context manager (sync or async), or start()/close(): float32 mono audio at `rate` out of the speaker.

    Between two flush() calls the written audio is one continuous run: a gap (the buffer ran dry, then more
    audio came) plays silence and counts as an underrun; after it the lead is rebuilt. `report` is called (on
    the event loop that called start, if any) with DeviceStatus(kind="output") when the speaker is lost or back.
    """

    def __init__(
        self, cfg: AudioConfig, rate: int = TTS_RATE, report: Callable[[DeviceStatus], None] | None = None
    ) -> None:
        self.cfg = cfg
        self.rate = rate
        self.report = report
        self.underruns = 0
        self.overflows = 0  # chunks refused because playback_buffer_s was full
        self.restarts = 0  # streams that died by themselves and were reopened
        self.output_latency_s = 0.0
        self.device_latency: float | str = "low"  # what the stream is opened with (seconds, or PortAudio's word)
        self.device_starved = 0  # underflows with audio queued since the stream was opened
        self.level_dbfs = SILENT_DBFS  # RMS level of the block handed to the device last, dB full scale
        self.device: devices.Device | None = None
        self.format: devices.Format | None = None
        self.pacer = Pacer(cfg.output_prebuffer_ms / 1000)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stream: Any = None  # the supervisor's; None while no device is open
        self._ok = False  # a speaker is open and playing, or being reopened on purpose (write() queues)
        self._lost = False  # the stream stopped by itself: the device is gone
        self._restarting = False  # the supervisor is stopping the stream on purpose
        self._generation = 0  # which stream is current: a stopped old one's finished callback is no loss
        self._closing = False
        self._restart_wanted = False
        self._switches: list[tuple[bool, concurrent.futures.Future[None]]] = []  # (suspend?, done) for the supervisor
        self._suspended = False  # the stream is closed for a device switch: no reopening until resume()
        self._wake = threading.Condition()
        self._supervisor: threading.Thread | None = None
        self._started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._flushes = 0  # flush() calls so far: a (re)start unholds only if none came while it ran
        self._last_callback = 0.0
        self._lock = threading.Lock()
        # the resampler has its own lock: write() resamples outside `_lock`, so the PortAudio callback is never
        # kept waiting while a chunk is converted (that made it miss deadlines at 48 kHz)
        self._resample_lock = threading.Lock()
        self._resampler: StreamResampler | None = None
        self._dev_rate = rate
        self._lead = frame_samples(rate, cfg.output_prebuffer_ms)
        self._max_queued = round(rate * cfg.playback_buffer_s)
        self._reset_buffer()

    def _reset_buffer(self) -> None:
        """Forget queued audio and the played position (with the lock held, or before the stream exists)."""
        self._chunks: deque[np.ndarray] = deque()
        self._queued = 0  # device-rate samples in _chunks
        self._written = 0  # `rate` samples written since flush
        self._prebuffering = True
        self._hold = False  # flush() asked the supervisor to discard what the device holds; play nothing yet
        self._last_write_at = 0.0
        self._starved = False  # the buffer ran dry after playing: the next write is an underrun
        # (DAC time of a block's first sample, its frames, how many of them are our audio, its level in dBFS)
        self._blocks: deque[tuple[float, int, int, float]] = deque()
        self._played_early = 0  # device samples of audio in blocks dropped from _blocks (all played)
        if self._resampler is not None:
            with self._resample_lock:
                self._resampler.reset()

    # ---- life cycle ------------------------------------------------------------------------------------------

    def __enter__(self) -> Playback:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> Playback:
        await asyncio.wrap_future(self._begin())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        """Open and start the output stream (waits for it; from an event loop use `async with`). Raises
        AudioDeviceError naming the fix."""
        self._begin().result()

    def _begin(self) -> concurrent.futures.Future[None]:
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._supervisor = threading.Thread(target=self._supervise, name="playback", daemon=True)
        self._supervisor.start()
        return self._started

    def close(self) -> None:
        """Stop playing at once (queued audio is dropped) and release the device; never waits on PortAudio."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._loop is None and self._supervisor is not None:  # a plain script: let the close finish
            self._supervisor.join(devices.CALL_TIMEOUT_S * 2)

    def suspend(self) -> concurrent.futures.Future[None]:
        """Close the stream for a device switch (PortAudio is about to restart); done once it is released.
        write() keeps queueing meanwhile: the unplayed rest of a reply plays on the new device after resume()
        (only what the old device had buffered, at most its latency, is skipped; it counts as played)."""
        return self._ask_switch(True)

    def resume(self) -> concurrent.futures.Future[None]:
        """Reopen on the (new) default device after suspend(); done once it plays, or once it failed (then the
        speaker is lost: reported and retried as when unplugged)."""
        return self._ask_switch(False)

    def _ask_switch(self, suspend: bool) -> concurrent.futures.Future[None]:
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._wake:
            if self._closing or self._supervisor is None or not self._supervisor.is_alive():
                done.set_result(None)  # nothing to switch: no stream will open again
            else:
                self._switches.append((suspend, done))
                self._wake.notify()
        return done

    @property
    def ok(self) -> bool:
        """Whether a speaker is open and playing (False while it is lost and being retried)."""
        return self._ok

    # ---- the supervisor thread: every stream call ------------------------------------------------------------

    def _supervise(self) -> None:
        try:
            self._open()
        except AudioDeviceError as e:
            self._started.set_exception(e)
            return
        self._started.set_result(None)
        retry_at = 0.0
        while True:
            with self._wake:
                self._wake.wait_for(
                    lambda: self._closing or self._restart_wanted or self._lost or bool(self._switches), WATCH_S
                )
                closing, restart = self._closing, self._restart_wanted
                self._restart_wanted = False
                switches, self._switches = self._switches, []
            if closing:
                for _, done in switches:
                    _settle(done)
                break
            try:
                for suspend, done in switches:
                    try:
                        self._switch(suspend)
                    finally:
                        _settle(done)
                if not self._suspended:
                    retry_at = self._step(restart, retry_at)
            except Exception:  # a surprise from PortAudio must not end supervision: the next round looks again
                log.exception("the speaker's supervisor failed")
        self._ok = False
        stream, self._stream = self._stream, None
        if stream is not None:
            self._release(stream)

    def _step(self, restart: bool, retry_at: float) -> float:
        """One round of supervision; returns when to retry a lost device next."""
        if self._stream is None:
            if time.monotonic() >= retry_at:
                retry_at = time.monotonic() + self.cfg.device_retry_s
                self._reopen_lost()
            return retry_at
        stuck = time.monotonic() - self._last_callback > NO_CALLBACK_S
        if self._lost or stuck:
            self._recover("stopped by itself" if self._lost else f"no callback for {NO_CALLBACK_S:g} s")
            return time.monotonic() + self.cfg.device_retry_s
        if restart:
            self._restart()
        return retry_at

    def _open(self) -> None:
        """Choose the device, open and start a stream on it (supervisor thread; each call bounded)."""
        device = devices.call(lambda: devices.pick(self.cfg.output_device, "output"), "listing output devices")
        fmt = devices.call(
            lambda: devices.negotiate(device, "output", self.rate, "float32", self.cfg.device_rate),
            "checking the output format",
        )
        if self.format != fmt:
            with self._lock:
                self._resampler = StreamResampler(self.rate, fmt.rate) if fmt.rate != self.rate else None
                self._dev_rate = fmt.rate
                self._reset_buffer()
        self.device, self.format = device, fmt
        self._max_queued = round(fmt.rate * self.cfg.playback_buffer_s)
        sd = devices._sounddevice()
        self._generation += 1
        generation, self._lost = self._generation, False
        flushes = self._flush_count()
        with self._lock:  # before the stream exists: its callbacks (and writes from now on) count toward it
            self.device_starved = 0
        try:
            stream = devices.open_stream(
                lambda: sd.OutputStream(
                    device=device.index,
                    samplerate=fmt.rate,
                    channels=fmt.channels,
                    dtype="float32",
                    blocksize=frame_samples(fmt.rate, self.cfg.block_ms),
                    latency=self.device_latency,
                    callback=lambda *a: self._callback(generation, *a),
                    finished_callback=lambda: self._finished(generation),
                ),
                "opening the output stream",
            )
        except (sd.PortAudioError, ValueError) as e:
            raise devices.describe_open_error(device, "output", e) from e
        self.output_latency_s = float(stream.latency)
        self._last_callback = time.monotonic()  # counts from the start: the first call may take a moment
        self._stream = stream
        try:
            devices.call(stream.start, "starting the output stream")
        except (sd.PortAudioError, AudioDeviceError) as e:
            self._stream = None
            self._release(stream)
            raise devices.describe_open_error(device, "output", e) from e
        self._last_callback = time.monotonic()  # start() can take a while on a busy sound server
        self._unhold(flushes)
        self._ok = True
        log.info(
            "speaker open: %s (device %d) at %d Hz x%d, latency %.0f ms",
            device.name,
            device.index,
            fmt.rate,
            fmt.channels,
            self.output_latency_s * 1000,
        )

    def _flush_count(self) -> int:
        with self._lock:
            return self._flushes

    def _unhold(self, flushes: int) -> None:
        """A (re)started stream may play, unless flush() came since `flushes` was read: its restart is still to
        come, and what the stream took before it would be cut off by the abort."""
        with self._lock:
            if self._flushes == flushes:
                self._hold = False

    def _release(self, stream: Any) -> None:
        self._generation += 1  # its finished callback is ours, not a loss
        devices.release(stream, "the output stream")

    def _restart(self) -> None:
        """After flush(): abort and restart the stream, discarding what PortAudio and the server hold (or reopen
        it with a larger device buffer, when the device ran dry with audio queued)."""
        if self.device_starved >= DEVICE_STARVED_RUNS and self.output_latency_s < MAX_DEVICE_LATENCY_S:
            self.device_latency = min(MAX_DEVICE_LATENCY_S, max(2 * self.output_latency_s, 0.05))
            log.info(
                "the speaker ran dry %d times with audio queued (a busy machine); its buffer is now %.0f ms",
                self.device_starved,
                self.device_latency * 1000,
            )
            self._reopen("failed to reopen with a larger buffer")
            return
        stream = self._stream
        t0 = time.monotonic()
        flushes = self._flush_count()
        self._restarting = True
        try:
            devices.call(stream.abort, "stopping the output stream")
            devices.call(stream.start, "restarting the output stream")
        except Exception as e:
            self._restarting = False
            self._recover(f"failed on restart after flush ({e})")
            return
        self._restarting = False
        self._last_callback = time.monotonic()
        self._unhold(flushes)
        log.debug("flush took %.1f ms", (time.monotonic() - t0) * 1000)

    def _recover(self, why: str) -> None:
        """The stream died, stalled or hung: abandon it and open a new one at once (queued audio is kept: PortAudio's
        ALSA backend loses streams this way on an overloaded machine). If that fails, the device is lost."""
        if self._reopen(why):
            self.restarts += 1
            log.warning("speaker stream %s; reopened it (%d so far)", why, self.restarts)

    def _reopen(self, why: str) -> bool:
        """Replace the stream with a new one; write() keeps queueing meanwhile (the speaker is not lost: a reply's
        first chunk after flush must not vanish). False, with the loss reported, if no stream opens."""
        stream, self._stream = self._stream, None
        if stream is not None:
            self._release(stream)
        try:
            self._open()
        except AudioDeviceError as e:
            self._lose(why, e)
            return False
        return True

    def _switch(self, suspend: bool) -> None:
        """Supervisor: close the stream for a device switch, or reopen it on the (new) default afterwards."""
        if suspend and not self._suspended:
            self._suspended = True
            stream, self._stream = self._stream, None
            if stream is not None:
                # what it held unplayed (at most its latency) still counts as played: positions after the switch
                # keep matching the written audio (the echo canceller's reference depends on it)
                self._release(stream)
        elif not suspend and self._suspended:
            self._suspended = False
            was_ok = self._ok
            try:
                self._open()
            except AudioDeviceError as e:
                if was_ok:
                    self._lose("could not be opened after the default device changed", e)
                return
            if not was_ok:
                self._send(DeviceStatus("output", True, "speaker is back", time.monotonic()))

    def _forget_unplayed(self, now: float) -> None:
        """The stream is gone (`_lock` held): what it was handed but had not played by `now` was never heard."""
        while self._blocks and self._blocks[-1][0] >= now:  # handed over but never reached the DAC
            self._blocks.pop()
        if self._blocks:  # the block at the DAC when it went: heard up to now
            dac, frames, n, level = self._blocks.pop()
            heard = min(n, max(0, round((now - dac) * self._dev_rate)))
            self._blocks.append((dac, frames, heard, level))

    def _lose(self, why: str, e: AudioDeviceError) -> None:
        """No speaker: drop the queued audio (played_samples stays at what was heard) and report it."""
        now = time.monotonic()
        self._ok = False
        with self._lock:
            self._chunks.clear()
            self._queued = 0
            self._hold = False
            self._starved = False
            self._forget_unplayed(now)
        name = self.device.name if self.device else "?"
        message = (
            f"speaker {name!r} {why} (device unplugged or the sound server went away); replies are text only until "
            f"it is back (retrying every {self.cfg.device_retry_s:g} s); reconnect it or choose another with "
            f"audio.output_device"
        )
        log.error("%s: %s", message, e)
        self._send(DeviceStatus("output", False, message, now))

    def _reopen_lost(self) -> None:
        try:
            self._open()
        except AudioDeviceError as e:
            log.debug("reopening the speaker failed: %s", e)
            return
        self._send(DeviceStatus("output", True, "speaker is back", time.monotonic()))

    def _send(self, status: DeviceStatus) -> None:
        report, loop = self.report, self._loop
        if report is None:
            return
        if loop is None:
            report(status)
            return
        try:
            loop.call_soon_threadsafe(report, status)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    # ---- the caller's thread ------------------------------------------------------------------------------

    @property
    def block_samples(self) -> int:
        """Samples at `rate` in one audio block: flush() silences the output within this many."""
        return frame_samples(self.rate, self.cfg.block_ms)

    def write(self, chunk: np.ndarray) -> None:
        """Queue float32 mono samples at `rate` for playback; returns at once. While the speaker is lost the chunk
        is discarded (the loss was reported)."""
        if not isinstance(chunk, np.ndarray) or chunk.ndim != 1 or chunk.dtype != np.float32:
            what = f"{chunk.dtype} {chunk.shape}" if isinstance(chunk, np.ndarray) else type(chunk).__name__
            raise InputError(f"Playback.write expects a 1-D float32 array at {self.rate} Hz, got {what}")
        if self._supervisor is None:
            raise AudioDeviceError("the speaker is not open; call Playback.start() first")
        if not self._ok:
            return
        now = time.monotonic()
        self.pacer.note(now, len(chunk) / self.rate)
        with self._resample_lock:
            resampler = self._resampler
            out = resampler.push(chunk) if resampler is not None else chunk.copy()
        with self._lock:
            if resampler is not self._resampler:  # a reopen changed the device rate meanwhile (its queue is gone)
                return
            if self._queued + len(out) > self._max_queued:
                self.overflows += 1
                log.warning("playback buffer full (%.0f s queued): a chunk was dropped", self.cfg.playback_buffer_s)
                return
            if self._starved:
                self.underruns += 1
                self._starved, self._prebuffering = False, True
                self._lead = round(self.pacer.lead_s() * self._dev_rate)
            if len(out):
                self._chunks.append(out)
                self._queued += len(out)
                self._last_write_at = now
            self._written += len(chunk)

    def flush(self) -> None:
        """Drop all queued audio, also what the device has buffered: silence within one audio block (barge-in).
        Resets `played_samples`. Returns at once; the supervisor restarts the stream."""
        with self._lock:
            self._reset_buffer()
            self._lead = round(self.pacer.lead_s() * self._dev_rate)
            self._hold = True  # until the supervisor's restart (or reopen) after this flush has run
            self._flushes += 1
        self.pacer.new_run()
        with self._wake:
            self._restart_wanted = True
            self._wake.notify()

    @property
    def played_samples(self) -> int:
        """Samples (at `rate`) of the audio written since the last flush() that have reached the DAC by now."""
        return self.played_before(time.monotonic())

    def played_before(self, t: float) -> int:
        """Samples (at `rate`) of the current run (since flush) that had reached the DAC by monotonic time `t`."""
        with self._lock:
            played = self._played_early
            for dac, _, n, _ in self._blocks:
                if dac >= t:
                    break
                played += min(n, round((t - dac) * self._dev_rate))
            return min(self._written, round(played * self.rate / self._dev_rate))

    def level_at(self, t: float) -> float:
        """dBFS of what the speaker played around monotonic time `t` (SILENT_DBFS for silence or unknown)."""
        with self._lock:
            for dac, frames, _, level in reversed(self._blocks):
                if dac <= t < dac + frames / self._dev_rate:
                    return level
                if dac + frames / self._dev_rate <= t:
                    break
        return SILENT_DBFS

    @property
    def last_sample_time(self) -> float | None:
        """DAC time of the last sample of the run once nothing is left queued (None while audio waits to play,
        or when nothing was played since flush)."""
        with self._lock:
            if self._queued or (self._resampler is not None and self._resampler.pending):
                return None
            for dac, _, n, _ in reversed(self._blocks):
                if n:
                    return dac + n / self._dev_rate
        return None

    @property
    def first_sample_dac_time(self) -> float | None:
        """DAC time of the first sample of the run (None until it was handed to the device)."""
        with self._lock:
            for dac, _, n, _ in self._blocks:
                if n:
                    return dac
        return None

    @property
    def queued_s(self) -> float:
        """Seconds of audio written but not yet handed to the device."""
        with self._lock:
            return self._queued / self._dev_rate

    # ---- PortAudio thread ----------------------------------------------------------------------------------

    def _finished(self, generation: int) -> None:
        """PortAudio: a stream stopped. Expected when we stop it; otherwise the device is gone."""
        if generation == self._generation and not self._restarting and not self._closing:
            with self._wake:
                self._lost = True
                self._wake.notify()

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

    def _callback(self, generation: int, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if generation != self._generation:  # a released stream, still calling back while it closes: play nothing
            outdata.fill(0.0)
            return
        now = self._last_callback = time.monotonic()
        # PortAudio's clock is not ours: carry over the delay until this block is heard. A fresh stream primes its
        # buffer with back-to-back calls, the first at the DAC now (delay 0): that block is not a latency late
        delay = time_info.outputBufferDacTime - time_info.currentTime
        known = time_info.currentTime > 0.0 and 0.0 <= delay < 1.0  # 0.0 times: the host API gives none
        dac = now + (delay if known else self.output_latency_s)
        with self._lock:
            if status.output_underflow:
                self.underruns += 1
                if self._queued:
                    self.device_starved += 1
            # play once the lead is queued, or when writes have paused (the run may be all there is)
            if (
                self._prebuffering
                and self._queued
                and not self._hold
                and (self._queued >= self._lead or now - self._last_write_at >= max(self._lead / self._dev_rate, 0.1))
            ):
                self._prebuffering = False
            n = 0 if self._prebuffering or self._hold else self._take(outdata, frames)
            if n < frames and not self._prebuffering and self._resampler is not None and self._tail_flushed():
                n += self._take(outdata[n:], frames - n)
            if n < frames:
                outdata[n:] = 0.0
            # what the speaker plays then, for level_at and the VAD's barge-in margin
            rms = float(np.sqrt(np.mean(np.square(outdata[:, 0])))) if frames else 0.0
            self.level_dbfs = max(SILENT_DBFS, 20.0 * float(np.log10(rms))) if rms > 0 else SILENT_DBFS
            if n:
                self._blocks.append((dac, frames, n, self.level_dbfs))
            while self._blocks and self._blocks[0][0] < now - HISTORY_S:
                self._played_early += self._blocks.popleft()[2]
            if n < frames and not self._prebuffering and not self._queued and self._written:
                self._starved = True

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
