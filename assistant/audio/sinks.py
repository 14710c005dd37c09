"""Audio endpoints as the conversation sees them: a source of captured blocks and a speaker sink.

`Capture` and `Playback` are the sound-card ones; `ClientSink` is a Realtime client's speaker and `NullSink` the
daemon's when there is no sound card. Every sink tells what it played when, so the turn core judges every captured
block by what the speaker was playing when it was recorded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Protocol

import numpy as np

from assistant.audio.format import SILENT_DBFS, AudioBlock, level_dbfs
from assistant.logs import kv

log = logging.getLogger("assistant.audio.sinks")

PLAYBACK_STALL_S = 2.0  # a sink that plays nothing for this long is given up on (a gone WebSocket client)


class AudioSource(Protocol):
    """The microphone: `Capture`, or nothing (headless: clients bring audio through their session)."""

    async def read(self) -> AudioBlock | np.ndarray: ...  # AudioDeviceError when lost


class AudioSink(Protocol):
    """The speaker: `Playback`, a Realtime client, or nothing; what it played when (INTERFACES.md 3) is on the
    monotonic clock of the capture times."""

    def write(self, chunk: np.ndarray) -> None: ...  # float32 at the TTS rate; never blocks
    def flush(self) -> None: ...  # drop queued audio; played_samples restarts at 0
    @property
    def played_samples(self) -> int: ...
    @property
    def first_sample_dac_time(self) -> float | None: ...  # when the first sample since flush() was heard
    def level_at(self, t: float) -> float: ...  # dBFS at the speaker around `t` (SILENT_DBFS: nothing)
    @property
    def last_sample_time(self) -> float | None: ...  # when the last queued sample left, once drained
    @property
    def underruns(self) -> int: ...  # output underflows since start


class ClientSink:
    """A Realtime client's speaker: the conversation sends each chunk written here to the client (a ResponseAudio
    event), which plays it in real time from receipt; this keeps the client's played position and levels."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.played_samples = 0  # since the last flush: sent audio counts as played (truncate corrects it)
        self.first_sample_dac_time: float | None = None
        self.underruns = 0  # the client's own playback is out of sight
        self._spans: deque[tuple[float, float, float]] = deque(maxlen=256)  # (start, end, dBFS) at the client

    def write(self, chunk: np.ndarray) -> None:
        now = time.monotonic()
        start = max(now, self._spans[-1][1]) if self._spans else now
        if self.first_sample_dac_time is None:
            self.first_sample_dac_time = start
        self._spans.append((start, start + len(chunk) / self.rate, level_dbfs(chunk)))
        self.played_samples += len(chunk)

    def flush(self) -> None:
        self.played_samples = 0
        self.first_sample_dac_time = None
        self._spans.clear()

    def level_at(self, t: float) -> float:
        for start, end, level in reversed(self._spans):
            if start <= t < end:
                return level
        return SILENT_DBFS

    @property
    def last_sample_time(self) -> float | None:
        return self._spans[-1][1] if self._spans and self._spans[-1][1] <= time.monotonic() else None


class NullSink:
    """The daemon's speaker when there is no sound card: audio is dropped, and counted as played."""

    def __init__(self) -> None:
        self.played_samples = 0
        self.first_sample_dac_time: float | None = None
        self.last_sample_time: float | None = None
        self.underruns = 0

    def write(self, chunk: np.ndarray) -> None:
        self.played_samples += len(chunk)

    def level_at(self, t: float) -> float:
        return SILENT_DBFS  # nothing is heard: no echo to judge

    def flush(self) -> None:
        self.played_samples = 0


async def played_out(sink: AudioSink, samples: int, rate: int) -> None:
    """Until `sink` has played `samples` samples since its last flush (sleeping the known remaining duration), or
    it stalls for PLAYBACK_STALL_S."""
    last, since = -1, time.monotonic()
    while (left := samples - sink.played_samples) > 0:
        played = sink.played_samples
        if played != last:
            last, since = played, time.monotonic()
        elif time.monotonic() - since > PLAYBACK_STALL_S:
            log.warning("playback stalled; not waiting for the rest", extra=kv(left_samples=left))
            return
        await asyncio.sleep(max(left / rate, 0.01))
