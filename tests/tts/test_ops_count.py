"""benchmarks/tts_ops.py's GPU-faithful kernel count: mx.fast ops as one primitive, MLX CUDA's kernels per primitive."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import mlx.core as mx
import pytest

from benchmarks.tts_ops import cuda_sdpa_fused, gpu_primitives, gpu_summary, graph


def test_fast_ops_count_as_one_kernel_and_elementwise_chains_fuse_around_them() -> None:
    """Under gpu_primitives a compiled norm -> scale -> RoPE -> attention -> residual graph counts one kernel per
    fast op and one per fused elementwise chain, as a GPU runs it (the CPU records the fallbacks' many ops)."""
    q = mx.random.normal((1, 4, 1, 64), key=mx.random.key(0))
    k = mx.random.normal((1, 2, 9, 64), key=mx.random.key(1))
    w = mx.ones((64,))
    mx.eval(q, k, w)

    def f(q: mx.array, k: mx.array) -> mx.array:
        x = mx.fast.rms_norm(q, w, 1e-6) * 2.0 + 1.0
        x = mx.fast.rope(x, 64, traditional=False, base=1e4, scale=1.0, offset=3)
        return mx.fast.scaled_dot_product_attention(x, k, k, scale=0.1) * 3.0 + q

    with gpu_primitives():
        counted = gpu_summary(graph(mx.compile(f)(q, k)))
    names = Counter({name: n for name, n in counted["by_primitive"].items() if not name.startswith("Compiled")})
    assert names == Counter({"RMSNorm": 1, "RoPE": 1, "ScaledDotProductAttention": 1})
    assert counted["kernels"] == 5  # and two fused chains: the scale and shift, the output's scale and residual
    cpu = graph(mx.compile(f)(q, k))
    assert sum(1 for name, _ in cpu if name not in ("Reshape", "Broadcast")) > counted["kernels"]


def test_kernels_per_primitive_follow_mlx_cuda() -> None:
    """A concatenation is one copy per input, a slice_update at an array index two, a scatter one; an attention
    under an array mask has no fused CUDA kernel, one under no mask (one query, head size 64) has."""
    buf, new = mx.zeros((1, 2, 8, 4)), mx.ones((1, 2, 1, 4))
    pos = mx.array(3, dtype=mx.int32)
    mx.eval(buf, new, pos)
    three = mx.concatenate([buf, new, new], axis=2)
    dynamic = mx.slice_update(buf, new, pos.reshape(1), axes=(2,))
    scatter = mx.put_along_axis(buf, mx.broadcast_to(pos.reshape(1, 1, 1, 1), new.shape), new, axis=2)
    assert [gpu_summary(graph(a))["kernels"] for a in (three, dynamic, scatter)] == [3, 2, 1]
    q, keys = mx.zeros((1, 4, 1, 64)), mx.zeros((1, 2, 8, 64))
    assert cuda_sdpa_fused(q, keys, keys, None) and cuda_sdpa_fused(q, keys, keys, "causal")
    assert not cuda_sdpa_fused(q, keys, keys, mx.ones((8,), dtype=mx.bool_))
    assert not cuda_sdpa_fused(mx.zeros((1, 4, 1, 8)), mx.zeros((1, 2, 8, 8)), mx.zeros((1, 2, 8, 8)), None)


def test_frame_kernels_follow_the_per_layer_accounting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernels of one frame, counted as MLX CUDA launches them (session 9), at two layer counts: a talker
    step is 14 per layer (input norm, q/k/v matmul, q/k/v norm, RoPE chain, K/V scatter, masked attention as
    matmul, mask, softmax, matmul, o_proj addmm, post norm, gate/up matmul, SwiGLU, down addmm) plus its final
    norm, mask and RoPE row (3). The frame kernel is 10 per predictor layer-step (input norm, q/k/v matmul,
    q/k/v norm, the RoPE chain that also writes the rows into the frame buffer, fused attention, o_proj addmm,
    post norm, gate/up matmul, SwiGLU, down addmm), 15 steps (the prefill's two rows one step), less the 14
    layer-0 norms the group tables hold precomputed, plus 101 outside the layers
    (codec_head, 15 lm_heads and 15 final norms 31; per code partition, warp chain, argmax and gather 64 and
    the penalty chain 1; the prefill rows' select 1, the codes' two select chains 2, E(frame) + text's two add
    chains 2). The Gumbel noise adds 3 kernels per 16 frames, the codec 69.2 per frame (its 4-frame step 277)."""
    from benchmarks.checkpoints import BPE_ENV, write_checkpoint
    from benchmarks.tts_ops import count
    from tools.qwen3_tts_ref import tiny

    monkeypatch.setenv(BPE_ENV, str(tiny.BPE_DIR))
    for talker_layers, predictor_layers in ((2, 1), (3, 2)):
        folder = tmp_path / f"L{talker_layers}x{predictor_layers}"
        write_checkpoint(folder, "0.6B", None, talker_layers, predictor_layers, tiny_widths=True)
        gpu = count(folder)["gpu"]
        assert gpu["talker_step"]["kernels"] == 14 * talker_layers + 3
        assert gpu["frame_kernel"]["kernels"] == 10 * predictor_layers * 15 - 14 + 101
        assert gpu["noise_block"]["kernels"] == 3
        assert gpu["codec_step@4"]["kernels"] == 277
