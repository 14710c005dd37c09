"""Echo-return-loss enhancement of the canceller in the virtual laptop room (needs pulseaudio, swh-plugins and
espeak-ng; Linux). A spoken reply at -20 dBFS plays through the real Playback, comes back into the real Capture
through the room's echo loop (tests/audio_room.py: module-loopback delay, gain, allpass reverb), and the
canceller removes it with the played reference; a user says a sentence at the echo's level 9 s in.

    PYTHONPATH=. python -m benchmarks.echo [--runs 2]

Prints per loop: the measured echo delay after time alignment, ERLE over the echo-only part after 3 s of
adaptation (whole, and the median / worst 1 s window), how far the user's louder frames stand above what is left
of the echo, the speaker's underruns, and the canceller's CPU time per second of audio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from assistant.audio.format import CAPTURE_RATE, float32_to_int16, int16_to_float32
from tests.audio_room import start_echo_loop, start_room
from tests.speech import say
from tests.test_echo_room import USER, loop_delay_ms, play_through_room, power_db, reply_audio, user_level

LOOPS = ((60.0, 0.0), (120.0, 0.0), (90.0, -6.0))
USER_AFTER_S = 9.0


def one_run(room: object, delay_ms: float, gain_db: float) -> dict[str, float]:
    loop = start_echo_loop(room, delay_ms, gain_db)  # type: ignore[arg-type]
    try:
        time.sleep(0.5)
        user = int16_to_float32(say(USER))
        user = float32_to_int16(user / np.sqrt(np.mean(np.square(user))) * 10 ** ((-20 + gain_db) / 20))
        cpu0 = time.process_time()
        heard = asyncio.run(play_through_room(room, reply_audio(), user, USER_AFTER_S))  # type: ignore[arg-type]
        cpu = time.process_time() - cpu0
    finally:
        loop.stop()
    lo, hi = 3 * CAPTURE_RATE, round((USER_AFTER_S - 0.2) * CAPTURE_RATE)
    windows = [
        power_db(heard.raw[i : i + CAPTURE_RATE]) - power_db(heard.clean[i : i + CAPTURE_RATE])
        for i in range(lo, hi - CAPTURE_RATE + 1, CAPTURE_RATE)
    ]
    residual = power_db(heard.clean[lo:hi])
    return {
        "delay_ms": loop_delay_ms(heard),
        "erle_db": power_db(heard.raw[lo:hi]) - residual,
        "erle_1s_median_db": statistics.median(windows),
        "erle_1s_worst_db": min(windows),
        "user_over_residual_db": user_level(heard, user, USER_AFTER_S) - residual,
        "underruns": float(heard.underruns),
        "cpu_s_per_audio_s": cpu / (len(heard.raw) / CAPTURE_RATE),  # the whole capture loop, canceller included
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        room = start_room(Path(tmp) / "room")
        os.environ.update(room.env)
        try:
            for delay_ms, gain_db in LOOPS:
                for r in range(args.runs):
                    res = one_run(room, delay_ms, gain_db)
                    print(
                        f"loop {delay_ms:.0f} ms {gain_db:+.0f} dB run {r + 1}: "
                        + ", ".join(f"{k} {v:.1f}" for k, v in res.items()),
                        flush=True,
                    )
        finally:
            room.close()


if __name__ == "__main__":
    main()
