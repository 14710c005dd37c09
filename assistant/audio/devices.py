"""Audio devices through PortAudio (sounddevice): listing and choosing, with errors a user can act on.

Every PortAudio call of a running daemon goes through `call` / `call_async`: it runs on a thread of its own and the
caller waits at most CALL_TIMEOUT_S. A sound server that goes away can leave a call hanging forever inside
PortAudio; its thread is then abandoned (logged once) and the caller carries on with a fresh stream. While MAX_HUNG
abandoned calls still hang, no new call is started (AudioDeviceError at once), so retries add no threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from assistant.errors import AudioDeviceError

log = logging.getLogger("assistant.audio.devices")

T = TypeVar("T")

CALL_TIMEOUT_S = 1.5  # PortAudio calls take milliseconds (PulseAudio start-up: ~0.3 s); longer means hung
# Abandoned calls still hanging: while this many are, no new call is started (each retry of a lost device left one
# more thread stuck for good, ~1 a second while a sound server stayed wedged); they return once it answers or dies
MAX_HUNG = 4
_hung_now = 0
_hung_lock = threading.Lock()


@dataclass(frozen=True)
class Device:
    index: int
    name: str
    max_input_channels: int
    max_output_channels: int
    default_samplerate: float
    is_default_input: bool
    is_default_output: bool
    host_api: str = ""


def _sounddevice() -> Any:
    try:
        import sounddevice
    except OSError as e:  # the PortAudio library itself is missing
        raise AudioDeviceError(
            f"PortAudio is not installed ({e}); install it (macOS: it ships with the sounddevice wheel; "
            "Debian/Ubuntu: apt-get install libportaudio2)"
        ) from e
    return sounddevice


def _off_thread(fn: Callable[[], T], what: str) -> concurrent.futures.Future[T]:
    if _hung_now >= MAX_HUNG:  # (read without the lock: a stale count only delays or allows one call)
        raise AudioDeviceError(
            f"{what} was not tried: {_hung_now} earlier PortAudio calls have not returned (the sound server is not "
            "answering); check the sound system"
        )
    fut: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(fn())
        except BaseException as e:
            fut.set_exception(e)

    threading.Thread(target=run, name=f"portaudio: {what}", daemon=True).start()
    return fut


def _hung(fut: concurrent.futures.Future[Any], what: str, timeout: float) -> AudioDeviceError:
    """`fut`'s call did not return within `timeout`: it counts as hung until it does. The error to raise."""
    global _hung_now
    log.warning("%s did not return within %g s; abandoned it (the sound server is not answering)", what, timeout)
    with _hung_lock:
        _hung_now += 1

    def returned(_: concurrent.futures.Future[Any]) -> None:
        global _hung_now
        with _hung_lock:
            _hung_now -= 1

    fut.add_done_callback(returned)  # at once if it returned meanwhile
    return AudioDeviceError(
        f"{what} did not return within {timeout:g} s (the sound server is not answering); "
        "check the sound system, or choose another device with audio.input_device / audio.output_device"
    )


def call(fn: Callable[[], T], what: str, limit_s: float = CALL_TIMEOUT_S) -> T:
    """fn() on a thread of its own, waiting at most `limit_s` (never call this on the event loop).
    AudioDeviceError when it hangs: its thread is abandoned; fn's own exceptions pass through."""
    fut = _off_thread(fn, what)
    try:
        return fut.result(limit_s)
    except concurrent.futures.TimeoutError as e:
        raise _hung(fut, what, limit_s) from e


async def call_async(fn: Callable[[], T], what: str, limit_s: float = CALL_TIMEOUT_S) -> T:
    """`call` for the event loop: awaits fn() on its own thread; the loop never waits on PortAudio."""
    fut = _off_thread(fn, what)
    try:
        async with asyncio.timeout(limit_s):
            return await asyncio.wrap_future(fut)
    except TimeoutError as e:
        raise _hung(fut, what, limit_s) from e


# streams of ours now open or being opened, abandoned ones until their close returns: PortAudio cannot re-scan
# devices under them (a re-scan restarts PortAudio); the lock keeps a re-scan and an opening apart
_open_streams = 0
_streams_lock = threading.Lock()
_streams_changed = threading.Condition(_streams_lock)  # notified when the count changes (a re-init waits for 0)
_just_restarted = False  # reinitialize() ran and no listing since: the next one need not restart PortAudio again


def _count_stream(delta: int) -> None:
    """Change the count of our streams; waits at most CALL_TIMEOUT_S for a re-scan in progress."""
    global _open_streams
    if not _streams_lock.acquire(timeout=CALL_TIMEOUT_S):
        raise AudioDeviceError(
            "PortAudio is busy re-scanning the audio devices (the sound server is not answering); "
            "check the sound system"
        )
    try:
        _open_streams = max(0, _open_streams + delta)
        _streams_changed.notify_all()
    finally:
        _streams_lock.release()


def stream_closed() -> None:
    """Call once a stream of ours is closed."""
    with contextlib.suppress(AudioDeviceError):
        _count_stream(-1)


def _opening(factory: Callable[[], T], what: str) -> Callable[[], T]:
    def run() -> T:
        _count_stream(+1)  # before it exists, so no re-scan runs while it is created
        try:
            return factory()
        except BaseException:
            stream_closed()
            raise

    return run


def _release_late(fut: concurrent.futures.Future[Any], what: str) -> None:
    """A stream whose creation was given up on: close it if it ever arrives (nobody else will)."""

    def done(f: concurrent.futures.Future[Any]) -> None:
        if not f.cancelled() and f.exception() is None:
            release(f.result(), what)

    fut.add_done_callback(done)


def open_stream(factory: Callable[[], T], what: str, limit_s: float = CALL_TIMEOUT_S) -> T:
    """Create a stream with `factory` on a thread of its own, counted as ours (`call`, for a worker thread)."""
    fut = _off_thread(_opening(factory, what), what)
    try:
        return fut.result(limit_s)
    except concurrent.futures.TimeoutError as e:
        _release_late(fut, what)
        raise _hung(fut, what, limit_s) from e


async def open_stream_async(factory: Callable[[], T], what: str, limit_s: float = CALL_TIMEOUT_S) -> T:
    """`open_stream` for the event loop."""
    fut = _off_thread(_opening(factory, what), what)
    try:
        async with asyncio.timeout(limit_s):
            return await asyncio.shield(asyncio.wrap_future(fut))
    except TimeoutError as e:
        _release_late(fut, what)
        raise _hung(fut, what, limit_s) from e


def release(stream: Any, what: str) -> None:
    """Abort and close `stream` on a thread nobody waits for (it may hang in PortAudio); counted as open until
    close returns, so no re-scan runs under it."""

    def shut() -> None:
        try:
            stream.abort()
            stream.close()
        except Exception as e:  # the device is already gone: nothing left to release
            log.debug("closing %s: %s", what, e)
        stream_closed()

    threading.Thread(target=shut, name=f"portaudio: close {what}", daemon=True).start()


def wait_closed(limit_s: float) -> bool:
    """Wait up to `limit_s` for every stream of ours to be closed (their close runs on a thread of its own);
    False if some are still open then."""
    with _streams_changed:
        return _streams_changed.wait_for(lambda: _open_streams == 0, limit_s)


def reinitialize(limit_s: float) -> None:
    """Restart PortAudio (Pa_Terminate / Pa_Initialize) so that it sees the system's current devices and defaults
    (CoreAudio fixes the default device when PortAudio initialises). Waits up to `limit_s` for our streams to be
    closed first, since a restart would invalidate them: AudioDeviceError if they are not. Blocking: run it
    through `call`; no stream of ours can open while it runs."""
    global _just_restarted
    sd = _sounddevice()
    with _streams_changed:
        if not _streams_changed.wait_for(lambda: _open_streams == 0, limit_s):
            raise AudioDeviceError(
                f"{_open_streams} audio stream(s) did not close within {limit_s:g} s, so PortAudio was not "
                "restarted for the new default device (the sound server is not answering); check the sound system"
            )
        try:
            sd._terminate()
            sd._initialize()
        except sd.PortAudioError as e:
            raise AudioDeviceError(f"PortAudio could not restart: {e}; check the sound system") from e
        _just_restarted = True


def list_devices() -> list[Device]:
    """Every device PortAudio sees, with the default input and output marked.

    Re-scans (so devices plugged in since start-up appear) unless one of our streams is open, because a re-scan
    restarts PortAudio and would close it, or `reinitialize` has just restarted it. Blocking: the daemon calls it
    through `call`.
    """
    global _just_restarted
    sd = _sounddevice()
    try:
        with _streams_lock:  # blocking: list_devices runs on a worker thread (`call`)
            if _open_streams == 0 and not _just_restarted:
                sd._terminate()
                sd._initialize()
            _just_restarted = False
            raw = sd.query_devices()
            apis = [a["name"] for a in sd.query_hostapis()]
            default_in, default_out = sd.default.device
    except sd.PortAudioError as e:
        raise AudioDeviceError(f"PortAudio cannot list audio devices: {e}; check the sound system") from e
    return [
        Device(
            index=i,
            name=d["name"],
            max_input_channels=d["max_input_channels"],
            max_output_channels=d["max_output_channels"],
            default_samplerate=d["default_samplerate"],
            is_default_input=i == default_in,
            is_default_output=i == default_out,
            host_api=apis[d["hostapi"]] if 0 <= d["hostapi"] < len(apis) else "",
        )
        for i, d in enumerate(raw)
    ]


def pick(spec: str, kind: str, devices: list[Device] | None = None) -> Device:
    """The device for `spec` ("" = default, an index, or a name substring) with `kind` "input" or "output"."""
    devices = list_devices() if devices is None else devices
    key = "max_input_channels" if kind == "input" else "max_output_channels"
    usable = [d for d in devices if getattr(d, key) > 0]
    setting = f"audio.{kind}_device"
    if not usable:
        raise AudioDeviceError(
            f"no audio {kind} device found; connect a {'microphone' if kind == 'input' else 'speaker'} "
            "(or start the sound server), then check `assistant devices`"
        )
    if spec == "":
        default = [d for d in usable if (d.is_default_input if kind == "input" else d.is_default_output)]
        return default[0] if default else usable[0]
    if spec.strip().isdigit():
        match = [d for d in usable if d.index == int(spec)]
    else:
        match = [d for d in usable if spec.lower() in d.name.lower()]
    if not match:
        names = ", ".join(f"{d.index}: {d.name}" for d in usable)
        raise AudioDeviceError(f"{setting} = {spec!r} matches no {kind} device; choose one of: {names}")
    return match[0]


@dataclass(frozen=True)
class Format:
    """What a device accepted: its rate and channel count (we convert to and from mono at our rate)."""

    rate: int
    channels: int


# PortAudio's words for "not this format" (anything else means the device itself is unusable)
FORMAT_REFUSALS = ("Invalid sample rate", "Invalid number of channels", "Sample format not supported")


def negotiate(device: Device, kind: str, rate: int, dtype: str, forced_rate: int = 0) -> Format:
    """Our `rate` in mono when the device takes it, else its default rate and/or 2 channels (only `forced_rate`
    when given, from audio.device_rate); AudioDeviceError if it takes none of them."""
    sd = _sounddevice()
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    most = device.max_input_channels if kind == "input" else device.max_output_channels
    rates = (
        [forced_rate] if forced_rate else list(dict.fromkeys([rate, round(device.default_samplerate), 48000, 44100]))
    )
    channel_counts = [c for c in (1, 2) if c <= most] or [most]
    refused = []
    for r in rates:
        for c in channel_counts:
            try:
                check(device=device.index, channels=c, dtype=dtype, samplerate=r)
            except (sd.PortAudioError, ValueError) as e:
                if not any(m in str(e) for m in FORMAT_REFUSALS):
                    raise describe_open_error(device, kind, e) from e  # not the format: the device itself failed
                refused.append(f"{r} Hz x{c}: {e}")
                continue
            return Format(rate=r, channels=c)
    raise AudioDeviceError(
        f"{kind} device {device.index}: {device.name!r} supports none of the rates and channel counts we can use "
        f"({'; '.join(refused)}); choose another with audio.{kind}_device (see `assistant devices`)"
        + (" or set audio.device_rate = 0" if forced_rate else "")
    )


def describe_open_error(device: Device, kind: str, e: Exception) -> AudioDeviceError:
    """A PortAudio failure to open or start a stream, as a message naming the likely cause and the fix."""
    text = str(e)
    if "busy" in text.lower() or "unavailable" in text.lower():
        cause = "it is busy or unavailable; close other programs using it, or choose another"
    else:
        cause = (
            "check that it is connected and allowed (macOS: System Settings > Privacy > Microphone), or choose another"
        )
    return AudioDeviceError(
        f"cannot open {kind} device {device.index}: {device.name!r} ({text}); {cause} with audio.{kind}_device "
        "(see `assistant devices`)"
    )
