"""Echo-return-loss enhancement of the canceller in the virtual laptop room (needs pulseaudio, swh-plugins and
espeak-ng; Linux). A spoken reply at -20 dBFS plays through the real Playback, comes back into the real Capture
through the room's echo loop (tests/audio_room.py: module-loopback delay, gain, allpass reverb), and the
canceller removes it with the played reference; a user says a sentence at the echo's level 9 s in.

    PYTHONPATH=. python -m benchmarks.echo [--runs 2]
    PYTHONPATH=. python -m benchmarks.echo --barge [--runs 3]

--barge compares the barge-in gates instead: issue 13 (b)'s sentence (--user) 1 s and 9 s into the reply, at the
echo's level over the 60 ms loop (0 and -6 dB), and at a normal voice (-20 dBFS) in a room with no loop at all.
Three cancellers clean the same microphone blocks, each judged by a real VAD (default [vad] settings) against its
own gate: "fixed" (AEC3 alone: the played peak, + RESIDUAL_DB once AEC3 has adapted), "room" (+ the learned echo
return; no echo path -> the gate's floor and the microphone untouched) and "linear" (EchoCanceller now: + the
linear echo path, assistant/audio/echo_path.py). It prints the detection delay after the user's first sample
(the VAD's decision by capture sample, so a busy machine does not lengthen it), false reports (starts outside the
user's speech + 0.5 s), the canceller's CPU time per second of audio (AEC3 and the speaker clock's look-ups
included) and what it learned; first, the CPU cost of the room learning and of the linear path alone.

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from assistant.audio.capture import Capture
from assistant.audio.echo import AEC_DELAY, AEC_FRAME, EchoCanceller
from assistant.audio.echo_path import EchoPath
from assistant.audio.format import CAPTURE_RATE, SILENT_DBFS, float32_to_int16, int16_to_float32
from assistant.audio.playback import Playback
from assistant.config import AudioConfig, VadConfig
from assistant.events import SpeechStarted
from assistant.vad import Vad
from tests.audio_room import Room, start_echo_loop, start_room
from tests.speech import say
from tests.test_echo_room import (
    USER,
    loop_delay_ms,
    play_through_room,
    power_db,
    reply_audio,
    room_blocks,
    user_level,
)

# issue 13 (b)'s sentence, as tests/pipeline/test_echo_turns_room.py says it: voiced from its first frame, since a
# barge-in needs vad.barge_in_min_speech_ms (300) of voice in a row ("Stop," then a pause could not be heard in 400)
BARGE_USER = "No no, what about Saturday?"

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


BARGE_CASES = (  # delay, gain (None: no echo loop at all, as with headphones), user at (s into the capture)
    (0.0, None, 1.0),
    (0.0, None, 9.0),
    (60.0, 0.0, 1.0),
    (60.0, 0.0, 9.0),
    (60.0, -6.0, 1.0),
    (60.0, -6.0, 9.0),
)
NO_LOOP_USER_DBFS = -20.0  # without a loop there is no echo to match: a normal voice, as loud as the reply
BARGE_TAIL_S = 0.5  # after the user's last sample a start may still be theirs (hangover, reverberation)


class RoomGate(EchoCanceller):
    """The canceller without its linear echo path: AEC3's output and the room-aware gate only."""

    def _step_linear(self, mic: np.ndarray, p0: int, p1: int) -> tuple[np.ndarray | None, float | None]:
        return None, None


class FixedGate(RoomGate):
    """The canceller before the room-aware gate too: it never learns the room's echo return, so the gate is the
    played peak (+ RESIDUAL_DB once AEC3 has adapted) and AEC3's output is always what the VAD hears."""

    def _learn_return(self, ref: np.ndarray, raw: np.ndarray) -> None:
        return


@dataclass
class BargeHeard:
    raw: np.ndarray  # the microphone, int16 16 kHz
    starts: dict[str, list[int]]  # per gate: the capture sample at which the VAD decided each SpeechStarted
    cpu_ms_per_s: dict[str, float]  # per gate: the canceller's CPU time per second of audio (process + echo_dbfs)
    learned: dict[str, str]  # per gate: what it learned of the room by the end


async def play_and_judge(room: Room, reply: np.ndarray, user: np.ndarray, user_after_s: float) -> BargeHeard:
    """Play `reply` through the real speaker while the real microphone captures; both cancellers clean every block
    and a real VAD per canceller judges it against that canceller's gate, as the daemon does (Conversation.on_audio,
    the turn core's RunVad)."""
    cfg = AudioConfig()
    raw: list[np.ndarray] = []
    starts: dict[str, list[int]] = {"fixed": [], "room": [], "linear": []}
    cpu = dict.fromkeys(starts, 0.0)
    with Playback(cfg) as speaker:
        cancellers = {"fixed": FixedGate(speaker), "room": RoomGate(speaker), "linear": EchoCanceller(speaker)}
        vads = {name: Vad(VadConfig()) for name in cancellers}

        def played(chunk: np.ndarray) -> None:
            for c in cancellers.values():
                c.played(chunk)

        async with Capture(cfg) as mic:
            captured = 0
            async for block in room_blocks(room, speaker, mic, reply, user, user_after_s, played):
                raw.append(block.samples)
                captured += len(block.samples)
                for name, c in cancellers.items():
                    began = time.process_time()
                    out = c.process(block)
                    gate = c.echo_dbfs(out.t, len(out.samples))
                    cpu[name] += time.process_time() - began
                    vads[name].set_playback(gate > SILENT_DBFS, gate)
                    for ev in vads[name].feed(out.samples):
                        if isinstance(ev, SpeechStarted):
                            starts[name].append(vads[name].position - AEC_DELAY)  # decided after this capture
    audio_s = captured / CAPTURE_RATE
    per_s = {name: 1000.0 * t / audio_s for name, t in cpu.items()}

    def db(x: float | None) -> str:
        return "unknown" if x is None else f"{x:+.0f} dB"

    learned = {
        name: f"echo return {db(c.echo_return_db)}, linear path leaves {db(c.linear_return_db)}"
        for name, c in cancellers.items()
    }
    return BargeHeard(np.concatenate(raw), starts, per_s, learned)


def learning_cost(frames: int = 20_000) -> str:
    """CPU time of the room learning alone (EchoCanceller._learn_return) and of the linear echo path alone
    (EchoPath.push + learn, its solves included) per second of audio, on random frames."""
    rng = np.random.default_rng(0)
    refs = (rng.standard_normal((1000, AEC_FRAME)) * 0.1).astype(np.float32)
    mics = (rng.standard_normal((1000, AEC_FRAME)) * 3000).astype(np.int16)

    class Silent:
        def played_before(self, t: float) -> int:
            return 0

    canceller = EchoCanceller(Silent())
    began = time.process_time()
    for i in range(frames):
        canceller._learn_return(refs[i % 1000], mics[i % 1000])
    us = 1e6 * (time.process_time() - began) / frames
    path = EchoPath()
    began = time.process_time()
    for i in range(frames // 4):
        path.push(refs[i % 1000].astype(np.float64), mics[i % 1000] / 32768.0)
        path.learn(echo_alone=True)
    linear = 4e6 * (time.process_time() - began) / frames
    return (
        f"room learning alone: {us:.1f} us per 10 ms frame = {us / 10:.2f} ms CPU per s of audio; "
        f"linear echo path alone: {linear:.0f} us per frame = {linear / 10:.1f} ms CPU per s of audio"
    )


def barge_run(room: Room, delay_ms: float, gain_db: float | None, user_after_s: float, text: str) -> list[str]:
    """One reply with a user `user_after_s` in (at the echo's level, or at a normal voice without a loop): for the
    fixed and the room-aware gate, the VAD's detection delay after the user's first sample and its false reports
    (starts before the user or after their speech and its tail)."""
    from tests.test_audio_room import align

    loop = start_echo_loop(room, delay_ms, gain_db) if gain_db is not None else None
    try:
        time.sleep(0.5)
        user = int16_to_float32(say(text))
        level = NO_LOOP_USER_DBFS if gain_db is None else -20 + gain_db
        user = float32_to_int16(user / np.sqrt(np.mean(np.square(user))) * 10 ** (level / 20))
        heard = asyncio.run(play_and_judge(room, reply_audio(), user, user_after_s))
    finally:
        if loop is not None:
            loop.stop()
    at = round(user_after_s * CAPTURE_RATE)
    at += align(heard.raw[at:], user)[0]
    end = at + len(user) + round(BARGE_TAIL_S * CAPTURE_RATE)
    where = "no loop" if gain_db is None else f"loop {delay_ms:.0f} ms {gain_db:+.0f} dB"
    lines = []
    for name, starts in heard.starts.items():
        mine = [s for s in starts if at <= s < end]
        false = [round(s / CAPTURE_RATE, 2) for s in starts if not at <= s < end]
        delay = f"{1000 * (mine[0] - at) / CAPTURE_RATE:.0f} ms" if mine else "never"
        lines.append(
            f"{where}, user at {user_after_s:.0f} s, {name} gate: detected {delay} after the user's first sample, "
            f"false reports {len(false)} {false}, canceller CPU {heard.cpu_ms_per_s[name]:.1f} ms per s of audio"
            + f", {heard.learned[name]}"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--barge", action="store_true", help="compare the barge-in gates (see above)")
    ap.add_argument("--late", action="store_true", help="with --barge: only the users 9 s in")
    ap.add_argument("--user", default=BARGE_USER, help="with --barge: what the user says")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        room = start_room(Path(tmp) / "room")
        os.environ.update(room.env)
        try:
            if args.barge:
                print(learning_cost(), flush=True)
                for delay_ms, gain_db, user_at in [c for c in BARGE_CASES if c[2] > 1.0 or not args.late]:
                    for _ in range(args.runs):
                        print("\n".join(barge_run(room, delay_ms, gain_db, user_at, args.user)), flush=True)
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
