"""A sounddevice double (tests only): streams whose calls can hang forever, fail, or run a fake device clock.

`install(monkeypatch_or_None, sd)` points assistant.audio.devices at the double: one device "double" (index 0,
input and output, default for both). Streams either run (a thread calls the callback every block, as PortAudio
does) or are driven by hand with `tick()`; `hang` names the calls that never return (until `release()`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from assistant.audio import devices

DEVICE = devices.Device(0, "double", 1, 1, 24_000.0, True, True, "Double")


class PortAudioError(Exception):
    pass


@dataclass
class TimeInfo:
    currentTime: float
    inputBufferAdcTime: float
    outputBufferDacTime: float


@dataclass
class Status:
    input_overflow: bool = False
    output_underflow: bool = False


@dataclass
class FakeSounddevice:
    """The parts of the sounddevice module the audio layer uses."""

    hang: set[str] = field(default_factory=set)  # "open", "start", "stop", "abort", "close"
    fail_open: bool = False
    running: bool = True  # streams call back by themselves every block
    dac_delay_s: float = 0.05
    underflow: bool = False  # callbacks report that the device ran dry (PortAudio's output_underflow)
    streams: list[Stream] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    PortAudioError: type[Exception] = PortAudioError

    def release(self) -> None:
        """Let every hung call return (so the test leaves no thread behind), and wait (at most 5 s) until the audio
        layer counts none still hanging: that count (devices.MAX_HUNG) is process-wide, and calls a test left to
        return on their own after it ended refused the next test's first call."""
        self.released.set()
        deadline = time.monotonic() + 5.0
        while devices._hung_now and time.monotonic() < deadline:
            time.sleep(0.01)

    def _maybe_hang(self, call: str) -> None:
        if call in self.hang:
            self.released.wait()

    def check_input_settings(self, **kw: Any) -> None:
        return None

    def check_output_settings(self, **kw: Any) -> None:
        return None

    def InputStream(self, **kw: Any) -> Stream:
        return self._open("input", kw)

    def OutputStream(self, **kw: Any) -> Stream:
        return self._open("output", kw)

    def _open(self, kind: str, kw: dict[str, Any]) -> Stream:
        self._maybe_hang("open")
        if self.fail_open:
            raise PortAudioError("Unanticipated host error [PaErrorCode -9999]: 'the sound server is gone'")
        stream = Stream(self, kind, kw)
        self.streams.append(stream)
        return stream


class Stream:
    """A stream double; its callback runs on a thread of its own while started (if the device double runs)."""

    def __init__(self, sd: FakeSounddevice, kind: str, kw: dict[str, Any]) -> None:
        self.sd, self.kind = sd, kind
        self.latency = kw["latency"] if isinstance(kw["latency"], float) else 0.02  # "low": 20 ms
        self.callback = kw["callback"]
        self.finished = kw["finished_callback"]
        self.rate, self.channels, self.block = kw["samplerate"], kw["channels"], kw["blocksize"]
        self.active = False
        self.heard: list[np.ndarray] = []  # what an output stream was given (its first channel)
        self._thread: threading.Thread | None = None
        self._runs = 0  # each start() begins a run; a callback thread of an earlier run stops

    def start(self) -> None:
        self.sd._maybe_hang("start")
        self.active = True
        self._runs += 1
        if self.sd.running:
            self._thread = threading.Thread(target=self._run, args=(self._runs,), daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self.sd._maybe_hang("stop")
        self.active = False

    def abort(self) -> None:
        self.sd._maybe_hang("abort")
        self.active = False

    def close(self) -> None:
        self.sd._maybe_hang("close")
        self.active = False

    def die(self) -> None:
        """The device goes away: the stream stops by itself and PortAudio calls finished_callback."""
        self.active = False
        self.finished()

    def tick(self, now: float) -> None:
        """One callback, as PortAudio makes it at time `now` (on the PortAudio clock)."""
        info = TimeInfo(now, now - self.block / self.rate, now + self.sd.dac_delay_s)
        if self.kind == "output":
            out = np.zeros((self.block, self.channels), dtype=np.float32)
            self.callback(out, self.block, info, Status(output_underflow=self.sd.underflow))
            self.heard.append(out[:, 0].copy())
        else:
            self.callback(np.zeros((self.block, self.channels), dtype=np.int16), self.block, info, Status())

    def _run(self, run: int) -> None:
        due = time.monotonic()
        while self.active and run == self._runs:  # one block per block duration, on an absolute schedule
            self.tick(time.monotonic())
            due += self.block / self.rate
            time.sleep(max(0.0, due - time.monotonic()))


def install(patch: Any, sd: FakeSounddevice) -> None:
    """Point assistant.audio.devices at `sd` (with pytest's monkeypatch, or for good in a child process)."""
    setattr_ = patch.setattr if patch is not None else setattr
    setattr_(devices, "_sounddevice", lambda: sd)
    setattr_(devices, "list_devices", lambda: [DEVICE])
