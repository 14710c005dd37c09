"""Parakeet TDT side by side: ours (`load_transcriber`) vs mlx-audio 0.6.2 (`mlx_audio.stt.utils.load_model`).

    PYTHONPATH=. python -m benchmarks.stt_vs [--small] [--seconds 2 5 10] [--reps 3]

One random checkpoint in the mlx-community layout of mlx-community/parakeet-tdt-0.6b-v3 (NeMo config.json, NeMo
key names in MLX layout; written by tools/stt_ref/tiny.py with the released sizes: d_model 1024, 24 layers,
8 heads, subsampling channels 256, LSTM 640, vocabulary 8192, 128 mels) is read by both. Random weights would emit
a token on nearly every step; a bias in the joint's output layer on the blank and on the longest duration (4)
makes both decoders take the same path: one joint call every 4 frames, as on speech between tokens. Times the
final transcript of an utterance of 2/5/10 s from the end of its audio (ours: feed() then finalize(), the
daemon's offline final pass; mlx-audio: generate() on the array), after one warm-up per length.
Ours is fed in 100 ms blocks before the clock starts (in the daemon feed() runs while the user speaks) and warmed
up once with `warmup()` as the daemon does at start-up; the clock covers finalize(): mel, encoder, decoder.
Then the tail: 20 utterances of different lengths (seeded, 1.5-12 s), each timed once after the warm-ups above,
median and p90 per implementation (a length never seen before compiles kernels unless it maps to a warmed shape).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from benchmarks.tts_vs import summary

REAL = {"FEATURES": 128, "D_MODEL": 1024, "HEADS": 8, "LAYERS": 24, "CHANNELS": 256, "PRED": 640, "KERNEL": 9}
SMALL = {"FEATURES": 128, "D_MODEL": 256, "HEADS": 4, "LAYERS": 4, "CHANNELS": 64, "PRED": 320, "KERNEL": 9}
VOCAB_SIZE = 8192


def write(folder: Path, sizes: dict[str, int], bf16: bool) -> Path:
    """The checkpoint (reused when its config matches); tiny.py's module constants set the sizes."""
    from safetensors.numpy import save_file

    from tools.stt_ref import tiny

    for k, v in sizes.items():
        setattr(tiny, k, v)
    tiny.VOCAB = ["<unk>", *(f"▁w{i}" for i in range(VOCAB_SIZE - 1))]
    cfg = tiny.config("parakeet")
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / ".complete"
    if done.is_file() and json.loads((folder / "config.json").read_text(encoding="utf-8")) == cfg:
        return folder
    w = tiny.weights("parakeet", 0)
    bias = w["joint.joint_net.2.bias"]
    bias[VOCAB_SIZE] += 1000.0  # blank
    bias[-1] += 1000.0  # duration 4
    (folder / "config.json").write_text(json.dumps(cfg, ensure_ascii=False, indent=1), encoding="utf-8")
    if bf16:  # as mlx-community stores it
        mx.save_safetensors(
            str(folder / "model.safetensors"), {k: mx.array(v).astype(mx.bfloat16) for k, v in w.items()}
        )
    else:
        save_file(w, str(folder / "model.safetensors"))
    done.write_text("ok")
    return folder


def audio(seconds: float) -> np.ndarray:
    """A speech-like signal (the length is what matters): a gliding harmonic tone with a syllable envelope."""
    t = np.arange(int(seconds * 16000)) / 16000
    f0 = 140 + 20 * np.sin(2 * np.pi * 0.5 * t)
    x = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / 16000) / k for k in range(1, 12))
    return (0.2 * x / np.abs(x).max() * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


def ours(folder: Path) -> Any:
    from assistant.config import SttConfig
    from assistant.stt import load_transcriber

    tr = load_transcriber(SttConfig(model=str(folder), partial_interval_ms=0))
    tr.warmup()

    def run(x: np.ndarray) -> tuple[float, str]:
        for i in range(0, len(x), 1600):
            tr.feed(x[i : i + 1600])
        t0 = time.perf_counter()
        text = tr.finalize().text
        mx.synchronize()
        return time.perf_counter() - t0, text

    return run


def theirs(folder: Path, dtype: mx.Dtype) -> Any:
    from mlx_audio.stt.utils import load_model

    model = load_model(str(folder))

    def run(x: np.ndarray) -> tuple[float, str]:
        t0 = time.perf_counter()
        text = str(model.generate(mx.array(x), dtype=dtype).text)
        mx.synchronize()
        return time.perf_counter() - t0, text

    return run


def measure(run: Any, x: np.ndarray, reps: int) -> dict[str, Any]:
    _, text = run(x)  # warm-up: this length's kernels
    times = [run(x)[0] for _ in range(reps)]
    return {"final_s": summary(times), "rtf": summary([t / (len(x) / 16000) for t in times]), "text": text[:80]}


def tail(run: Any, lengths: list[float]) -> dict[str, Any]:
    """Final-pass times over utterances of new lengths, each once: median, p90 and their ratio; then the same
    lengths again. A first pass no slower than the second compiled nothing new: the spread is then compute that
    grows with the length (the encoder's bucket), which the Spearman rank correlation with the length shows."""
    times = [run(audio(s))[0] for s in lengths]
    again = [run(audio(s))[0] for s in lengths]
    s = summary(times)
    first_over_second = [a / b for a, b in zip(times, again, strict=True)]
    rank = np.argsort(np.argsort(lengths)), np.argsort(np.argsort(times))
    return {
        "final_s": s,
        "p90_over_median": round(s["p90"] / s["median"], 2),
        "times_s": [round(t, 4) for t in times],
        "second_pass_s": summary(again),
        "max_first_over_second": round(max(first_over_second), 2),
        "spearman_length_time": round(float(np.corrcoef(*rank)[0, 1]), 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="d_model 256, 4 layers (CPU)")
    ap.add_argument("--seconds", type=float, nargs="+", default=[2.0, 5.0, 10.0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tail", type=int, default=20, help="utterances of new lengths for the p90 (0 = none)")
    ap.add_argument("--cache", default="/tmp/bench-checkpoints")
    args = ap.parse_args(argv)
    sizes = SMALL if args.small else REAL
    folder = write(Path(args.cache) / f"parakeet-{'small' if args.small else 'real'}", sizes, not args.small)
    run = ours(folder)
    dtype = mx.float32 if args.small else mx.bfloat16
    trun, peer_error = None, ""
    try:
        trun = theirs(folder, dtype)
    except Exception as e:  # the peer failing must not lose our rows
        peer_error = f"{type(e).__name__}: {e}"[:500]
    for s in args.seconds:
        x = audio(s)
        row: dict[str, Any] = {
            "section": "stt",
            "engine": "parakeet-tdt",
            "size": "small" if args.small else "real (0.6B)",
            "audio_s": s,
            "reps": args.reps,
            "warmup": 1,
            "ours": measure(run, x, args.reps),
        }
        if trun is not None:
            try:
                row["mlx_audio"] = measure(trun, x, args.reps)
                row["same_text"] = row["mlx_audio"]["text"] == row["ours"]["text"]
                row["ratio_final_s"] = round(
                    row["ours"]["final_s"]["median"] / row["mlx_audio"]["final_s"]["median"], 3
                )
            except Exception as e:
                peer_error = f"{type(e).__name__}: {e}"[:500]
        if peer_error:
            row["mlx_audio_error"] = peer_error
        print(f"[stt] {s:.0f} s: {row.get('ratio_final_s')}", file=sys.stderr, flush=True)
        print(json.dumps(row), flush=True)
    lengths = [round(float(v), 2) for v in np.random.default_rng(0).uniform(1.5, 12.0, args.tail)]
    if args.tail:
        row = {
            "section": "stt",
            "engine": "parakeet-tdt",
            "kind": "tail",
            "lengths_s": lengths,
            "ours": tail(run, lengths),
        }
        if trun is not None:
            try:
                row["mlx_audio"] = tail(trun, lengths)
            except Exception as e:
                row["mlx_audio_error"] = f"{type(e).__name__}: {e}"[:500]
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
