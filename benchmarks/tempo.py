"""The voice-speed time stretch: CPU cost, look-ahead and the pitch of real speech at each rate (needs espeak-ng).

    PYTHONPATH=. python -m benchmarks.tempo

Prints JSON per rate: milliseconds of CPU per second of input audio pushed in TTS-sized chunks (4 frames), the
worst look-ahead in ms, and the median f0 (autocorrelation over voiced 40 ms frames) of the input and output.
"""

from __future__ import annotations

import json
import time

import numpy as np

from assistant.audio.format import TTS_FRAME_SAMPLES, TTS_RATE, int16_to_float32, resample
from assistant.audio.tempo import TimeStretch
from tests.speech import say
from tests.test_tempo import median_f0

TEXT = "Time stretching keeps the pitch of a voice while it speaks faster or slower than the model does."


def main() -> None:
    speech = resample(int16_to_float32(say(TEXT, 160)), 16000, TTS_RATE)
    chunk = 4 * TTS_FRAME_SAMPLES
    results = {"input_seconds": round(len(speech) / TTS_RATE, 2), "input_f0_hz": round(median_f0(speech), 1)}
    for rate in (0.5, 0.7, 1.0, 1.3, 1.5, 2.0):
        ts = TimeStretch(rate, TTS_RATE)
        out, worst = [], 0
        t0 = time.process_time()
        for i in range(0, len(speech), chunk):
            out.append(ts.push(speech[i : i + chunk]))
            worst = max(worst, ts.latency_samples())
        out.append(ts.flush())
        cpu = time.process_time() - t0
        y = np.concatenate(out)
        results[f"rate_{rate}"] = {
            "cpu_ms_per_audio_s": round(cpu * 1000 / (len(speech) / TTS_RATE), 2),
            "look_ahead_ms": round(worst * 1000 / TTS_RATE, 1),
            "output_seconds": round(len(y) / TTS_RATE, 3),
            "output_f0_hz": round(median_f0(y), 1),
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
