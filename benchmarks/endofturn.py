"""End of turn on the espeak-ng clip set (tests/turn_clips.py): a fixed silence vs Smart Turn v3.2.

    PYTHONPATH=. python -m benchmarks.endofturn [--threads 1]

For each policy over the 140 pause points of the 80 clips, each with its silence counted from 0, 10 and 20 ms
after the speech stopped (where the VAD's 30 ms frames put it): how often it decides right (a complete turn ends
within 1 s, a thinking pause does not end the turn), the false-cut rate (thinking pauses that ended the turn),
the end-of-turn latency after complete turns (silence until the turn ends: median and 90th percentile; a turn
the policy never ends counts as the 5 s limit), and the model's CPU time per decision (one onnxruntime run
on the last <= 8 s: the log-mel features and the onnxruntime run apart). Policies: fixed 720 ms (the old
hangover), fixed 400 ms, the model alone (no transcript), and the model with the transcript's last word (the
daemon's policy) asked after each of --score-after ms of silence (the daemon's default first).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np

from assistant.audio.format import CAPTURE_RATE
from assistant.config import EndOfTurnConfig
from assistant.endofturn import EndOfTurnPolicy, FixedSilence, SmartTurn, SmartTurnPolicy, model_input
from tests.turn_clips import clip_set, end_after_ms, handled_right, smart_turn_file

GRID_MS = (0, 10, 20)  # the VAD's 30 ms frames place the pause's start up to 20 ms (in 10 ms hops) after speech


def evaluate(policy: EndOfTurnPolicy, score: object) -> dict[str, float]:
    """Decisions at every pause point, each with the silence counted from GRID_MS after the speech stopped (the
    model hears that much more silence): Smart Turn's score swings by up to +-0.3 over such shifts."""
    right, cuts, latency = [], [], []
    for clip in clip_set():
        for point in clip.points:
            for shift in GRID_MS:
                moved = dataclasses.replace(point, at=point.at + CAPTURE_RATE * shift // 1000)
                ended = end_after_ms(policy, clip, moved, score)  # type: ignore[arg-type]
                right.append(handled_right(moved, ended))
                if point.complete:
                    latency.append(ended if ended is not None else 5000)
                else:
                    cuts.append(ended is not None)
    return {
        "accuracy": float(np.mean(right)),
        "false_cut_rate": float(np.mean(cuts)),
        "latency_median_ms": float(statistics.median(latency)),
        "latency_p90_ms": float(np.percentile(latency, 90)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    default = EndOfTurnConfig().score_after_ms
    ap.add_argument("--score-after", type=int, nargs="*", default=[default, 120, 150], metavar="MS")
    args = ap.parse_args()
    model = SmartTurn.load(smart_turn_file(), threads=args.threads)
    clips = clip_set()
    points = sum(len(c.points) for c in clips)
    cache: dict[bytes, float] = {}
    cpu: list[float] = []
    wall: list[float] = []
    features: list[float] = []

    def score(audio: np.ndarray) -> float:
        key = audio.tobytes()
        if key not in cache:
            c0, w0 = time.process_time(), time.perf_counter()
            model_input(audio)
            features.append(time.process_time() - c0)
            c0, w0 = time.process_time(), time.perf_counter()
            cache[key] = model.score(audio)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
        return cache[key]

    policies: dict[str, EndOfTurnPolicy] = {
        "fixed 720 ms": FixedSilence(720),
        "fixed 400 ms": FixedSilence(400),
        "Smart Turn alone": SmartTurnPolicy(fillers=frozenset()),
    }
    for ms in args.score_after:
        policies[f"Smart Turn + last word @{ms}"] = SmartTurnPolicy(score_after_ms=ms)
    print(f"{len(clips)} clips, {points} pause points, threads={args.threads}")
    for name, policy in policies.items():
        r = evaluate(policy, score)
        print(
            f"{name:24s} accuracy {r['accuracy']:.1%}  false cuts {r['false_cut_rate']:.1%}  "
            f"end latency median {r['latency_median_ms']:.0f} ms, p90 {r['latency_p90_ms']:.0f} ms"
        )
    print(
        f"model decision: CPU {statistics.median(cpu) * 1000:.1f} ms median (log-mel "
        f"{statistics.median(features) * 1000:.1f} ms of it), wall {statistics.median(wall) * 1000:.1f} ms median, "
        f"{max(wall) * 1000:.1f} ms max over {len(cpu)} decisions"
    )


if __name__ == "__main__":
    main()
