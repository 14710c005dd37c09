"""Audio timings through the virtual PulseAudio room (needs pulseaudio and espeak-ng; Linux).

    PYTHONPATH=. python -m benchmarks.audio_latency

Prints, each the median of a few runs: write() of the first chunk to its first sample at the DAC; the output
latency PortAudio reports; how long flush() takes, and how much of the sweep the speaker's recording holds beyond
the played_samples read just before flush(); the microphone's first block after opening; and the VAD's cost per
second of speech.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from assistant.audio.capture import Capture
from assistant.audio.format import TTS_RATE
from assistant.audio.playback import Playback
from assistant.config import AudioConfig, VadConfig
from assistant.vad import Vad
from tests.audio_room import start_room
from tests.speech import say, silence
from tests.test_audio_room import align, sweep

RUNS = 5


def playback_runs(cfg: AudioConfig, room_record: object) -> dict[str, float]:
    first_ms, flush_ms, extra = [], [], []
    tone = sweep(2.0)
    for _ in range(RUNS):
        recorder = room_record()  # type: ignore[operator]
        with Playback(cfg) as out:
            t0 = time.monotonic()
            out.write(tone)
            while out.played_samples < TTS_RATE // 2:
                time.sleep(0.002)
            assert out.first_sample_dac_time is not None
            first_ms.append((out.first_sample_dac_time - t0) * 1000)
            at = out.played_samples
            t1 = time.monotonic()
            out.flush()
            flush_ms.append((time.monotonic() - t1) * 1000)
            time.sleep(0.3)
            latency = out.output_latency_s
        heard = recorder.stop()
        lag, _ = align(heard, tone[:at])
        loud = np.flatnonzero(np.abs(heard[lag:].astype(np.float64)) > 300)
        extra.append(int(loud[-1]) + 1 - at)
    return {
        "write_to_first_dac_ms": statistics.median(first_ms),
        "output_latency_ms": latency * 1000,
        "flush_call_ms": statistics.median(flush_ms),
        "heard_beyond_played_samples": statistics.median(extra),
        "block_samples": TTS_RATE * cfg.block_ms // 1000,
    }


async def first_block_ms(cfg: AudioConfig) -> float:
    times = []
    for _ in range(RUNS):
        t0 = time.monotonic()
        async with Capture(cfg) as mic:
            await mic.read()
            times.append((time.monotonic() - t0) * 1000)
    return statistics.median(times)


def vad_cost() -> float:
    audio = np.concatenate([silence(0.5), say("Hello there, what is the weather like today?"), silence(1.0)] * 4)
    v = Vad(VadConfig())
    t0 = time.perf_counter()
    for i in range(0, len(audio), 320):
        v.feed(audio[i : i + 320])
    return (time.perf_counter() - t0) / (len(audio) / 16000) * 1000


def main() -> None:
    room = start_room(Path(tempfile.mkdtemp()) / "room")
    os.environ.update(room.env)
    try:
        cfg = AudioConfig()
        for key, value in playback_runs(cfg, room.record).items():
            print(f"{key}: {value:.1f}")
        print(f"mic_first_block_ms: {asyncio.run(first_block_ms(cfg)):.1f}")
        print(f"vad_ms_per_audio_s: {vad_cost():.2f}")
    finally:
        room.close()


if __name__ == "__main__":
    main()
