"""Following the system's default device (assistant/audio/follow.py) without a sound system.

The probes' parsing (CoreAudio through a ctypes double with the C signature, `pactl info` text), the choice of
probe per platform and mode, and the switch itself with the real Capture and Playback over stream doubles
(tests/audio_doubles.py): PortAudio restarts only once both streams are closed, the reply in flight goes on on
the new stream in order, captured blocks survive the switch, and a restart that hangs is abandoned.
"""

from __future__ import annotations

import asyncio
import ctypes
import time
from typing import Any

import numpy as np
import pytest

from assistant.audio import devices, follow
from assistant.audio.capture import Capture
from assistant.audio.follow import DefaultFollower, Defaults
from assistant.audio.format import AudioBlock
from assistant.audio.playback import Playback
from assistant.config import AudioConfig
from assistant.daemon import ReopeningSource
from assistant.errors import AudioDeviceError
from assistant.events import DeviceStatus
from tests import audio_doubles
from tests.audio_doubles import FakeSounddevice
from tests.test_audio_faults import RESPONSIVE_S, longest_stall, until

OLD, NEW = Defaults("mic", "speaker"), Defaults("headset", "headphones")


class RestartingSounddevice(FakeSounddevice):
    """The double plus PortAudio's restart: records which of our streams were still active when it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.restarts: list[list[bool]] = []  # per restart: `active` of every stream opened so far

    def _terminate(self) -> None:
        self._maybe_hang("terminate")
        self.restarts.append([s.active for s in self.streams])

    def _initialize(self) -> None:
        return None


@pytest.fixture
def sd(monkeypatch: pytest.MonkeyPatch) -> Any:
    double = RestartingSounddevice()
    audio_doubles.install(monkeypatch, double)
    yield double
    double.release()


# ---- probes -----------------------------------------------------------------------------------------------


def test_fourcc_matches_the_coreaudio_headers() -> None:
    """The four-character codes become the UInt32 values AudioHardware.h gives them."""
    assert follow.DEFAULT_OUTPUT == 0x644F7574  # 'dOut'
    assert follow.DEFAULT_INPUT == 0x64496E20  # 'dIn '
    assert follow.SCOPE_GLOBAL == 0x676C6F62  # 'glob'


def coreaudio_double(ids: dict[int, int], status: int = 0) -> tuple[Any, list[tuple[int, ...]]]:
    """AudioObjectGetPropertyData as a C function pointer: answers `ids[selector]`, records each call."""
    calls: list[tuple[int, ...]] = []

    def get(obj: int, address: Any, qsize: int, qualifier: Any, size: Any, out: int) -> int:
        a = address.contents
        calls.append((obj, a.mSelector, a.mScope, a.mElement, qsize, qualifier is None, size.contents.value))
        if status == 0:
            ctypes.c_uint32.from_address(out).value = ids[a.mSelector]
        return status

    return follow.GetPropertyData(get), calls


def test_coreaudio_probe_reads_both_defaults_of_the_system_object() -> None:
    """The probe asks the system object (1) for 'dIn ' and 'dOut' in the global scope, main element, with no
    qualifier and a 4-byte buffer, and returns the device IDs it writes."""
    fn, calls = coreaudio_double({follow.DEFAULT_INPUT: 73, follow.DEFAULT_OUTPUT: 91})
    assert follow.coreaudio_probe(fn)() == Defaults("73", "91")
    glob = follow.SCOPE_GLOBAL
    assert calls == [(1, follow.DEFAULT_INPUT, glob, 0, 0, True, 4), (1, follow.DEFAULT_OUTPUT, glob, 0, 0, True, 4)]


def test_coreaudio_probe_failure_names_the_status_and_the_fix() -> None:
    """A non-zero OSStatus is an AudioDeviceError naming it and how to stop asking."""
    fn, _ = coreaudio_double({}, status=560947818)  # '!obj'
    with pytest.raises(AudioDeviceError, match=r"OSStatus 560947818.*follow_default = off"):
        follow.coreaudio_probe(fn)()


def test_pactl_info_gives_the_default_source_and_sink() -> None:
    """`pactl info` text gives (source, sink); without them the error says what is missing."""
    text = "Server String: unix:/run/native\nDefault Sink: room_headphones\nDefault Source: room_mic.monitor\n"
    assert follow.parse_pactl_info(text) == Defaults("room_mic.monitor", "room_headphones")
    with pytest.raises(AudioDeviceError, match="no default sink and source"):
        follow.parse_pactl_info("Server String: x\n")


def test_probe_choice_per_platform_and_mode() -> None:
    """auto leaves PulseAudio to move streams itself, reinit polls pactl on Linux, off polls nothing, and a
    platform without a probe says in its line that the default is not followed."""
    assert follow.choose_probe("auto", "linux")[0] is None
    assert "sound server" in follow.choose_probe("auto", "linux")[1]
    assert follow.choose_probe("reinit", "linux")[0] is follow.pulse_defaults
    assert follow.choose_probe("off", "darwin")[0] is None
    probe, line = follow.choose_probe("auto", "win32")
    assert probe is None and "not followed on win32" in line


# ---- the switch, with the real Capture and Playback over stream doubles -------------------------------------


def ramp(n: int, start: int = 0) -> np.ndarray:
    """Distinct non-zero samples, so their order on the device can be checked."""
    return ((np.arange(start, start + n) % 1000) + 1).astype(np.float32) / 2000


def test_switch_during_a_reply_restarts_portaudio_between_streams_and_the_reply_goes_on(
    sd: RestartingSounddevice,
) -> None:
    """The default output changes while a reply plays: both streams are closed before PortAudio restarts, new
    ones open, and the reply's samples reach the devices in order with none dropped from our queue; writes
    during the switch are kept, and once all is played the played position is the whole reply."""
    cfg = AudioConfig()
    reply = ramp(24_000 * 2)

    async def scenario() -> tuple[int, int, int]:
        source = ReopeningSource(lambda: Capture(cfg))
        async with Playback(cfg) as out:
            await source.read()  # the microphone is open
            follower = DefaultFollower(source, out, lambda: NEW)
            out.write(reply[:24_000])
            await until(lambda: out.played_samples > 2400)
            switching = asyncio.create_task(follower.switch(OLD, NEW))
            out.write(reply[24_000:])  # generation goes on while the switch runs
            await switching
            await until(lambda: out.queued_s == 0 and out.played_samples > 0, 10.0)
            await asyncio.sleep(0.1)
            played, written = out.played_samples, len(reply)
        await source.aclose()
        return played, written, follower.switches

    stall, result = asyncio.run(longest_stall(scenario()))
    assert not isinstance(result, BaseException), result
    played, written, switches = result
    assert stall < RESPONSIVE_S, stall
    assert switches == 1
    assert sd.restarts == [[False, False]], sd.restarts  # both old streams closed when PortAudio restarted
    outputs = [s for s in sd.streams if s.kind == "output"]
    assert len(outputs) == 2 and len([s for s in sd.streams if s.kind == "input"]) == 2
    heard = np.concatenate([b for s in outputs for b in s.heard])
    np.testing.assert_array_equal(heard[heard != 0], reply)  # all of it, in order, across both devices
    assert played == written


def test_switch_during_capture_keeps_the_blocks_already_captured(sd: RestartingSounddevice) -> None:
    """Blocks captured before the switch and not yet read are still read after it, in order, followed by
    blocks from the new input stream; the reader never sees a device error."""
    cfg = AudioConfig()

    async def scenario() -> tuple[list[AudioBlock], float, float]:
        source = ReopeningSource(lambda: Capture(cfg))
        async with Playback(cfg) as out:
            await source.read()
            capture = source._capture
            assert isinstance(capture, Capture)
            await until(lambda: len(capture._blocks) >= 5)  # the reader is busy elsewhere: blocks wait
            began = time.monotonic()
            await DefaultFollower(source, out, lambda: NEW).switch(OLD, NEW)
            ended = time.monotonic()
            blocks = [await source.read()]
            while blocks[-1].t < ended and len(blocks) < 5000:  # the kept blocks, then the new stream's
                blocks.append(await source.read())
        await source.aclose()
        return blocks, began, ended

    blocks, began, ended = asyncio.run(scenario())
    times = [b.t for b in blocks]
    assert times == sorted(times)
    assert sum(t < began for t in times) >= 5  # captured before the switch, read after it
    assert times[-1] >= ended  # then blocks of the new stream
    inputs = [s for s in sd.streams if s.kind == "input"]
    assert len(inputs) == 2


def test_a_hung_restart_is_abandoned_and_the_devices_come_back(sd: RestartingSounddevice) -> None:
    """PortAudio's restart never returns: the switch gives up within its bound with the loop responsive, the
    speaker is reported lost (it cannot reopen while the restart holds PortAudio), and once the restart returns
    the speaker reopens by itself (reported back) and the microphone reopens on the next read."""
    sd.hang = {"terminate"}
    cfg = AudioConfig(device_retry_s=0.5)
    reports: list[DeviceStatus] = []

    async def scenario() -> tuple[float, int]:
        source = ReopeningSource(lambda: Capture(cfg))
        async with Playback(cfg, report=reports.append) as out:
            await source.read()
            began = time.monotonic()
            await DefaultFollower(source, out, lambda: NEW).switch(OLD, NEW)
            took = time.monotonic() - began
            with pytest.raises(AudioDeviceError):  # the microphone could not reopen: the daemon's retry takes over
                while True:
                    await source.read()
            sd.release()  # the restart returns
            await until(lambda: [r.ok for r in reports] == [False, True])
            await source.read()  # reopened
            opened = len(sd.streams)
        await source.aclose()
        return took, opened

    stall, result = asyncio.run(longest_stall(scenario()))
    assert not isinstance(result, BaseException), result
    took, opened = result
    assert stall < RESPONSIVE_S, stall
    assert took < 3 * follow.SWITCH_S, took  # bounded: close, restart and reopen each give up at SWITCH_S
    assert [(r.kind, r.ok) for r in reports] == [("output", False), ("output", True)], reports
    assert opened == 4  # the first pair, then a new speaker and a new microphone once PortAudio answered
    assert devices._open_streams >= 0
