"""Following the system's default input and output device (headphones plugged in) without a restart.

PortAudio fixes "the default device" when it initialises (CoreAudio does; so does any host API in PortAudio
v19), so a new default is only seen after a restart of PortAudio, which invalidates every open stream. The
follower therefore asks the system itself, every POLL_S, with a cheap probe that needs no restart:

- macOS: CoreAudio's kAudioHardwarePropertyDefaultInputDevice / DefaultOutputDevice of the system object;
- Linux with PulseAudio or PipeWire: `pactl info`'s default sink and source.

When a default it follows changed, it switches: the microphone and the speaker close their streams (keeping what
was captured and what is still to be played), PortAudio restarts, and both reopen on the new defaults. The reply
in flight goes on playing on the new device, after a pause as long as the switch; the microphone misses what is
said until it reopens (both gaps are logged). Every probe and restart runs off the event loop, bounded
(`devices.call_async`); a restart that hangs is abandoned and the streams carry on as after a lost device.

`audio.follow_default`: "auto" switches like this on macOS, leaves it to the sound server on Linux (PulseAudio
and PipeWire move our streams to the new default themselves), and says at start-up where nothing follows the
default; "reinit" switches like this wherever a probe exists; "off" never follows.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from assistant.audio import devices
from assistant.audio.playback import Playback
from assistant.config import AudioConfig
from assistant.errors import AudioDeviceError
from assistant.logs import kv

log = logging.getLogger("assistant.audio.follow")

POLL_S = 1.5  # how often the system's default is asked: a user hears the switch within this of plugging in
PROBE_S = 1.0  # pactl answers in ~10 ms; longer means the sound server is not answering (within the call bound)
SWITCH_S = 2 * devices.CALL_TIMEOUT_S  # the most each step of a switch (close, restart, reopen) may take


@dataclass(frozen=True)
class Defaults:
    """The system's default input and output, as the platform names them (compared, never interpreted)."""

    input: str
    output: str


Probe = Callable[[], Defaults]


# ---- macOS: CoreAudio through ctypes (AudioHardware.h) ------------------------------------------------------


def fourcc(code: str) -> int:
    """A CoreAudio four-character code as the UInt32 the C headers make of it ('dOut' -> 0x644F7574)."""
    return int.from_bytes(code.encode("ascii"), "big")


SYSTEM_OBJECT = 1  # kAudioObjectSystemObject
DEFAULT_INPUT = fourcc("dIn ")  # kAudioHardwarePropertyDefaultInputDevice
DEFAULT_OUTPUT = fourcc("dOut")  # kAudioHardwarePropertyDefaultOutputDevice
SCOPE_GLOBAL = fourcc("glob")  # kAudioObjectPropertyScopeGlobal
ELEMENT_MAIN = 0  # kAudioObjectPropertyElementMain (formerly ...Master)
COREAUDIO = "/System/Library/Frameworks/CoreAudio.framework/CoreAudio"


class PropertyAddress(ctypes.Structure):
    """AudioObjectPropertyAddress: three UInt32."""

    _fields_ = [("mSelector", ctypes.c_uint32), ("mScope", ctypes.c_uint32), ("mElement", ctypes.c_uint32)]


# OSStatus AudioObjectGetPropertyData(AudioObjectID, const AudioObjectPropertyAddress*, UInt32 qualifier size,
#                                     const void* qualifier, UInt32* ioDataSize, void* outData)
GET_PROPERTY_DATA_ARGS = (
    ctypes.c_uint32,
    ctypes.POINTER(PropertyAddress),
    ctypes.c_uint32,
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint32),
    ctypes.c_void_p,
)
GetPropertyData = ctypes.CFUNCTYPE(ctypes.c_int32, *GET_PROPERTY_DATA_ARGS)


def coreaudio_default(get: Callable[..., int], selector: int) -> str:
    """The AudioDeviceID of the system's default device for `selector` (DEFAULT_INPUT / DEFAULT_OUTPUT), read
    with `get` (AudioObjectGetPropertyData). AudioDeviceError when CoreAudio refuses."""
    address = PropertyAddress(selector, SCOPE_GLOBAL, ELEMENT_MAIN)
    device = ctypes.c_uint32(0)
    size = ctypes.c_uint32(ctypes.sizeof(device))
    status = get(SYSTEM_OBJECT, ctypes.byref(address), 0, None, ctypes.byref(size), ctypes.byref(device))
    if status != 0 or size.value != ctypes.sizeof(device):
        raise AudioDeviceError(
            f"CoreAudio did not tell the default device (OSStatus {status}, {size.value} bytes); "
            "set audio.follow_default = off to stop asking"
        )
    return str(device.value)


def coreaudio_probe(get: Callable[..., int] | None = None) -> Probe:
    """The macOS probe: both defaults from CoreAudio (`get` replaces AudioObjectGetPropertyData in tests)."""
    if get is None:
        fn = ctypes.CDLL(COREAUDIO).AudioObjectGetPropertyData
        fn.argtypes, fn.restype = GET_PROPERTY_DATA_ARGS, ctypes.c_int32
        get = fn
    read = get
    return lambda: Defaults(coreaudio_default(read, DEFAULT_INPUT), coreaudio_default(read, DEFAULT_OUTPUT))


# ---- Linux: PulseAudio / PipeWire through pactl -------------------------------------------------------------


def parse_pactl_info(text: str) -> Defaults:
    """The default source and sink from `pactl info` (run with LC_ALL=C); AudioDeviceError when either is absent."""
    found = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("Default Source", "Default Sink"):
            found[key.strip()] = value.strip()
    if len(found) != 2:
        raise AudioDeviceError(
            "`pactl info` names no default sink and source (is the sound server PulseAudio or PipeWire?); "
            "set audio.follow_default = off to stop asking"
        )
    return Defaults(found["Default Source"], found["Default Sink"])


def pulse_defaults() -> Defaults:
    """The Linux probe: the sound server's defaults, from `pactl info` (one short process)."""
    try:
        out = subprocess.run(
            ["pactl", "info"], capture_output=True, text=True, timeout=PROBE_S, env={**os.environ, "LC_ALL": "C"}
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AudioDeviceError(f"`pactl info` failed ({e}); check the sound server") from e
    if out.returncode != 0:
        raise AudioDeviceError(f"`pactl info` failed: {out.stderr.strip()}; check the sound server")
    return parse_pactl_info(out.stdout)


def choose_probe(mode: str, platform: str = sys.platform) -> tuple[Probe | None, str]:
    """The probe to poll for `audio.follow_default = mode` on `platform` (None: nothing to poll), and a line for
    the log saying how the default device is followed."""
    if mode == "off":
        return None, "audio.follow_default = off: the daemon stays on the devices it opened"
    if platform == "darwin":
        try:
            return coreaudio_probe(), "following the system's default devices (CoreAudio; PortAudio restarts)"
        except (OSError, AttributeError) as e:
            return None, f"the default device is not followed: CoreAudio cannot be loaded ({e})"
    if platform.startswith("linux") and shutil.which("pactl") is not None:
        if mode == "auto":
            return None, "the default devices are followed by the sound server (PulseAudio/PipeWire moves our streams)"
        return pulse_defaults, "following the system's default devices (pactl; PortAudio restarts)"
    return None, (
        f"the system's default device is not followed on {platform} (no way to ask for it); "
        "restart the daemon after changing it"
    )


# ---- the follower -----------------------------------------------------------------------------------------


class Source(Protocol):
    """The microphone side of a switch (daemon.ReopeningSource)."""

    async def suspend(self) -> None: ...
    async def resume(self) -> None: ...


class DefaultFollower:
    """Polls `probe` and moves `source` and `sink` to the new default device when one they follow changed."""

    def __init__(
        self,
        source: Source,
        sink: Playback,
        probe: Probe,
        follow_input: bool = True,
        follow_output: bool = True,
        reinit: Callable[[float], None] = devices.reinitialize,
    ) -> None:
        self.source, self.sink, self.probe = source, sink, probe
        self.follow_input, self.follow_output = follow_input, follow_output
        self.reinit = reinit
        self.switches = 0
        self.last_gap_s = 0.0  # how long the last switch had the microphone closed (what was said then is lost)

    async def run(self) -> None:
        """Poll until cancelled (no event exists for a changed default without CoreAudio listeners, so we ask)."""
        known: Defaults | None = None
        failing = False
        while True:
            try:
                now = await devices.call_async(self.probe, "asking for the system's default devices")
            except AudioDeviceError as e:
                if not failing:
                    log.warning("cannot tell the system's default devices: %s", e)
                failing = True
            else:
                failing = False
                if known is not None and self._moved(known, now):
                    await self.switch(known, now)
                known = now
            await asyncio.sleep(POLL_S)

    def _moved(self, old: Defaults, new: Defaults) -> bool:
        return (self.follow_input and old.input != new.input) or (self.follow_output and old.output != new.output)

    async def switch(self, old: Defaults, new: Defaults) -> None:
        """Close both streams, restart PortAudio, reopen both on the new defaults; each step bounded."""
        began = time.monotonic()
        await self.source.suspend()
        await self._bounded(asyncio.wrap_future(self.sink.suspend()), "closing the output stream")
        try:
            await devices.call_async(
                lambda: self.reinit(devices.CALL_TIMEOUT_S), "restarting PortAudio for the new default", SWITCH_S
            )
        except AudioDeviceError as e:  # the streams reopen anyway; if PortAudio is wedged, as after a lost device
            log.warning("the default device changed but PortAudio could not restart: %s", e)
        # one after the other: opening with no stream open re-scans PortAudio, which must not run under the
        # other side's device queries; the microphone first, since what is said meanwhile is lost (replies wait)
        await self._bounded(self.source.resume(), "reopening the input stream")
        self.last_gap_s = time.monotonic() - began
        await self._bounded(asyncio.wrap_future(self.sink.resume()), "reopening the output stream")
        self.switches += 1
        log.info(
            "moved to the new default devices",
            extra=kv(
                input=f"{old.input} -> {new.input}",
                output=f"{old.output} -> {new.output}",
                mic_gap_ms=round(1000 * self.last_gap_s),
                speaker_gap_ms=round(1000 * (time.monotonic() - began)),
            ),
        )

    async def _bounded(self, step: Awaitable[None], what: str) -> None:
        try:
            async with asyncio.timeout(SWITCH_S):
                await step
        except TimeoutError:
            log.warning("%s took more than %g s during a device switch; going on without it", what, SWITCH_S)


def default_follower(cfg: AudioConfig, source: Source, sink: Playback) -> DefaultFollower | None:
    """The follower the config asks for (None when no device is the default, or nothing can follow it here);
    logs one line saying how the default device is followed."""
    follow_input, follow_output = cfg.input_device == "", cfg.output_device == ""
    if not (follow_input or follow_output):
        return None
    probe, how = choose_probe(cfg.follow_default)
    log.info(how)
    if probe is None:
        return None
    return DefaultFollower(source, sink, probe, follow_input, follow_output)
