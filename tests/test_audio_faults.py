"""Sound-system faults without a sound system: stream doubles whose calls hang, fail or die (tests/audio_doubles.py).

Proves that no PortAudio call holds up the event loop, that a lost speaker is reported and recovered, and what
Playback says about the audio it played (played_before, level_at, last_sample_time) on a hand-driven clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from assistant.audio import devices
from assistant.audio import playback as playback_mod
from assistant.audio.capture import Capture
from assistant.audio.playback import DEVICE_STARVED_RUNS, SILENT_DBFS, Pacer, Playback
from assistant.config import AudioConfig
from assistant.daemon import ReopeningSource
from assistant.errors import AudioDeviceError
from assistant.events import DeviceStatus
from tests import audio_doubles
from tests.audio_doubles import FakeSounddevice

RESPONSIVE_S = 0.5  # the loop's longest stall allowed; a PortAudio call on it would stall >= 1.5 s (or forever)


@pytest.fixture
def sd(monkeypatch: pytest.MonkeyPatch) -> Any:
    double = FakeSounddevice()
    audio_doubles.install(monkeypatch, double)
    yield double
    double.release()


async def longest_stall(work: Awaitable[Any]) -> tuple[float, Any]:
    """Run `work` while a ticker measures the event loop's longest stall; returns (stall s, work's result or
    exception)."""
    stall, last, done = 0.0, time.monotonic(), False

    async def tick() -> None:
        nonlocal stall, last
        while not done:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            stall, last = max(stall, now - last), now

    ticker = asyncio.create_task(tick())
    try:
        result: Any = await work
    except Exception as e:
        result = e
    done = True
    await ticker
    return stall, result


async def until(cond: Callable[[], bool], limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.01)


def test_hung_start_neither_blocks_the_loop_nor_opens(sd: FakeSounddevice) -> None:
    """Streams whose start() never returns: opening the microphone and the speaker fails with a message naming
    the fix after the call bound, and the event loop keeps running throughout."""
    sd.hang = {"start", "stop", "abort", "close"}
    cfg = AudioConfig()

    async def open_both() -> list[Any]:
        results = []
        for make in (lambda: Capture(cfg), lambda: Playback(cfg)):
            try:
                async with make():
                    results.append("opened")
            except AudioDeviceError as e:
                results.append(e)
        return results

    stall, results = asyncio.run(longest_stall(open_both()))
    assert stall < RESPONSIVE_S, stall
    assert [type(r) for r in results] == [AudioDeviceError, AudioDeviceError], results
    assert "did not return within" in str(results[0]) and "audio.input_device" in str(results[0])
    assert "audio.output_device" in str(results[1])


def test_retrying_a_wedged_sound_server_strands_a_bounded_number_of_threads(
    sd: FakeSounddevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While every PortAudio call hangs, retrying the lost microphone starts no new call once MAX_HUNG abandoned
    ones still hang (each retry stranded one more thread, ~1 a second for as long as the sound server stayed
    wedged); once they return, the next retry opens it again."""
    monkeypatch.setattr(devices, "MAX_HUNG", 1)  # each hung call costs the call bound (1.5 s)
    cfg = AudioConfig()

    def stranded() -> int:
        return sum(t.name == "portaudio: opening the input stream" for t in threading.enumerate())

    async def body() -> tuple[list[int], int]:
        source = ReopeningSource(lambda: Capture(cfg))
        await source.read()
        sd.hang = {"open", "start", "stop", "abort", "close"}
        for stream in list(sd.streams):
            stream.die()
        counts = []
        for _ in range(30):  # retries, as the conversation makes them every audio.device_retry_s
            with contextlib.suppress(AudioDeviceError):
                await source.read()
            counts.append(stranded())
        sd.hang = set()
        sd.release()  # the sound server answers again: the hung calls return
        await until(lambda: devices._hung_now == 0)
        block = await source.read()
        await source.aclose()
        return counts, len(block.samples)

    counts, samples = asyncio.run(body())
    assert max(counts) == 1, counts  # 30 before
    assert samples > 0


def test_speaker_lost_with_hanging_calls_is_reported_and_recovered(sd: FakeSounddevice) -> None:
    """The speaker's stream dies and every call on it (and on new streams) hangs: the loop stays responsive,
    write/flush/played_samples return at once, DeviceStatus(output, ok=False) is reported with the queued audio
    dropped and played_samples kept at what was heard; when calls work again it reopens and reports ok=True,
    and close() returns at once."""
    cfg = AudioConfig(device_retry_s=0.5)
    reports: list[DeviceStatus] = []

    async def scenario() -> tuple[int, int, int, int, bool]:
        async with Playback(cfg, report=reports.append) as out:
            out.write(np.full(24_000 * 5, 0.25, dtype=np.float32))  # 5 s: far more than plays before the loss
            await until(lambda: out.played_samples > 2400)
            sd.hang = {"open", "start", "stop", "abort", "close"}
            sd.streams[-1].die()
            out.write(np.full(4800, 0.25, dtype=np.float32))
            await until(lambda: bool(reports))
            heard = out.played_samples
            await asyncio.sleep(0.2)
            heard_later, queued, ok_while_lost = out.played_samples, round(out.queued_s * 24_000), out.ok
            assert heard_later == heard  # nothing more is heard once the speaker is gone
            out.flush()
            out.write(np.full(4800, 0.25, dtype=np.float32))  # discarded: no speaker
            sd.hang = set()
            sd.release()  # the abandoned calls return; new ones work
            await until(lambda: len(reports) == 2)
            out.flush()
            out.write(np.full(4800, 0.25, dtype=np.float32))
            await until(lambda: out.played_samples > 0)
            began = time.monotonic()
        closed_in = round((time.monotonic() - began) * 1000)
        return heard, queued, out.underruns, closed_in, ok_while_lost

    stall, result = asyncio.run(longest_stall(scenario()))
    assert not isinstance(result, BaseException), result
    heard, queued, _, closed_ms, ok_while_lost = result
    assert stall < RESPONSIVE_S, stall
    assert [(r.kind, r.ok) for r in reports] == [("output", False), ("output", True)], reports
    assert "audio.output_device" in reports[0].message and "text only" in reports[0].message
    assert 2400 < heard < 24_000 * 5 and queued == 0 and not ok_while_lost
    assert closed_ms < 100, closed_ms


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_played_position_level_and_last_sample_follow_the_dac(
    sd: FakeSounddevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a hand-driven clock (blocks of 480 samples at 24 kHz, 50 ms DAC delay): played_before(t) counts the
    samples at the DAC by t, level_at(t) is the level of the block playing then (silence before and after),
    last_sample_time is None while audio waits and the DAC time of the last sample once it is all handed over."""
    clock = Clock()
    monkeypatch.setattr(playback_mod, "time", clock)
    sd.running = False
    cfg = AudioConfig(output_prebuffer_ms=0)
    out = Playback(cfg)
    out.start()
    stream = sd.streams[-1]
    out.write(np.full(480, 0.5, dtype=np.float32))
    out.write(np.full(480, 0.25, dtype=np.float32))
    assert out.last_sample_time is None  # queued, not handed over
    stream.tick(clock.now)  # block 1 -> DAC at 1000.05
    clock.now += 0.02
    stream.tick(clock.now)  # block 2 -> DAC at 1000.07
    clock.now += 0.02
    stream.tick(clock.now)  # silence
    out.close()
    assert out.played_before(1000.05) == 0
    assert out.played_before(1000.06) == 240
    assert out.played_before(1000.08) == 720
    assert out.played_before(1000.2) == 960
    assert out.level_at(1000.06) == pytest.approx(20 * np.log10(0.5), abs=0.01)
    assert out.level_at(1000.08) == pytest.approx(20 * np.log10(0.25), abs=0.01)
    assert out.level_at(1000.04) == SILENT_DBFS and out.level_at(1000.1) == SILENT_DBFS
    assert out.last_sample_time == pytest.approx(1000.09)
    assert out.first_sample_dac_time == pytest.approx(1000.05)


def test_a_primed_stream_places_its_first_block_at_the_dac_now(
    sd: FakeSounddevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 22: a freshly (re)opened stream fills its buffer with back-to-back callbacks, the first at the DAC
    now (delay 0, as PulseAudio's ALSA plugin reports it), the next 20 and 40 ms later; each block is placed at
    its own DAC time, so the reply's first samples count as played (echo gate and canceller reference) from the
    moment they sound, not one device latency later (the old rule took delay 0 for "no timing")."""
    clock = Clock()
    monkeypatch.setattr(playback_mod, "time", clock)
    sd.running = False
    out = Playback(AudioConfig(output_prebuffer_ms=0))
    out.start()
    out.output_latency_s = 0.25  # a stream reopened with the largest device buffer
    stream = sd.streams[-1]
    for level in (0.5, 0.25, 0.125):
        out.write(np.full(480, level, dtype=np.float32))
    for delay in (0.0, 0.02, 0.04):  # priming: one call after the other at the same moment
        sd.dac_delay_s = delay
        stream.tick(clock.now)
    out.close()
    assert out.played_before(1000.01) == 240, "the first block sounds from now"
    assert out.played_before(1000.05) == 1200
    assert out.level_at(1000.01) == pytest.approx(20 * np.log10(0.5), abs=0.01)
    assert out.level_at(1000.03) == pytest.approx(20 * np.log10(0.25), abs=0.01)
    assert out.first_sample_dac_time == pytest.approx(1000.0)
    assert out.last_sample_time == pytest.approx(1000.06)


def test_a_stream_without_timing_places_blocks_one_latency_ahead(
    sd: FakeSounddevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host API that gives no timing (PortAudio's times all 0) has each block heard one reported output
    latency after its callback."""
    clock = Clock()
    monkeypatch.setattr(playback_mod, "time", clock)
    sd.running = False
    out = Playback(AudioConfig(output_prebuffer_ms=0))
    out.start()
    stream = sd.streams[-1]
    out.write(np.full(480, 0.5, dtype=np.float32))
    out_block = np.zeros((480, 1), dtype=np.float32)
    stream.callback(out_block, 480, audio_doubles.TimeInfo(0.0, 0.0, 0.0), audio_doubles.Status())
    out.close()
    assert out.first_sample_dac_time == pytest.approx(1000.0 + out.output_latency_s)


def test_pacer_buffers_further_ahead_when_generation_nears_real_time() -> None:
    """Chunks generated 4x faster than real time need only the base lead; chunks at 0.95x real time with a
    stall leave a lead that covers the deficit they built up; a run break is not generation time; the lead is
    capped."""
    frame = 0.08  # one 12.5 Hz TTS frame

    def lead(per_frame_s: list[float], base: float = 0.04) -> float:
        pacer, t = Pacer(base), 0.0
        for dt in per_frame_s:
            t += dt
            pacer.note(t, frame)
        return pacer.lead_s()

    assert lead([0.02] * 50) == pytest.approx(0.04)
    slow = [frame / 0.95] * 50 + [0.5] + [frame / 0.95] * 20  # near real time, one 0.5 s stall
    deficit = 70 * (frame / 0.95 - frame) + (0.5 - frame)
    assert lead(slow) == pytest.approx(0.04 + deficit, rel=0.05)
    assert lead([0.02] * 10 + [5.0] + [0.02] * 10) == pytest.approx(0.04)  # a pause for text: a new run
    assert lead([0.9] * 100) == pytest.approx(2.0)


def test_device_buffer_grows_when_the_device_runs_dry_with_audio_queued(sd: FakeSounddevice) -> None:
    """Underflows while our queue holds audio (the callback came late: a busy machine) make the next run reopen
    the stream with twice the device buffer, capped; underflows with nothing queued change nothing."""
    sd.underflow = True  # every callback says the device ran dry
    out = Playback(AudioConfig())
    out.start()
    try:
        time.sleep(0.1)  # callbacks with nothing queued: our own gap, not the device's
        out.flush()
        time.sleep(0.1)
        assert len(sd.streams) == 1 and out.device_latency == "low"
        latencies = []
        for _ in range(4):
            opened = len(sd.streams)  # a new stream exists only once its starved count was reset
            out.write(np.full(24_000, 0.1, dtype=np.float32))
            deadline = time.monotonic() + 5
            # underflows counted with our audio queued (not every underflow: some came before the write)
            while out.device_starved < DEVICE_STARVED_RUNS and time.monotonic() < deadline:
                time.sleep(0.01)
            out.flush()
            while len(sd.streams) == opened and time.monotonic() < deadline:
                time.sleep(0.01)
            latencies.append(sd.streams[-1].latency)
        assert latencies == [0.05, 0.1, 0.2, 0.25], latencies
    finally:
        out.close()


def test_audio_written_while_the_stream_is_reopened_is_played(sd: FakeSounddevice) -> None:
    """A chunk written right after flush(), while the supervisor reopens the stream with a larger buffer (the
    new stream's start() has not returned yet), is queued and played on the new stream, not dropped."""
    sd.underflow = True
    out = Playback(AudioConfig())
    out.start()
    try:
        out.write(np.full(24_000, 0.1, dtype=np.float32))
        deadline = time.monotonic() + 10
        while out.device_starved < DEVICE_STARVED_RUNS and time.monotonic() < deadline:
            time.sleep(0.01)
        sd.hang = {"start"}
        out.flush()  # the device ran dry with audio queued: this reopens the stream
        while len(sd.streams) == 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        out.write(np.full(2400, 0.1, dtype=np.float32))  # the reply's first chunk, while start() still runs
        sd.release()
        while out.played_samples < 2400 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sd.streams[1].latency == 0.05
        assert out.played_samples == 2400, out.played_samples
    finally:
        out.close()


def test_pacer_lead_is_the_worst_run_deficit_not_a_balance_carried_over_replies() -> None:
    """A reply whose queue grew 50 ms ahead and then spent 40 of it never fell behind: the base lead does; twenty
    replies that each end 30 ms behind need 30 ms more, not 20 x 30 ms (a balance carried from reply to reply)."""
    frame = 0.08

    def lead(reply: list[float], replies: int) -> float:
        pacer, t = Pacer(0.04), 0.0
        for _ in range(replies):
            for dt in reply:
                t += dt
                pacer.note(t, frame)
            pacer.new_run()
            t += 3.0
        return pacer.lead_s()

    assert lead([0.0] + [0.07] * 5 + [0.12], 1) == pytest.approx(0.04)  # +10 ms a frame x 5, then -40 ms
    assert lead([0.0, 0.05, 0.14, 0.08], 20) == pytest.approx(0.04 + 0.03)  # +30, -60, 0: ends 30 ms behind
