"""Echo-return-loss enhancement of the canceller in the virtual laptop room (needs pulseaudio, swh-plugins and
espeak-ng; Linux). A spoken reply at -20 dBFS plays through the real Playback, comes back into the real Capture
through the room's echo loop (tests/audio_room.py: module-loopback delay, gain, allpass reverb), and the
canceller removes it with the played reference; a user says a sentence at the echo's level 9 s in.

    PYTHONPATH=. python -m benchmarks.echo [--runs 2]
    PYTHONPATH=. python -m benchmarks.echo --barge [--runs 3]
    PYTHONPATH=. python -m benchmarks.echo --record DIR [--runs 2]   # the room, once: no user
    PYTHONPATH=. python -m benchmarks.echo --replay DIR             # offline, many users, deterministic
    PYTHONPATH=. python -m benchmarks.echo --trace FILE [--span 0 2]  # one recording, frame by frame

--trace replays one recording, a live room test's too (ASSISTANT_ECHO_RECORD=DIR with
tests/pipeline/test_echo_turns_room.py keeps what the daemon's canceller saw), and prints per 30 ms VAD frame its
level, the gate, whether the linear path judged it, webrtcvad's verdict, and per 10 ms the played peak, the
microphone, the path's residual and that residual turned down per bin, relative to the peak, with the path's
bound and double-talk state. Replaying a live recording gives the live verdicts (detection within ~30 ms of the
live figure, which also counts the daemon's processing delay), so a live miss is found offline.

--barge compares the barge-in gates instead: issue 13 (b)'s sentence (--user) 1 s and 9 s into the reply, at the
echo's level over the 60 ms loop (0 and -6 dB), and at a normal voice (-20 dBFS) in a room with no loop at all.
Three cancellers clean the same microphone blocks, each judged by a real VAD (default [vad] settings) against its
own gate: "fixed" (AEC3 alone: the played peak, + RESIDUAL_DB once AEC3 has adapted), "room" (+ the learned echo
return; no echo path -> the gate's floor and the microphone untouched) and "linear" (EchoCanceller now: + the
linear echo path, assistant/audio/echo_path.py). It prints the detection delay after the user's first sample
(the VAD's decision by capture sample, so a busy machine does not lengthen it), false reports (starts outside the
user's speech + 0.5 s), the canceller's CPU time per second of audio (AEC3 and the speaker clock's look-ups
included) and what it learned; first, the CPU cost of the room learning and of the linear path alone.

--record keeps what the canceller saw in the room (the microphone's blocks with their capture times, each chunk
written to the speaker and when, every reading of the speaker's clock) for loops of 60 ms at 0 and -6 dB,
120 ms at 0 dB and 90 ms at -6 dB, with no user; --replay mixes a user into those recordings at the echo's level
(the reply's RMS times the loop's gain, as room.play does: the user is not looped) at several times into the
reply, and judges each with the canceller and a real VAD as the daemon does: the detection delay after the
user's first sample, and false reports. It runs the code as it is now on the same room, so a change to the
canceller is compared on identical input.

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from assistant.audio.capture import Capture
from assistant.audio.echo import AEC_DELAY, AEC_FRAME, EchoCanceller
from assistant.audio.echo_path import EchoPath
from assistant.audio.format import (
    CAPTURE_RATE,
    SILENT_DBFS,
    TTS_RATE,
    AudioBlock,
    float32_to_int16,
    int16_to_float32,
    level_dbfs,
)
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
                    vads[name].set_playback(gate > SILENT_DBFS, gate, c.linear_at(out.t, len(out.samples)))
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


# ---- record once, replay offline ------------------------------------------------------------------------------

RECORD_LOOPS = ((60.0, 0.0), (60.0, -6.0), (120.0, 0.0), (90.0, -6.0))  # delay ms, gain dB
MIC_SETTLE_S = 1.0  # tests/pipeline/test_echo_turns_room.py's daemon waits as long before its first reply
REPLAY_USER_AT = (1.0, 1.5, 2.0, 4.0, 9.0)  # seconds into the reply (after its first sample played)


class ClockLog:
    """The speaker's clock as the canceller read it: live, every reading is kept (`inner` set); replayed, each
    reading of a time is answered as it was then (a reading of a time never read: the nearest one read, moved
    on by the time between them, within what was played)."""

    def __init__(self, inner: object | None = None, ts: np.ndarray | None = None, values: np.ndarray | None = None):
        self.inner = inner
        self.ts: list[float] = [] if ts is None else ts.tolist()
        self.values: list[int] = [] if values is None else values.tolist()
        self._seen: dict[float, list[int]] = {}
        for t, v in zip(self.ts, self.values, strict=True):
            self._seen.setdefault(t, []).append(v)
        self._asked: dict[float, int] = {}
        order = np.argsort(self.ts, kind="stable") if self.ts else np.zeros(0, int)
        self._sorted_t = np.asarray(self.ts)[order] if self.ts else np.zeros(0)
        self._sorted_v = np.asarray(self.values)[order] if self.ts else np.zeros(0, int)
        self._most = max(self.values, default=0)

    def played_before(self, t: float) -> int:
        if self.inner is not None:
            v = int(self.inner.played_before(t))  # type: ignore[attr-defined]
            self.ts.append(t)
            self.values.append(v)
            return v
        seen = self._seen.get(t)
        if seen:
            k = self._asked.get(t, 0)
            self._asked[t] = k + 1
            return seen[min(k, len(seen) - 1)]
        if not len(self._sorted_t):
            return 0
        i = int(np.clip(np.searchsorted(self._sorted_t, t), 1, len(self._sorted_t) - 1))
        j = i if abs(self._sorted_t[i] - t) < abs(self._sorted_t[i - 1] - t) else i - 1
        v = int(self._sorted_v[j])
        if v <= 0:
            return 0
        return int(np.clip(v + round((t - self._sorted_t[j]) * TTS_RATE), 0, self._most))


@dataclass
class Recording:
    """What one canceller saw of a reply in the room (no user): enough to run any canceller on it again."""

    gain_db: float
    blocks: list[AudioBlock]  # the microphone, with capture times
    chunks: list[tuple[int, np.ndarray]]  # (blocks captured before it was written, the chunk at TTS_RATE)
    clock: ClockLog
    underruns: int
    runs: list[int] = field(default_factory=list)  # blocks captured before each new_run() (a live daemon's flush)
    user_at: int | None = None  # the microphone sample where a user in the recording began (a live test's)

    @property
    def reply_at(self) -> int:
        """The microphone sample at which the reply's first sample played (by the speaker's clock)."""
        ts, values = np.array(self.clock.ts), np.array(self.clock.values)
        first = ts[values > 0] - values[values > 0] / TTS_RATE
        return round((float(np.min(first)) - self.blocks[0].t) * CAPTURE_RATE)

    def save(self, path: Path) -> None:
        np.savez_compressed(
            path,
            gain_db=self.gain_db,
            samples=np.concatenate([b.samples for b in self.blocks]),
            block_lengths=np.array([len(b.samples) for b in self.blocks]),
            block_ts=np.array([b.t for b in self.blocks]),
            chunk_at=np.array([i for i, _ in self.chunks]),
            chunks=np.concatenate([c for _, c in self.chunks]),
            chunk_lengths=np.array([len(c) for _, c in self.chunks]),
            clock_ts=np.array(self.clock.ts),
            clock_values=np.array(self.clock.values),
            underruns=self.underruns,
            runs=np.array(self.runs, int),
            user_at=-1 if self.user_at is None else self.user_at,
        )

    @classmethod
    def load(cls, path: Path) -> Recording:
        z = np.load(path)
        cuts = np.cumsum(z["block_lengths"])[:-1]
        blocks = [AudioBlock(x, float(t)) for x, t in zip(np.split(z["samples"], cuts), z["block_ts"], strict=True)]
        chunks = list(
            zip(z["chunk_at"].tolist(), np.split(z["chunks"], np.cumsum(z["chunk_lengths"])[:-1]), strict=True)
        )
        runs = z["runs"].tolist() if "runs" in z else []
        user_at = int(z["user_at"]) if "user_at" in z and int(z["user_at"]) >= 0 else None
        clock = ClockLog(None, z["clock_ts"], z["clock_values"])
        return cls(float(z["gain_db"]), blocks, chunks, clock, int(z["underruns"]), runs, user_at)


async def record_reply(room: Room, reply: np.ndarray, gain_db: float) -> Recording:
    """One reply through the room's echo loop with no user, the canceller running as in the daemon (so the
    speaker's clock is read when it would be), everything it saw kept."""
    cfg = AudioConfig()
    blocks: list[AudioBlock] = []
    chunks: list[tuple[int, np.ndarray]] = []
    with Playback(cfg) as speaker:
        clock = ClockLog(speaker)
        canceller = EchoCanceller(clock)

        def played(chunk: np.ndarray) -> None:
            chunks.append((len(blocks), chunk.copy()))
            canceller.played(chunk)

        async with Capture(cfg) as mic:
            # as in the daemon, the microphone runs a while before the reply: a fresh PulseAudio input stream
            # dates its first ~0.5 s of blocks early, which misplaces the first reply's echo
            while sum(len(b.samples) for b in blocks) < MIC_SETTLE_S * CAPTURE_RATE:
                blocks.append(await mic.read())
                canceller.process(blocks[-1])
            async for block in room_blocks(room, speaker, mic, reply, None, 0.0, played):
                blocks.append(block)
                out = canceller.process(block)
                canceller.echo_dbfs(out.t, len(out.samples))
        underruns = speaker.underruns
    return Recording(gain_db, blocks, chunks, clock, underruns)


def replay(
    rec: Recording, user: np.ndarray | None, user_at: int, traced: bool = False
) -> tuple[list[int], EchoCanceller]:
    """The recording with `user` (int16) added at microphone sample `user_at`, judged offline by the canceller
    and a real VAD as the daemon does; the capture samples at which each SpeechStarted was decided. `traced`: the
    canceller and the VAD are TracedCanceller and TracedVad."""
    clock = ClockLog(None, np.array(rec.clock.ts), np.array(rec.clock.values))
    canceller = TracedCanceller(clock) if traced else EchoCanceller(clock)
    vad = TracedVad(VadConfig()) if traced else Vad(VadConfig())
    if traced:
        canceller.vad = vad  # type: ignore[attr-defined]
    starts: list[int] = []
    chunks = iter(rec.chunks)
    pending = next(chunks, None)
    at = 0
    for i, block in enumerate(rec.blocks):
        for _ in range(rec.runs.count(i)):
            canceller.new_run()
        while pending is not None and pending[0] <= i:
            canceller.played(pending[1])
            pending = next(chunks, None)
        x = block.samples
        if user is not None and at + len(x) > user_at and at < user_at + len(user):
            mixed = x.astype(np.int32)
            lo, hi = max(at, user_at), min(at + len(x), user_at + len(user))
            mixed[lo - at : hi - at] += user[lo - user_at : hi - user_at]
            x = np.clip(mixed, -32768, 32767).astype(np.int16)
        at += len(x)
        out = canceller.process(AudioBlock(x, block.t))
        gate = canceller.echo_dbfs(out.t, len(out.samples))
        vad.set_playback(gate > SILENT_DBFS, gate, canceller.linear_at(out.t, len(out.samples)))
        starts += [vad.position - AEC_DELAY for ev in vad.feed(out.samples) if isinstance(ev, SpeechStarted)]
    return starts, canceller


class TracedCanceller(EchoCanceller):
    """The canceller, keeping per 10 ms frame the linear path judged: (microphone sample of the frame, played
    peak dB, microphone dB, linear residual dB, the path's bound, what it takes off, frames in a row over,
    hold left, the gate handed on or None, aligning, the room's delay found)."""

    def __init__(self, clock: object) -> None:
        super().__init__(clock)  # type: ignore[arg-type]
        self.frames: list[tuple[object, ...]] = []

    def _linear(self, residual: np.ndarray, mic: np.ndarray) -> tuple[np.ndarray | None, float | None]:
        peak = self._previous[1]
        aligning = self._aligning is not None
        out, gate = super()._linear(residual, mic)
        res = np.clip(np.round(residual * 32768.0), -32768, 32767).astype(np.int16)
        peak_db = 10.0 * float(np.log10(peak)) if peak > 0 else SILENT_DBFS
        self.frames.append(
            (
                self._mic_at - 2 * AEC_FRAME,
                peak_db,
                level_dbfs(mic),
                level_dbfs(res),
                self._linear_db,
                self._taken_db,
                self._overs,
                self._talk_hold,
                gate,
                aligning,
                self._bulk,
                level_dbfs(np.clip(np.round(self._path.suppressed * 32768.0), -32768, 32767).astype(np.int16)),
            )
        )
        return out, gate


class TracedVad(Vad):
    """The VAD, keeping per 30 ms frame (its first sample, its level, webrtcvad's and the noise gate's verdict,
    the echo level it was judged against, whether that was the linear path's, loud enough)."""

    def __init__(self, cfg: VadConfig) -> None:
        super().__init__(cfg)
        self.frames: list[tuple[object, ...]] = []

    def _is_speech(self, frame: np.ndarray, level: float) -> bool:
        voiced = super()._is_speech(frame, level)  # (webrtcvad keeps state: asked once per frame)
        loud = self._loud_enough(level)
        self.frames.append((self.position, level, voiced, self._playback_dbfs, self._playback_linear, loud))
        return voiced


def trace_main(path: Path, start_s: float, end_s: float) -> None:
    """Replay one recording (a live test's: `ASSISTANT_ECHO_RECORD`) and print, per 30 ms VAD frame from
    `start_s` to `end_s` after the reply's first sample, what the canceller and the VAD saw."""
    rec = Recording.load(path)
    starts, c = replay(rec, None, 0, traced=True)
    zero = rec.reply_at
    user = "" if rec.user_at is None else f", user from {(rec.user_at - zero) / CAPTURE_RATE:.3f} s"
    print(f"{path.name}: reply from sample {zero}{user}, underruns {rec.underruns}, runs at blocks {rec.runs}")
    print(f"starts (s after the reply began): {[round((x - zero) / CAPTURE_RATE, 3) for x in starts]}")
    print_trace(c, c.vad, zero, rec.user_at, start_s, end_s)  # type: ignore[attr-defined]


def print_trace(
    c: TracedCanceller, vad: TracedVad, zero: int, user_at: int | None, start_s: float, end_s: float
) -> None:
    """Per 30 ms VAD frame from `start_s` to `end_s` after microphone sample `zero`: what it and the canceller
    saw."""
    rec_user = user_at
    print("holds", c.holds, "bulk", c._bulk, "offset", c._offset)
    linear = {f[0]: f for f in c.frames}
    print("   t(s)  vad: level  gate+6 lin voiced loud |  per 10 ms: peak  mic   res    sup  bound taken overs hold")
    for pos, level, voiced, gate, lin, loud in vad.frames:
        mic_sample = pos - AEC_DELAY
        t = (mic_sample - zero) / CAPTURE_RATE
        if not start_s <= t <= end_s:
            continue
        parts = []
        for k in range(3):
            f = linear.get(mic_sample + k * AEC_FRAME)
            if f is None:
                parts.append("-")
                continue
            _, peak, mic, res, bound, taken, overs, hold, _, al, _, sup = f
            b = "None" if bound is None else f"{bound:+.1f}"
            row = f"{peak:5.1f} {mic - peak:+5.1f} {res - peak:+6.1f} {sup - peak:+6.1f} {b:>5} {taken:4.1f}"
            row += f" {overs} {hold:2d}"
            parts.append(row + (" A" if al else ""))
        user_mark = "U" if rec_user is not None and mic_sample >= rec_user else " "
        print(
            f"{user_mark}{t:6.3f} {level:6.1f} {gate + 6:6.1f} {'L' if lin else '.'} {'v' if voiced else '.'} "
            f"{'!' if loud else '.'} | " + " | ".join(parts)
        )


def record_main(folder: Path, runs: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        room = start_room(Path(tmp) / "room")
        os.environ.update(room.env)
        try:
            for delay_ms, gain_db in RECORD_LOOPS:
                for r in range(runs):
                    loop = start_echo_loop(room, delay_ms, gain_db)
                    try:
                        time.sleep(0.5)
                        rec = asyncio.run(record_reply(room, reply_audio(), gain_db))
                    finally:
                        loop.stop()
                    name = folder / f"loop{delay_ms:.0f}ms{gain_db:+.0f}dB-{r + 1}.npz"
                    rec.save(name)
                    print(f"{name}: {len(rec.blocks)} blocks, underruns {rec.underruns}", flush=True)
        finally:
            room.close()


def replay_main(folder: Path, text: str, over_db: float) -> None:
    from tests.speech import speech_span

    spoken = int16_to_float32(say(text))
    for path in sorted(folder.glob("*.npz")):
        rec = Recording.load(path)
        began = time.process_time()
        alone, c = replay(rec, None, 0)
        audio_s = sum(len(b.samples) for b in rec.blocks) / CAPTURE_RATE
        print(
            f"{path.name} (reply from {rec.reply_at / CAPTURE_RATE:.2f} s, underruns {rec.underruns}): "
            f"echo alone, false reports {len(alone)} holds {c.holds} "
            f"{[round(s / CAPTURE_RATE, 2) for s in alone]}, CPU {1000 * (time.process_time() - began) / audio_s:.0f} "
            f"ms per s, linear path leaves {c.linear_return_db}",
            flush=True,
        )
        level = 10 ** ((-20 + rec.gain_db + over_db) / 20)
        user = float32_to_int16(spoken / np.sqrt(np.mean(np.square(spoken))) * level)
        first = speech_span(user)[0]
        for user_at_s in REPLAY_USER_AT:
            at = rec.reply_at + round(user_at_s * CAPTURE_RATE)
            starts, cu = replay(rec, user, at)
            onset, end = at + first, at + len(user) + round(BARGE_TAIL_S * CAPTURE_RATE)
            mine = [s for s in starts if onset - 480 <= s < end]
            false = [round(s / CAPTURE_RATE, 2) for s in starts if s not in mine]
            delay = f"{1000 * (mine[0] - onset) / CAPTURE_RATE:.0f} ms" if mine else "never"
            print(
                f"  user {over_db:+.0f} dB {user_at_s:.1f} s into the reply: detected {delay}, false {false}, "
                f"holds {cu.holds}",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--barge", action="store_true", help="compare the barge-in gates (see above)")
    ap.add_argument("--late", action="store_true", help="with --barge: only the users 9 s in")
    ap.add_argument("--user", default=BARGE_USER, help="with --barge / --replay: what the user says")
    ap.add_argument("--record", type=Path, help="record the room's replies (no user) into this folder")
    ap.add_argument("--replay", type=Path, help="replay the recordings in this folder with users mixed in")
    ap.add_argument("--over", type=float, default=0.0, help="with --replay: the user's level over the echo, dB")
    ap.add_argument("--trace", type=Path, help="replay one recording (a live test's) and print it frame by frame")
    ap.add_argument("--span", type=float, nargs=2, default=(0.0, 2.0), help="with --trace: seconds into the reply")
    args = ap.parse_args()
    if args.trace:
        trace_main(args.trace, *args.span)
        return
    if args.record:
        record_main(args.record, args.runs)
        return
    if args.replay:
        replay_main(args.replay, args.user, args.over)
        return
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
