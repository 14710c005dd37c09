"""Qwen3-TTS side by side: ours (`Qwen3TTS.load`) vs mlx-audio 0.6.2 (`load_model`) on the same random checkpoint.

    PYTHONPATH=. python -m benchmarks.tts_vs --size 0.6B --bits 4 --frames 100 400 --reps 3 [--layers 28 5]

Batch 1, CustomVoice speaker "vivian", English, streaming in both, a forced number of frames with EOS unreachable
(ours: `min_new_tokens`; mlx-audio: `codec_eos_token_id` moved past the vocabulary so its special-token suppression
covers the real EOS). mlx-audio streams with its smallest interval (1 frame = 0.08 s); ours with
first_chunk_frames=1, chunk_frames=4 (the daemon's defaults). One untimed warm-up run per implementation (of the
first frame count) before timing.
Prints one JSON object per line: first-chunk latency, RTF (compute / audio time), ms per frame, and ours against
the weight-bandwidth limit (bytes of talker+predictor weights read per frame / time per frame).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

FRAME_S = 0.08
SAMPLES: dict[str, int] = {}  # samples of the last run per implementation
TEXT = (
    "The weather today is sunny with a light breeze, perfect for a long walk in the park, and later we might "
    "cook dinner together while the radio plays old songs from the summer we met."
)
ASSUMED_BW = {"gpu": 4.8e12, "cpu": 50e9}  # H200 HBM3e 4.8 TB/s; a desktop CPU's DRAM, order of magnitude


def measured_bandwidth(nbytes: int = 2**30) -> float:
    """Bytes per second of a reduction over a `nbytes` array: what reading weights can reach here (best of 5)."""
    a = mx.ones((nbytes // 2,), dtype=mx.bfloat16)
    mx.eval(a, a.sum())
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        mx.eval(a.sum())
        best = min(best, time.perf_counter() - t0)
    del a
    return nbytes / best


def summary(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs, dtype=np.float64)
    return {
        "median": round(float(np.median(a)), 4),
        "p10": round(float(np.percentile(a, 10)), 4),
        "p90": round(float(np.percentile(a, 90)), 4),
        "min": round(float(a.min()), 4),
        "max": round(float(a.max()), 4),
        "n": len(xs),
    }


def timed(chunks: Iterator[Any], frames: int) -> dict[str, float]:
    """First-chunk latency and total time of one streamed utterance (every chunk evaluated before the clock)."""
    t0 = time.perf_counter()
    first = None
    for c in chunks:
        mx.eval(c) if isinstance(c, mx.array) else None
        if first is None:
            first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return {"first_chunk_s": first or total, "total_s": total, "rtf": total / (frames * FRAME_S)}


def ours(folder: Path, max_frames: int) -> tuple[Callable[[int], Iterator[Any]], int]:
    from assistant.config import TtsConfig
    from assistant.tts.qwen3.engine import Qwen3TTS, Utterance, ad_hoc_voice, sampling_of
    from assistant.tts.qwen3.generate import FrameGenerator
    from assistant.tts.qwen3.prompt import VoicePrompt

    # max_frames: warmup() compiles the talker step for the KV lengths these utterances meet, as the daemon does
    # for its configured maximum (2048 would compile ten lengths, seconds of a device call, for one used here)
    cfg = TtsConfig(model=str(folder), first_chunk_frames=1, chunk_frames=4, seed=0, max_frames=max_frames + 1)
    tts = Qwen3TTS.load(cfg)
    voice = tts.use_voice(ad_hoc_voice("bench", VoicePrompt(language="english", speaker="vivian")))

    def run(frames: int) -> Iterator[Any]:
        sampling = replace(sampling_of(cfg), min_new_tokens=frames + 1)  # EOS blocked: exactly `frames` frames
        gen = FrameGenerator(tts.talker, tts.builder, tts._prefix(voice), sampling, frames + 1, TEXT, "stream")
        utt = Utterance(gen, tts.speech_tokenizer.decoder, None, cfg.first_chunk_frames, cfg.chunk_frames)
        n = 0
        while not utt.done:
            chunk = utt.step()
            if chunk is not None:
                n += chunk.size
                yield chunk
        if n != frames * 1920:
            raise RuntimeError(f"ours produced {n} samples, expected {frames * 1920}")

    from benchmarks.projection import loaded_frame_bytes

    tts.warmup()  # as the daemon does at start-up
    return run, loaded_frame_bytes(tts.talker, tts.speech_tokenizer.decoder)


def theirs(folder: Path) -> Callable[[int], Iterator[Any]]:
    from mlx_audio.tts.utils import load_model

    model = load_model(folder)
    model.config.talker_config.codec_eos_token_id = model.config.talker_config.vocab_size  # never sampled

    def run(frames: int) -> Iterator[Any]:
        mx.random.seed(0)
        n = 0
        for r in model.generate(
            TEXT,
            voice="vivian",
            lang_code="english",
            max_tokens=frames,
            stream=True,
            streaming_interval=FRAME_S,
            verbose=False,
        ):
            n += int(r.samples)
            yield r.audio
        SAMPLES["mlx_audio"] = n  # reported, not enforced: a peer's off-by-a-few must not void its timing

    return run


def measure(run: Callable[[int], Iterator[Any]], frames: int, reps: int, warm: bool) -> dict[str, Any]:
    if warm:  # compile every kernel once; longer runs reuse them (only the KV length grows)
        timed(run(frames), frames)
    rows = [timed(run(frames), frames) for _ in range(reps)]
    return {k: summary([r[k] for r in rows]) for k in ("first_chunk_s", "rtf", "total_s")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["0.6B", "1.7B"], default="0.6B")
    ap.add_argument("--bits", type=int, choices=[0, 4, 8], default=0, help="0 = bf16, 4/8 = quantized")
    ap.add_argument("--mode", choices=["affine", "mxfp4", "mxfp8", "nvfp4"], default="affine", help="with --bits")
    ap.add_argument("--frames", type=int, nargs="+", default=[100, 400])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--layers", type=int, nargs=2, default=[28, 5], help="talker and predictor layers")
    ap.add_argument(
        "--decoder-dim", type=int, default=1536, help="vocoder width (released: 1536; > 1024 for mlx-audio's loader)"
    )
    ap.add_argument("--peer", choices=["yes", "no"], default="yes", help="also run mlx-audio")
    ap.add_argument("--cache", default="", help="folder for checkpoints (default: a temporary one)")
    ap.add_argument("--fuse", default="", metavar="KEY=VALUE,...", help="our model with these FuseOptions (the A/B)")
    ap.add_argument("--unfused", action="store_true", help="our model in the checkpoint's layout (the A/B)")
    args = ap.parse_args(argv)
    from benchmarks.checkpoints import tts_layout

    layout = tts_layout(args)  # before our model loads
    from benchmarks.checkpoints import write_checkpoint

    bits = args.bits or None
    from benchmarks.checkpoints import GROUP_SIZE

    precision = f"{args.mode} {bits}-bit g{GROUP_SIZE[args.mode]}" if bits else "bf16"
    kind = f"{args.mode}-{bits}bit" if bits else "bf16"
    tag = f"{args.size}-{kind}-L{args.layers[0]}x{args.layers[1]}-D{args.decoder_dim}"
    with tempfile.TemporaryDirectory(dir=args.cache or None) as tmp:
        folder = Path(args.cache or tmp) / tag
        facts = write_checkpoint(
            folder, args.size, bits, args.layers[0], args.layers[1], decoder_dim=args.decoder_dim, mode=args.mode
        )
        backend = "gpu" if "gpu" in str(mx.default_device()) else "cpu"
        base = {
            "section": "tts",
            "size": args.size,
            "precision": precision,
            "talker_layers": args.layers[0],
            "predictor_layers": args.layers[1],
            "decoder_dim": args.decoder_dim,
            "checkpoint_bytes": facts["weights_bytes"],
            "checkpoint_write_s": facts.get("write_s"),  # when this folder was written (device-time planning)
            "reps": args.reps,
            "warmup": 1,
            "env": {k: v for k, v in os.environ.items() if k.startswith("MLX_")},  # MLX settings (gpu.sh TTS_ENV)
            "layout": layout,  # ours: "fused" (the loader's default) or the A/B's choice (gpu.sh TTS_FUSE)
        }
        measured_bw = measured_bandwidth()
        t0 = time.perf_counter()
        run, nbytes = ours(folder, max(args.frames))
        base["ours_load_warmup_s"] = round(time.perf_counter() - t0, 1)
        trun, peer_error = None, ""
        if args.peer == "yes":
            t0 = time.perf_counter()
            try:  # both stay loaded: each row is complete (and printed) before the next, a time limit loses little
                trun = theirs(folder)
            except Exception as e:  # the peer failing must not lose our rows
                peer_error = f"{type(e).__name__}: {e}"[:500]
            base["mlx_audio_load_s"] = round(time.perf_counter() - t0, 1)
        for frames in args.frames:
            warm = frames == args.frames[0]
            m = measure(run, frames, args.reps, warm)
            frame_s = m["total_s"]["median"] / frames
            bw = nbytes / frame_s
            row = {
                **base,
                "frames": frames,
                "ours": m,
                "ours_ms_per_frame": round(1000 * frame_s, 2),
                "weights_read_per_frame_bytes": nbytes,
                "ours_effective_bw_gbs": round(bw / 1e9, 4),
                "assumed_bw_gbs": ASSUMED_BW[backend] / 1e9,
                "ours_fraction_of_bw_limit": round(bw / ASSUMED_BW[backend], 6),
                "measured_bw_gbs": round(measured_bw / 1e9, 1),
            }
            print(f"[tts] {tag} ours {frames} frames: {m['rtf']['median']:.3f} RTF", file=sys.stderr, flush=True)
            if trun is not None:
                try:
                    t = measure(trun, frames, args.reps, warm)
                    row["mlx_audio"] = t
                    row["mlx_audio_samples"] = SAMPLES.get("mlx_audio", 0)
                    for k in ("first_chunk_s", "rtf"):
                        row[f"ratio_{k}"] = round(m[k]["median"] / t[k]["median"], 3)
                    print(f"[tts] {tag} mlx-audio {frames}: {t['rtf']['median']:.3f} RTF", file=sys.stderr, flush=True)
                except Exception as e:
                    peer_error = f"{type(e).__name__}: {e}"[:500]
            if peer_error:
                row["mlx_audio_error"] = peer_error
            row["peak_memory_gb"] = round(mx.get_peak_memory() / 2**30, 2)  # both models resident
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
