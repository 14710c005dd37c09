"""Echo-return-loss enhancement of the canceller in the virtual laptop room (needs pulseaudio, swh-plugins and
espeak-ng; Linux). A spoken reply at -20 dBFS plays through the real Playback, comes back into the real Capture
through the room's echo loop (tests/audio_room.py: module-loopback delay, gain, allpass reverb), and the
canceller removes it with the played reference; a user says a sentence at the echo's level 9 s in.

    PYTHONPATH=. python -m benchmarks.echo [--runs 2]
    PYTHONPATH=. python -m benchmarks.echo --barge [--runs 3]

--barge measures the barge-in gate instead: a user at the echo's level 1 s and 9 s into the reply (60 ms loop,
0 and -6 dB). For each offset above the canceller's echo bound (`EchoCanceller.echo_dbfs`, RESIDUAL_DB included),
it prints how many 30 ms frames of the cleaned echo alone are voiced (webrtcvad) and that loud, their longest run
(a barge-in start needs `vad.barge_in_min_speech_ms` of such frames in a row), and the user's first run.

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

from assistant.audio.format import CAPTURE_RATE, float32_to_int16, int16_to_float32, level_dbfs
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


VAD_FRAME = 480  # 30 ms: the VAD's frame
BARGE_CASES = ((60.0, 0.0, 1.0), (60.0, 0.0, 9.0), (60.0, -6.0, 1.0), (60.0, -6.0, 9.0))  # delay, gain, user at
OFFSETS_DB = (0.0, 3.0, 6.0, 9.0, 12.0)  # over the echo bound: what vad.barge_in_energy_margin_db would add


def longest_run(ok: np.ndarray) -> int:
    best = cur = 0
    for x in ok:
        cur = cur + 1 if x else 0
        best = max(best, cur)
    return best


def barge_run(room: object, delay_ms: float, gain_db: float, user_after_s: float) -> list[str]:
    """One reply with a user at the echo's level `user_after_s` in: per offset, the echo-only and user frames
    that would count towards a barge-in start."""
    import webrtcvad

    from tests.test_audio_room import align

    loop = start_echo_loop(room, delay_ms, gain_db)  # type: ignore[arg-type]
    try:
        time.sleep(0.5)
        user = int16_to_float32(say(USER))
        user = float32_to_int16(user / np.sqrt(np.mean(np.square(user))) * 10 ** ((-20 + gain_db) / 20))
        heard = asyncio.run(play_through_room(room, reply_audio(), user, user_after_s))  # type: ignore[arg-type]
    finally:
        loop.stop()
    at = round(user_after_s * CAPTURE_RATE)
    at += align(heard.raw[at:], user)[0]
    n = min(len(heard.clean), len(heard.echo_dbfs)) // VAD_FRAME
    frames = [heard.clean[i * VAD_FRAME : (i + 1) * VAD_FRAME] for i in range(n)]
    vad = webrtcvad.Vad(2)
    voiced = np.array([vad.is_speech(f.tobytes(), CAPTURE_RATE) for f in frames])
    level = np.array([level_dbfs(f) for f in frames])
    bound = heard.echo_dbfs[: n * VAD_FRAME : VAD_FRAME]
    u0 = at // VAD_FRAME
    settled = round(3 * CAPTURE_RATE) // VAD_FRAME  # AEC3 adapts over the first seconds of its first reply
    early = slice(round(0.1 * CAPTURE_RATE) // VAD_FRAME, min(settled, u0 - 2))
    late = slice(settled, max(settled, u0 - 2))
    lines = []
    for off in OFFSETS_DB:
        ok = voiced & (level >= bound + off)
        first = ok[u0 : u0 + 14]
        echo = f"{100 * ok[early].mean():.1f}% run {longest_run(ok[early])}"
        if late.stop > late.start:
            echo += f" / after 3 s {100 * ok[late].mean():.1f}% run {longest_run(ok[late])}"
        lines.append(
            f"loop {delay_ms:.0f} ms {gain_db:+.0f} dB user at {user_after_s:.0f} s, bound +{off:.0f} dB: echo-only "
            f"frames counting (first 3 s) {echo}; "
            f"user's first 420 ms {''.join('1' if x else '.' for x in first)} (first run {longest_run(first)})"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--barge", action="store_true", help="measure the barge-in gate (see above)")
    ap.add_argument("--late", action="store_true", help="with --barge: only the users 9 s in")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        room = start_room(Path(tmp) / "room")
        os.environ.update(room.env)
        try:
            if args.barge:
                for case in [c for c in BARGE_CASES if c[2] > 1.0 or not args.late]:
                    for _ in range(args.runs):
                        print("\n".join(barge_run(room, *case)), flush=True)
                return
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
