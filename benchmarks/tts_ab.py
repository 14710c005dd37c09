"""Which TTS layout makes a frame fastest: a paired, interleaved A/B of layouts in one process.

    PYTHONPATH=. python -m benchmarks.tts_ab --size 0.6B --layouts fused no-addmm fuse=attention=gemv,residual=add \
        fused [--frames 48] [--seconds 200] [--rounds 400] [--layers 28 5] [--tiny-widths]

Why: on a lent GPU the frame is host-bound, and one process per layout (`gpu.sh ab`) saw one layout at 16-33 ms
per frame minutes apart, more than any layout's difference. Here the random-weight checkpoint is loaded once per
layout (a fresh model each; a layout named twice is an A/A control: its difference should come out as nothing),
each is warmed, and then rounds run every layout once in a seeded random order. A unit is one streamed utterance
of --frames frames through `Utterance.step()` as the daemon calls it (the same text, voice and seed each time).
What drifts between rounds moves both sides of a pair alike, so each later layout is compared with the first by
its paired differences within rounds: their median with a bootstrap 95% interval, and a sign test.

Per unit: ms per frame (the utterance's wall time / frames), and host ms per frame: the time inside the calls
that build and enqueue the frames' graphs (the talker pass and the frame kernel with its async_eval, the first
unit step's prefill included), apart from waiting on the device, the codec and numpy. Measuring stops at the end
of the round during which --seconds (counted from the start, loads and warm-up included) run out.
Layouts: fused (the loader's), unfused (the checkpoint's), no-addmm (= fuse=residual=add), fuse=KEY=VALUE,...
(`FuseOptions`, assistant/tts/qwen3/talker.py). Prints one JSON row on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from benchmarks.checkpoints import add_tts_args, loading_as, tts_precision, write_checkpoint
from benchmarks.tts_vs import TEXT, summary

MEASURES = ("ms_per_frame", "host_ms_per_frame")  # compared pair by pair; first_chunk_ms only summarized


def sign_test(fewer: int, more: int) -> float:
    """Two-sided exact sign test: the chance of a split at least this uneven between `fewer` and `more` (ties
    left out) if either side were equally likely."""
    n, k = fewer + more, min(fewer, more)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired(base: list[float], other: list[float], seed: int = 0, resamples: int = 4000) -> dict[str, Any]:
    """`other` against `base` unit by unit (the same round: index i of each): the median difference with a
    percentile-bootstrap 95% interval over the pairs, the mean, the median ratio, and how many pairs `other`
    was faster (lower) and slower in, with the sign test's p."""
    d = np.asarray(other, np.float64) - np.asarray(base, np.float64)
    if len(d) == 0:
        raise ValueError("no pairs: both layouts need units from the same rounds")
    rng = np.random.default_rng(seed)
    boot = np.median(d[rng.integers(0, len(d), (resamples, len(d)))], axis=1)
    lower, higher = int((d < 0).sum()), int((d > 0).sum())
    return {
        "median_diff": round(float(np.median(d)), 4),
        "ci95": [round(float(np.percentile(boot, 2.5)), 4), round(float(np.percentile(boot, 97.5)), 4)],
        "mean_diff": round(float(d.mean()), 4),
        "median_ratio": round(float(np.median(np.asarray(other) / np.asarray(base))), 4),
        "faster": lower,
        "slower": higher,
        "pairs": len(d),
        "sign_p": round(sign_test(lower, higher), 5),
        "diff_p10_p90": [round(float(np.percentile(d, 10)), 4), round(float(np.percentile(d, 90)), 4)],
    }


def spread(xs: list[float]) -> dict[str, Any]:
    """A layout's units over the run: summary, the p10-p90 spread as % of the median (run-to-run noise) and the
    medians of the first and second halves (drift over the run)."""
    s: dict[str, Any] = dict(summary(xs))
    s["spread_pct"] = round(100 * (s["p90"] - s["p10"]) / s["median"], 1) if s["median"] else None
    half = len(xs) // 2
    if half:
        s["halves"] = [round(float(np.median(xs[:half])), 4), round(float(np.median(xs[half:])), 4)]
    return s


@dataclass
class Arm:
    """One layout's model, voice prefix and units measured (in round order)."""

    label: str
    tts: Any
    prefix: Any
    applied: dict[str, str]
    units: dict[str, list[float]]


def applied_layout(tts: Any) -> dict[str, str]:
    """What the loaded talker holds (not what was asked): its first layer's attention and rotation choices and
    whether o_proj adds the residual inside its matmul (addmm), after it (add), or is the checkpoint's module."""
    from assistant.tts.qwen3.talker import LinearAddT, LinearT

    attn = tts.talker.model.layers[0].self_attn
    o = attn.o_proj
    # a quantized or unfused o_proj stays the checkpoint's module: its class names it
    residual = "add" if isinstance(o, LinearAddT) else "addmm" if isinstance(o, LinearT) else type(o).__name__
    return {"attention": attn.attention, "rotation": attn.rotation, "residual": residual}


def load_arm(folder: Path, spec: str, frames: int, taken: list[str]) -> Arm:
    """A fresh model of `folder` in layout `spec`, its voice prefix computed and its talker step compiled at
    every KV buffer length a unit reaches."""
    from assistant.config import TtsConfig
    from assistant.tts.qwen3.engine import Qwen3TTS, ad_hoc_voice
    from assistant.tts.qwen3.prompt import VoicePrompt

    cfg = TtsConfig(model=str(folder), first_chunk_frames=1, chunk_frames=4, seed=0, max_frames=frames + 1)
    with loading_as(spec) as label:
        tts = Qwen3TTS.load(cfg)
    copies = taken.count(label)
    taken.append(label)
    label = f"{label} #{copies + 1}" if copies else label  # the same layout again: an A/A control
    voice = tts.use_voice(ad_hoc_voice("bench", VoicePrompt(language="english", speaker="vivian")))
    prefix = tts._prefix(voice)
    tts.talker.warm_steps(prefix.length + frames + len(TEXT))  # every buffer length the text and frames reach
    return Arm(label, tts, prefix, applied_layout(tts), {m: [] for m in (*MEASURES, "first_chunk_ms")})


def unit(arm: Arm, frames: int) -> dict[str, float]:
    """One streamed utterance of `frames` frames: ms per frame, host ms per frame (in the frame generator's
    graph-building and enqueuing calls) and ms to the first chunk."""
    from assistant.tts.qwen3.engine import Utterance, sampling_of
    from assistant.tts.qwen3.generate import FrameGenerator

    tts = arm.tts
    sampling = replace(sampling_of(tts.cfg), min_new_tokens=frames + 1)  # EOS unreachable: exactly `frames`
    gen = FrameGenerator(tts.talker, tts.builder, arm.prefix, sampling, frames + 1, TEXT, "stream")
    host = [0.0]

    def clocked(fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                host[0] += time.perf_counter() - t0

        return call

    # the instance's own methods, wrapped on this generator only (the model code stays as the daemon runs it)
    gen._forward = clocked(gen._forward)  # type: ignore[method-assign]
    gen._launch = clocked(gen._launch)  # type: ignore[method-assign]
    utt = Utterance(gen, tts.speech_tokenizer.decoder, None, 1, 4)
    first = None
    t0 = time.perf_counter()
    while not utt.done:
        if utt.step() is not None and first is None:
            first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    if utt.frames_emitted != frames:
        raise RuntimeError(f"a unit made {utt.frames_emitted} frames, not {frames}")
    return {
        "ms_per_frame": 1000 * total / frames,
        "host_ms_per_frame": 1000 * host[0] / frames,
        "first_chunk_ms": 1000 * (first if first is not None else total),
    }


def run_ab(
    folder: Path,
    specs: list[str],
    frames: int,
    rounds: int,
    seconds: float,
    warm_rounds: int = 2,
    seed: int = 0,
    started: float | None = None,
) -> dict[str, Any]:
    """Load every layout of `specs`, warm them in `warm_rounds` interleaved rounds, then measure up to `rounds`
    rounds (each layout once, in a seeded random order) until `seconds` since `started` have passed."""
    started = time.perf_counter() if started is None else started
    mx.reset_peak_memory()
    taken: list[str] = []
    arms = [load_arm(folder, s, frames, taken) for s in specs]
    loaded_s = time.perf_counter() - started
    rng = np.random.default_rng(seed)
    for _ in range(warm_rounds):  # compiles what the units run, in the order they will run it
        for i in rng.permutation(len(arms)):
            unit(arms[i], frames)
    warm_s = time.perf_counter() - started - loaded_s
    order: list[list[int]] = []
    while len(order) < rounds and (not order or time.perf_counter() - started < seconds):
        perm = [int(i) for i in rng.permutation(len(arms))]
        for i in perm:
            for k, v in unit(arms[i], frames).items():
                arms[i].units[k].append(round(v, 3))
        order.append(perm)
    base = arms[0]
    out: dict[str, Any] = {
        "frames": frames,
        "rounds": len(order),
        "warm_rounds": warm_rounds,
        "seed": seed,
        "load_s": round(loaded_s, 1),  # from `started`: the checkpoint's writing included
        "warm_s": round(warm_s, 1),
        "measure_s": round(time.perf_counter() - started - loaded_s - warm_s, 1),
        "peak_memory_gb": round(mx.get_peak_memory() / 1e9, 2),
        "order": order,
        "layouts": [],
    }
    for k, arm in enumerate(arms):
        entry: dict[str, Any] = {"label": arm.label, "spec": specs[k], "applied": arm.applied, "units": arm.units}
        entry["summary"] = {m: spread(v) for m, v in arm.units.items()}
        if k:
            entry["vs_first"] = {m: paired(base.units[m], arm.units[m], seed + k) for m in MEASURES}
        out["layouts"].append(entry)
    return out


def main(argv: list[str] | None = None) -> int:
    t_start, started = time.perf_counter(), time.strftime("%H:%M:%S UTC", time.gmtime())
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_tts_args(ap)
    ap.add_argument("--layouts", nargs="+", default=["fused", "no-addmm"], help="the first is the baseline")
    ap.add_argument("--frames", type=int, default=48, help="frames per unit (one streamed utterance)")
    ap.add_argument("--rounds", type=int, default=400, help="at most this many measured rounds")
    ap.add_argument("--seconds", type=float, default=200.0, help="stop after the round that passes this (from start)")
    ap.add_argument("--warm-rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="of the round order and the bootstrap")
    ap.add_argument("--decoder-dim", type=int, default=1536)
    ap.add_argument("--tiny-widths", action="store_true", help="narrow widths (CPU runs and tests)")
    args = ap.parse_args(argv)
    if args.unfused or args.fuse:
        ap.error("--unfused/--fuse name one layout; give every layout to --layouts instead")
    if len(args.layouts) < 2 or args.frames < 1 or args.rounds < 1:
        ap.error("--layouts needs at least two layouts (the first is the baseline), --frames and --rounds >= 1")
    from benchmarks.checkpoints import layout_fuse

    for spec in args.layouts:
        try:
            layout_fuse(spec)
        except ValueError as e:
            ap.error(str(e))
    kind = tts_precision(args)
    widths = "tiny" if args.tiny_widths else f"D{args.decoder_dim}"
    folder = Path(args.cache) / f"{args.size}-{kind}-L{args.layers[0]}x{args.layers[1]}-{widths}"
    bits, (talker_layers, predictor_layers) = args.bits or None, args.layers
    t_write = time.perf_counter()
    facts = write_checkpoint(
        folder,
        args.size,
        bits,
        talker_layers,
        predictor_layers,
        tiny_widths=args.tiny_widths,
        decoder_dim=args.decoder_dim,
        mode=args.mode,
    )
    row: dict[str, Any] = {"section": "tts_ab", "size": args.size, "precision": kind, "layers": args.layers}
    row.update(widths=widths, device=str(mx.default_device()), weights_bytes=facts.get("weights_bytes"))
    row["checkpoint_s"] = round(time.perf_counter() - t_write, 1)  # written, or reused from --cache
    row["started"] = started
    row["env"] = {k: v for k, v in os.environ.items() if k.startswith("MLX_")}
    a = args
    row.update(run_ab(folder, a.layouts, a.frames, a.rounds, a.seconds, a.warm_rounds, a.seed, t_start))
    print(json.dumps(row), flush=True)
    for entry in row["layouts"]:  # a readable digest on stderr
        s, vs = entry["summary"]["ms_per_frame"], entry.get("vs_first", {}).get("ms_per_frame")
        print(
            f"{entry['label']}: {s['median']} ms/frame, host {entry['summary']['host_ms_per_frame']['median']}"
            + (f"; vs first {vs['median_diff']} {vs['ci95']} faster {vs['faster']}/{vs['pairs']}" if vs else ""),
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
