"""The resampler's cost, delay and accuracy on the paths the daemon runs (20 ms blocks, streamed).

    python -m benchmarks.resample

For each conversion (48 kHz microphone -> 16 kHz, 24 kHz TTS -> 48 kHz speaker, 24 kHz Realtime client -> 16 kHz)
and each libsoxr quality: CPU per 20 ms block, the delay the stream holds back, the error of a 1 kHz sine
against the ideal one and the gain near the top of the passband. audio.format uses SOXR_QUALITY ("HQ").
"""

from __future__ import annotations

import json
import time

import numpy as np
import soxr

PATHS = ((48000, 16000), (24000, 48000), (24000, 16000))
QUALITIES = ("LQ", "MQ", "HQ", "VHQ")


def sine(hz: float, rate: int, seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def measure(src: int, dst: int, quality: str) -> dict[str, float]:
    x, block = sine(1000, src), src * 20 // 1000
    stream = soxr.ResampleStream(src, dst, 1, dtype="float32", quality=quality)
    began = time.perf_counter()
    out = np.concatenate([stream.resample_chunk(x[i : i + block]) for i in range(0, len(x), block)])
    per_block = (time.perf_counter() - began) / (len(x) / block)
    ideal = sine(1000, dst)[dst // 2 : dst]
    err = out[dst // 2 : dst] - ideal
    top = 0.45 * min(src, dst)  # 90 % of the lower Nyquist
    y = soxr.resample(sine(top, src), src, dst, quality=quality)
    mid = y[len(y) // 4 : -len(y) // 4]
    return {
        "cpu_us_per_block": round(per_block * 1e6, 1),
        "delay_ms": round((len(x) * dst / src - len(out)) / dst * 1000, 2),
        "sine_error_db": round(float(20 * np.log10(np.sqrt(np.mean(err**2)) / np.sqrt(np.mean(ideal**2)) + 1e-12)), 1),
        "gain_at_90pct_nyquist_db": round(float(20 * np.log10(np.sqrt(2 * np.mean(mid**2)) / 0.5)), 2),
    }


def main() -> None:
    results = {f"{s}->{d} {q}": measure(s, d, q) for s, d in PATHS for q in QUALITIES}
    for name, r in results.items():
        print(f"{name:16s} {r}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
