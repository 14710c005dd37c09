"""Streaming speed of the real-size Qwen3-TTS 12 Hz codec decoder (random weights), not a test.

    PYTHONPATH=. python -m benchmarks.codec [--frames 24] [--chunks 1 4] [--dtype float32]

Builds the decoder with the released speech_tokenizer/config.json values (spec §1.4), streams random codes through
`CodecDecoder.step` in chunks of n frames and prints JSON: milliseconds of compute per frame (80 ms of audio), the
real-time factor (compute time / audio time), the first-chunk latency and peak memory.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_map

from assistant.tts.qwen3.codec import CodecDecoder, DecoderConfig
from benchmarks.checkpoints import DECODER as REAL_DECODER  # the released decoder_config (spec §1.4)

FRAME_S = 0.08  # 1920 samples at 24 kHz


def build(dtype: mx.Dtype) -> CodecDecoder:
    dec = CodecDecoder(DecoderConfig.from_dict(REAL_DECODER))
    # random codebooks and small random Snake/scale parameters instead of the zero/one initial values
    dec.update(tree_map(lambda p: (0.05 * mx.random.normal(p.shape)).astype(dtype), dec.parameters()))
    mx.eval(dec.parameters())
    return dec


def stream(dec: CodecDecoder, codes: mx.array, chunk: int) -> tuple[float, float]:
    """Seconds for the first chunk and for all chunks, streaming `codes` [T, 16] in chunks of `chunk` frames."""
    state = dec.new_state()
    start = time.perf_counter()
    first = 0.0
    for t in range(0, codes.shape[0], chunk):
        mx.eval(dec.step(codes[t : t + chunk], state))
        if t == 0:
            first = time.perf_counter() - start
    return first, time.perf_counter() - start


def matmul_gflops() -> float:
    """A 1024^3 float32 matmul rate: the yardstick that makes numbers from a shared machine comparable."""
    a = mx.random.normal((1024, 1024))
    mx.eval(a @ a)
    start = time.perf_counter()
    for _ in range(3):
        mx.eval(a @ a)
    return round(3 * 2 * 1024**3 / (time.perf_counter() - start) / 1e9, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=24, help="frames streamed per measurement (80 ms each)")
    ap.add_argument("--chunks", type=int, nargs="+", default=[1, 4], help="frames per step")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    args = ap.parse_args()

    mx.random.seed(0)
    dtype = getattr(mx, args.dtype)
    dec = build(dtype)
    rng = np.random.default_rng(0)
    codes = mx.array(rng.integers(0, 2048, (args.frames, 16)).astype(np.int32))
    stream(dec, codes[: max(args.chunks) * 2], max(args.chunks))  # warm-up
    mx.reset_peak_memory()
    results = []
    for chunk in args.chunks:
        first, total = stream(dec, codes, chunk)
        results.append(
            {
                "chunk_frames": chunk,
                "frames": args.frames,
                "ms_per_frame": round(1000 * total / args.frames, 2),
                "first_chunk_ms": round(1000 * first, 2),
                "rtf": round(total / (args.frames * FRAME_S), 3),
            }
        )
    out = {
        "benchmark": "qwen3_tts_12hz_codec_decoder_stream",
        "device": str(mx.default_device()),
        "machine": platform.machine(),
        "dtype": args.dtype,
        "parameters_m": round(sum(v.size for _, v in tree_flatten(dec.parameters())) / 1e6, 2),
        "peak_memory_mb": round(mx.get_peak_memory() / 2**20, 1),
        "matmul_gflops": matmul_gflops(),
        "results": results,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
