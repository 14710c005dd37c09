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

Then the daemon's path: the real VAD and turn core over each whole clip (after 300 ms of silence), the model
asked where the core asks it (at the VAD's PauseStarted after each of --ask-after ms, padded with zeros, or at
SilenceStarted) and its answer delivered --model-ms later in capture time; the partial transcript holds the words
spoken before the current pause, 300 ms late. Per setting: thinking pauses cut, turns cut inside speech (away
from any pause point: the VAD's silence report was wrong), and of the turns that reached their true end of speech,
the share ended within 1 s of it and the end's latency after it (median and 90th percentile; never ended counts
as the clip's 2.5 s tail). The room adds the capture path (20 ms blocks, the canceller's 8 ms) and a loaded
machine's wait for a core.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import numpy as np

from assistant.audio.format import CAPTURE_RATE
from assistant.config import Config, EndOfTurnConfig
from assistant.endofturn import EndOfTurnPolicy, FixedSilence, SmartTurn, SmartTurnPolicy, model_input, vad_settings
from assistant.events import StateChanged, TurnState
from assistant.policies import daemon_policy, end_of_turn, ring_samples
from assistant.turns import AudioIn, Fed, Feed, Input, Publish, ResetVad, RunVad, Scored, ScoreTurn, TurnCore
from assistant.vad import Vad
from tests.turn_clips import TAIL_S, Clip, clip_set, end_after_ms, handled_right, smart_turn_file

GRID_MS = (0, 10, 20)  # the VAD's 30 ms frames place the pause's start up to 20 ms (in 10 ms hops) after speech
BLOCK = CAPTURE_RATE * 20 // 1000  # 320: the microphone's 20 ms blocks (audio.block_ms)
LEAD = CAPTURE_RATE * 300 // 1000  # silence before each clip, so the VAD's noise window starts quiet
STT_LAG = CAPTURE_RATE * 300 // 1000  # a partial transcript holds the words this late (stt.partial_interval_ms)


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


def daemon_end(cfg: Config, clip: Clip, score: Callable[[np.ndarray], float], model_ms: int) -> int | None:
    """Where (sample of `clip`) the daemon's turn core, with the real VAD, first ends the turn; None: never."""
    policy = dataclasses.replace(daemon_policy(cfg), speculative=False)  # no transcriber: nothing to speculate
    core = TurnCore(policy, end_of_turn(cfg, score), ring_samples(cfg))
    vad = Vad(vad_settings(cfg.vad, cfg.endofturn))
    audio = np.concatenate([np.zeros(LEAD, np.int16), clip.audio])
    due: list[tuple[int, int, float]] = []  # (ring position the answer arrives at, job, P)
    ended: list[int] = []

    def partial(at: int) -> str:  # a streaming transcript: the words spoken before the next speech, known late
        heard = at - LEAD - STT_LAG
        for point in clip.points:
            if heard < point.at + CAPTURE_RATE * (point.pause_ms or 0) // 1000:
                return point.partial_text
        return clip.points[-1].partial_text

    def apply(inp: Input) -> None:
        for action in core.handle(inp):
            match action:
                case RunVad(samples):
                    for ev in vad.feed(samples):
                        apply(ev)
                case ResetVad(origin):
                    vad.reset(origin)
                case ScoreTurn(job, heard):
                    due.append((core.ring.end + CAPTURE_RATE * model_ms // 1000, job, score(heard)))
                case Feed(utt):
                    apply(Fed(utt, partial(core.ring.end), core.ring.end / CAPTURE_RATE))
                case Publish(StateChanged(new=TurnState.THINKING)):
                    ended.append(core.ring.end - LEAD)

    for i in range(0, len(audio), BLOCK):
        now = i / CAPTURE_RATE
        for answer in [d for d in due if d[0] <= i]:
            due.remove(answer)
            apply(Scored(answer[1], answer[2], now))
        if ended:
            return ended[0]
        apply(AudioIn(audio[i : i + BLOCK], now, now + BLOCK / CAPTURE_RATE))
    return ended[0] if ended else None


def evaluate_daemon(cfg: Config, score: Callable[[np.ndarray], float], model_ms: int) -> dict[str, float]:
    """daemon_end over every clip: thinking pauses cut, turns cut inside speech, and of the turns not cut before
    their true end of speech, the share ended within 1 s of it and the end's latency after it (ms)."""
    right, cuts, inside, latency = [], [], [], []
    for clip in clip_set():
        end = daemon_end(cfg, clip, score, model_ms)
        last = clip.points[-1].at
        pauses = [p for p in clip.points if not p.complete]
        cut = any(end is not None and p.at <= end <= p.at + CAPTURE_RATE * (p.pause_ms or 0) // 1000 for p in pauses)
        cuts += [cut] * len(pauses)
        inside.append(end is not None and end < last and not cut)
        if end is None or end >= last:  # the turn reached its true end: how soon did it end there
            late_ms = TAIL_S * 1000 if end is None else (end - last) * 1000 / CAPTURE_RATE
            right.append(late_ms <= 1000)
            latency.append(late_ms)
    return {
        "complete": float(np.mean(right)),
        "false_cut_rate": float(np.mean(cuts)),
        "inside_rate": float(np.mean(inside)),
        "latency_median_ms": float(statistics.median(latency)),
        "latency_p90_ms": float(np.percentile(latency, 90)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    default = EndOfTurnConfig().score_after_ms
    ap.add_argument("--score-after", type=int, nargs="*", default=[default, 120, 180], metavar="MS")
    asked = EndOfTurnConfig().ask_after_ms
    ap.add_argument("--ask-after", type=int, nargs="*", default=[asked, default], metavar="MS")
    ap.add_argument("--model-ms", type=int, nargs="*", default=[50, 135], metavar="MS")
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
    print("the daemon's path (the real VAD and turn core; the answer arrives --model-ms after it is asked):")
    settings = {"fixed silence (vad.hangover_ms)": (Config().replace({"endofturn.detector": "silence"}), [0])}
    for ask in args.ask_after:
        settings[f"Smart Turn asked @{ask}"] = (Config().replace({"endofturn.ask_after_ms": ask}), args.model_ms)
    for name, (cfg, delays) in settings.items():
        for ms in delays:
            r = evaluate_daemon(cfg, score, ms)
            print(
                f"{name:28s} model {ms:3d} ms: thinking pauses cut {r['false_cut_rate']:.1%}, cut inside speech "
                f"{r['inside_rate']:.1%}; whole turns ended within 1 s {r['complete']:.1%}, after the speech median "
                f"{r['latency_median_ms']:.0f} ms, p90 {r['latency_p90_ms']:.0f} ms"
            )


if __name__ == "__main__":
    main()
