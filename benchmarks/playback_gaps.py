"""Gaps in played replies: generation close to real time, on an idle machine and with one core kept busy.

    PYTHONPATH=. python -m benchmarks.playback_gaps [--replies 3] [--reply-s 12] [--frame-ms 60] [--double]

A stand-in for the TTS writes one 80 ms frame (12.5 Hz codec) of a continuous tone at a time, after a burst of
CPU work calibrated to take `--frame-ms` on this machine when idle (60 ms: 0.75 x real time, as a small model on
a laptop CPU). Playback plays it through the virtual PulseAudio room, whose speaker is recorded; a gap is a run
of >= 100 ms of silence inside a reply. Each condition is run with the pacer (the lead measured from the time
per frame) and with the fixed 40 ms prebuffer it replaces; "busy" runs another process spinning on one core.
Prints one line per run and a JSON summary: gaps per minute of reply, underruns per minute, the lead used.
--double plays to the sounddevice double of tests/audio_doubles.py instead (a thread calling back in real
time), for machines without PulseAudio; what it was given is what is judged.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from assistant.audio.format import TTS_FRAME_SAMPLES, TTS_RATE
from assistant.audio.playback import Pacer, Playback
from assistant.config import AudioConfig
from tests.audio_room import start_room

GAP_S = 0.1  # silence this long inside a reply is a gap the listener hears
SILENT = 300  # |int16| below this is silence (the tone is at 0.3 full scale, ~9800)


def calibrate(ms: float) -> int:
    """Matrix products that take `ms` milliseconds on this machine now."""
    a = np.random.default_rng(0).standard_normal((96, 96)).astype(np.float32)
    n, took = 1, 0.0
    while took < 0.05:
        n *= 2
        t0 = time.perf_counter()
        for _ in range(n):
            a = np.tanh(a @ a)
        took = time.perf_counter() - t0
    return max(1, round(n * ms / 1000 / took))


def work(n: int) -> None:
    a = np.random.default_rng(1).standard_normal((96, 96)).astype(np.float32)
    for _ in range(n):
        a = np.tanh(a @ a)


def gaps(recorded: np.ndarray) -> list[float]:
    """Lengths (s) of silent runs >= GAP_S between the first and the last loud sample."""
    loud = np.flatnonzero(np.abs(recorded.astype(np.int32)) >= SILENT)
    if len(loud) < 2:
        return []
    between = np.diff(loud) / TTS_RATE
    return [float(g) for g in between if g >= GAP_S]


class DoubleSpeaker:
    """What the sounddevice double's output streams were given, from `record()` on (int16, like parec's)."""

    def __init__(self) -> None:
        from tests import audio_doubles

        self.sd = audio_doubles.FakeSounddevice()
        audio_doubles.install(None, self.sd)

    def record(self) -> DoubleSpeaker:
        self.marks = {id(s): len(s.heard) for s in self.sd.streams}
        return self

    def stop(self) -> np.ndarray:
        parts = [np.concatenate(s.heard[self.marks.get(id(s), 0) :] or [np.zeros(0)]) for s in self.sd.streams]
        return (np.concatenate(parts) * 32767).astype(np.int16)


def one_reply(room: Any, cfg: AudioConfig, frames: int, per_frame: int, paced: bool) -> dict[str, float]:
    """A warm-up reply (the pacer learns from one reply to the next, as in a conversation), then a recorded one."""
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(frames * TTS_FRAME_SAMPLES) / TTS_RATE)).astype(np.float32)
    with Playback(cfg) as out:
        if not paced:
            out.pacer = Pacer(cfg.output_prebuffer_ms / 1000, max_s=cfg.output_prebuffer_ms / 1000)
        for recorded in (False, True):
            recorder = room.record() if recorded else None
            out.flush()
            began, under = time.monotonic(), out.underruns
            for i in range(frames):
                work(per_frame)
                out.write(tone[i * TTS_FRAME_SAMPLES : (i + 1) * TTS_FRAME_SAMPLES])
            while out.last_sample_time is None or time.monotonic() < out.last_sample_time + 0.2:
                time.sleep(0.05)
            took, lead = time.monotonic() - began, out.pacer.lead_s()
        underruns = out.underruns - under
    assert recorder is not None
    found = gaps(recorder.stop())
    return {"reply_s": took, "gaps": len(found), "gap_s": sum(found), "underruns": underruns, "lead_s": lead}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replies", type=int, default=3)
    ap.add_argument("--reply-s", type=float, default=12.0)
    ap.add_argument("--frame-ms", type=float, default=60.0, help="generation time per 80 ms frame when idle")
    ap.add_argument("--double", action="store_true", help="the sounddevice double instead of the PulseAudio room")
    args = ap.parse_args()
    room: Any = DoubleSpeaker() if args.double else start_room(Path(tempfile.mkdtemp()) / "room")
    if not args.double:
        os.environ.update(room.env)
    frames = round(args.reply_s / 0.08)
    per_frame = calibrate(args.frame_ms)
    cfg = AudioConfig()
    summary: dict[str, Any] = {
        "frame_ms_idle": args.frame_ms,
        "reply_s": args.reply_s,
        "cpus": os.cpu_count(),
        "speaker": "sounddevice double" if args.double else "PulseAudio room",
    }
    try:
        for load in ("idle", "one core busy"):
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load == "one core busy" else None
            try:
                for paced in (False, True):
                    runs = [one_reply(room, cfg, frames, per_frame, paced) for _ in range(args.replies)]
                    minutes = sum(r["reply_s"] for r in runs) / 60
                    name = f"{load}, {'paced' if paced else 'fixed 40 ms prebuffer'}"
                    for r in runs:
                        print(f"{name}: " + " ".join(f"{k}={v:.2f}" for k, v in r.items()), flush=True)
                    summary[name] = {
                        "gaps_per_min": round(sum(r["gaps"] for r in runs) / minutes, 1),
                        "gap_s_per_min": round(sum(r["gap_s"] for r in runs) / minutes, 2),
                        "underruns_per_min": round(sum(r["underruns"] for r in runs) / minutes, 1),
                        "lead_s": round(float(np.median([r["lead_s"] for r in runs])), 2),
                    }
            finally:
                if spinner is not None:
                    spinner.kill()
                    spinner.wait()
    finally:
        if not args.double:
            room.close()
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
