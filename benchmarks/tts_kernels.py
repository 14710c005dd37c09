"""What one kernel of each kind costs on this backend, at the shapes of a 0.6B TTS frame (random values).

    PYTHONPATH=. python -m benchmarks.tts_kernels [--n 300] [--reps 5] [--positions 256]

A frame is ~1,300 kernels whose host cost bounds it on a GPU (benchmarks/tts_ops.py counts them), so which kind
of kernel costs what decides between layouts of equal count: MLX's own gemv against a cuBLAS matmul or addmm,
a plain elementwise kernel against the fused q/k norm-RoPE chain (9 inputs, one a reversed view), mx.fast's
norm, RoPE and attention, the K/V writes (scatter, slice_update, concatenation), and views (no kernel, but
host work in the replay and the evaluation of a graph: a frame has ~2,000). Each kind is a chain of `--n`
dependent primitives of that kind only, built lazily and then evaluated at once, timed `--reps` times after a
warm-up: us per primitive = evaluation time / n (device time included; for these small shapes the host's issue
cost dominates). A compiled kind is one call of a compiled function per link. Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import mlx.core as mx
import numpy as np

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTER = 1024, 16, 8, 128, 3072  # the 0.6B talker and predictor


def per_link_us(link: Callable[[mx.array], mx.array], x0: mx.array, n: int, reps: int) -> dict[str, float]:
    """Median evaluation time per link of a chain x -> link(x) of length n (and the Python time to build it)."""
    build, run = [], []
    for i in range(reps + 1):
        t0 = time.perf_counter()
        x = x0
        for _ in range(n):
            x = link(x)
        t1 = time.perf_counter()
        mx.eval(x)
        t2 = time.perf_counter()
        if i:  # the first chain warms up (kernel JIT, allocations)
            build.append(t1 - t0)
            run.append(t2 - t1)
    return {
        "eval_us": round(1e6 * float(np.median(run)) / n, 2),
        "build_us": round(1e6 * float(np.median(build)) / n, 2),
    }


def kinds(dtype: mx.Dtype, positions: int) -> dict[str, tuple[Callable[[mx.array], mx.array], mx.array]]:
    """Each kind: (link, first input), the link keeping its input's shape so links chain."""
    key = iter(mx.random.split(mx.random.key(0), 16))

    def rnd(*shape: int, scale: float = 0.02) -> mx.array:
        return (mx.random.normal(shape, key=next(key)) * scale).astype(dtype)

    h, kv, d = HEADS, KV_HEADS, HEAD_DIM
    x = rnd(1, 1, HIDDEN, scale=1.0)
    w_t = rnd(HIDDEN, HIDDEN).T  # [in, out] view of [out, in], as LinearT holds it: b transposed
    q = rnd(1, h, 1, d, scale=1.0)
    keys, values = rnd(1, kv, positions, d, scale=1.0), rnd(1, kv, positions, d, scale=1.0)
    rows = rnd(1, kv, h // kv, d, scale=1.0)
    square = rnd(1, kv, d, d)
    norm_w = rnd(d, scale=1.0) + 1
    pos = mx.array(positions // 2, dtype=mx.int32)
    buffer = rnd(1, 2 * kv, positions, d)
    new = rnd(1, 2 * kv, 1, d)
    perm = mx.array(np.random.default_rng(0).permutation(2048).astype(np.uint32))
    logits = rnd(2048, scale=1.0)

    # the fused layout's q/k norm-RoPE chain (talker.Attention.project): 9 inputs, a reversed view, 5-D broadcasts
    wq = rnd(h + 2 * kv, 1, 2, d // 2, scale=1.0)
    wr = rnd(h + 2 * kv, 1, 2, d // 2, scale=1.0)
    cos, sin = mx.cos(mx.arange(d // 2) * 0.1)[None, None], mx.sin(mx.arange(d // 2) * 0.1)[None, None]
    hs = mx.where(mx.arange(h + 2 * kv) < h, d**-0.5, 1.0).reshape(-1, 1, 1, 1)
    is_v = (mx.arange(h + 2 * kv) >= h + kv).reshape(-1, 1, 1, 1)

    def chain(t: mx.array) -> mx.array:
        n5 = t.reshape(1, h + 2 * kv, 1, 2, d // 2)
        rot = (n5 * wq * cos + n5[..., ::-1, :] * wr * sin) * hs
        return mx.where(is_v, n5, rot).astype(t.dtype).reshape(t.shape)

    simple = mx.compile(lambda t: t * 1.0001 + 0.0001)
    qkv = rnd(1, h + 2 * kv, 1, d, scale=1.0)
    mx.eval(x, w_t, q, keys, values, rows, square, norm_w, buffer, new, perm, logits, wq, wr, cos, sin, hs, is_v, qkv)
    return {
        "gemv (x @ w.T, one row)": (lambda t: t @ w_t, x),
        "addmm (cuBLAS, residual epilogue)": (lambda t: mx.addmm(t, t, w_t), x),
        "matmul 2 rows (cuBLAS)": (lambda t: t @ square, rows),
        "matmul 1 row, b row-major (cuBLAS)": (lambda t: t @ square, rows[:, :, :1]),
        "gemv per head, keys broadcast over the group (attention=gemv)": (
            lambda t: t @ square[:, :, None].swapaxes(-1, -2),
            rows.reshape(1, kv, h // kv, 1, d),
        ),
        "view (reshape, no kernel)": (lambda t: t.reshape(t.shape[::-1]), x),
        "view (transpose, no kernel)": (lambda t: t.swapaxes(0, 2), x),
        "elementwise (eager multiply)": (lambda t: t * 1.0001, x),
        "compiled elementwise (2 inputs)": (simple, x),
        "compiled q/k norm-RoPE chain (9 inputs)": (mx.compile(chain), qkv),
        "rms_norm": (lambda t: mx.fast.rms_norm(t, norm_w, 1e-6), q),
        "rope (array offset)": (lambda t: mx.fast.rope(t, d, traditional=False, base=1e6, scale=1.0, offset=pos), q),
        "sdpa vector (no mask)": (lambda t: mx.fast.scaled_dot_product_attention(t, keys, values, scale=1.0), q),
        "softmax": (lambda t: mx.softmax(t, axis=-1, precise=True), q),
        "scatter K/V at pos (put_along_axis)": (
            lambda b: mx.put_along_axis(b, mx.broadcast_to(pos.reshape(1, 1, 1, 1), new.shape), new, axis=2),
            buffer,
        ),
        "slice_update K/V at pos (array index)": (lambda b: mx.slice_update(b, new, pos.reshape(1), axes=(2,)), buffer),
        "concatenate 2 (K/V growth)": (lambda b: mx.concatenate([b[:, :, 1:], new], axis=2), buffer),
        "gather (one row of a table)": (lambda i: perm[i], mx.array([3], dtype=mx.uint32)),
        "argmax + add (2048)": (lambda t: t + mx.argmax(t).astype(t.dtype), logits),
        "partition 2048 (top-k)": (lambda t: mx.partition(t, 2000, axis=-1), logits),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="primitives per chain")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--positions", type=int, default=256, help="K/V buffer length")
    args = ap.parse_args(argv)
    row: dict[str, Any] = {"section": "tts_kernels", "device": str(mx.default_device()), "n": args.n}
    row["started"] = time.strftime("%H:%M:%S UTC", time.gmtime())
    row["us_per_primitive"] = {
        name: per_link_us(link, x0, args.n, args.reps)
        for name, (link, x0) in kinds(mx.bfloat16, args.positions).items()
    }
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
