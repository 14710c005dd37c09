"""Operations per TTS frame: the kernels a GPU launches for the compiled talker step and the frame kernel.

    PYTHONPATH=. python -m benchmarks.tts_ops [--size 0.6B] [--bits 4 --mode affine] [--layers 28 5]
        [--unfused | --fuse attention=gemv,residual=add]

On a GPU whose frame is bound by the host issuing kernels (~10 us of host time each on an H100 with MLX CUDA),
fewer kernels per frame is the lever. This counts them here, on the CPU, from the graph of one compiled call
(`mx.export_to_dot`), two ways:

- `gpu` (the figure to compare; the row's `gpu` key): the graph traced with mx.fast's RMS norm, layer norm, RoPE
  and attention standing in as one primitive each (`gpu_primitives`), as a GPU records them, so MLX's compile fuses
  the elementwise ops around them as it does there; the attention stays decomposed where MLX CUDA has no fused
  kernel for it (an array mask, or a head size / query length its kernels do not take: `cuda_sdpa_fused`). Each
  primitive then counts the kernels MLX CUDA (0.32) launches for it (`gpu_kernels`): views (reshape, slice,
  transpose, broadcast, split, ...) none, a compiled elementwise chain one, a matmul / addmm / gather / norm /
  RoPE / attention / softmax / argmax / scatter / slice_update one, a concatenation one copy per input, a
  slice_update at array-valued indices two (the offset, then the copy), a pad two (fill, copy). Not seen here, so
  not counted: a copy MLX makes where a kernel needs a contiguous input, the whole-buffer copy of an update whose
  buffer cannot be donated, and which matmuls run as MLX's own gemv kernel (one row against a transposed weight)
  or through cuBLAS (an addmm, more than one row), whose host cost per call is larger.
  `frame_total` adds the Gumbel noise drawn once per NOISE_FRAMES frames outside the frame kernel (`noise_block`,
  its kernels per frame).
- `talker_step`, `frame_kernel`, `frame_total_ops` (the earlier rows' figures): the primitives as recorded on the
  CPU, where norm, RoPE and attention show as their fallback ops.

Narrow widths (hidden 256) by default: the counts depend on the layer counts, not the widths.
Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import io
import json
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlx.core as mx

from assistant.tts.qwen3.sampling import NOISE_FRAMES
from benchmarks.checkpoints import add_tts_args, tts_layout, tts_precision

VIEWS = {"Reshape", "Slice", "Transpose", "Broadcast", "ExpandDims", "Squeeze", "Flatten", "Unflatten", "Split"}
# the stand-ins of `gpu_primitives`: rarely used scans, renamed in the counts
STAND_INS = {"CumMax": "RMSNorm", "CumMin": "RoPE", "CumProd": "ScaledDotProductAttention"}
STAND_INS["CumLogAddExp"] = "LayerNorm"


def cuda_sdpa_fused(q: mx.array, k: mx.array, v: mx.array, mask: Any) -> bool:
    """Whether MLX CUDA (0.32) runs mx.fast.scaled_dot_product_attention as one kernel: no array mask, and its
    vector kernel (fewer than 4 queries, head size 64/96/128) or cuDNN's (half types, head size <= 128)."""
    if isinstance(mask, mx.array):
        return False
    d, n = q.shape[-1], q.shape[2]
    if d == v.shape[-1] and d in (64, 96, 128) and n < 4:
        return True
    return q.dtype in (mx.float16, mx.bfloat16) and d % 8 == 0 and d <= 128 and n > 1


@contextmanager
def gpu_primitives() -> Iterator[None]:
    """While inside, mx.fast's RMS norm, layer norm, RoPE and fused attention trace as one stand-in primitive each
    (a scan of the same shape; `mx.depends` keeps the attention's keys, values and mask in the graph): the graph a
    GPU records, with garbage values (count it, never use it). Attention CUDA cannot fuse traces as MLX's
    fallback."""
    fast = mx.fast
    saved = fast.rms_norm, fast.rope, fast.scaled_dot_product_attention, fast.layer_norm

    def rms_norm(x: mx.array, *_: Any, **__: Any) -> mx.array:
        return mx.cummax(x, axis=-1)

    def rope(x: mx.array, *_: Any, **__: Any) -> mx.array:
        return mx.cummin(x, axis=-1)

    def sdpa(q: mx.array, k: mx.array, v: mx.array, **kw: Any) -> mx.array:
        mask = kw.get("mask")
        if not cuda_sdpa_fused(q, k, v, mask):
            return saved[2](q, k, v, **kw)
        deps = [k, v] + ([mask] if isinstance(mask, mx.array) else [])
        return mx.cumprod(mx.depends(q, deps), axis=-1)

    def layer_norm(x: mx.array, *_: Any, **__: Any) -> mx.array:
        return mx.logcumsumexp(x, axis=-1)

    fast.rms_norm, fast.rope, fast.scaled_dot_product_attention, fast.layer_norm = rms_norm, rope, sdpa, layer_norm
    try:
        yield
    finally:
        fast.rms_norm, fast.rope, fast.scaled_dot_product_attention, fast.layer_norm = saved


def graph(*outputs: Any) -> list[tuple[str, int]]:
    """(primitive name, number of inputs) of every primitive in the lazy graph behind `outputs` (their inputs
    already evaluated)."""
    buf = io.StringIO()
    mx.export_to_dot(buf, *outputs)
    dot = buf.getvalue()
    nodes = dict(re.findall(r'\{ (\d+) \[label ="([^"]+)"', dot))
    inputs = Counter(re.findall(r'^"[^"]+" -> (\d+)$', dot, re.M))
    return [(name, inputs[node]) for node, name in nodes.items()]


def primitives(*outputs: Any) -> Counter[str]:
    """Primitive names in the lazy graph behind `outputs` (their inputs already evaluated)."""
    return Counter(name for name, _ in graph(*outputs))


def gpu_kernels(name: str, n_inputs: int) -> int:
    """Kernels MLX CUDA launches for one primitive (see the module doc)."""
    if name in VIEWS or name == "Depends":
        return 0
    if name == "Concatenate":
        return n_inputs
    if name in ("DynamicSliceUpdate", "DynamicSlice", "Pad"):  # offset then copy; fill then copy
        return 2
    return 1


def summary(c: Counter[str]) -> dict[str, Any]:
    ops = sum(n for k, n in c.items() if k not in VIEWS)
    return {"ops": ops, "views": sum(c.values()) - ops, "by_primitive": dict(c.most_common())}


def gpu_summary(prims: list[tuple[str, int]]) -> dict[str, Any]:
    """Kernels by primitive, and the primitives that launch none (views: host work in the graph's replay and
    evaluation all the same)."""
    by: Counter[str] = Counter()
    views: Counter[str] = Counter()
    for name, n in prims:
        k = gpu_kernels(name, n)
        if k:
            by[STAND_INS.get(name, name)] += k
        else:
            views[name] += 1
    return {
        "kernels": sum(by.values()),
        "by_primitive": dict(by.most_common()),
        "views": sum(views.values()),
        "views_by_primitive": dict(views.most_common()),
    }


def frame_graphs(talker: Any, kernel_of: Any, cache: list[Any], x: mx.array) -> tuple[Any, Any, Any]:
    """The lazy outputs of one talker step (traced and compiled afresh) and of the frame kernel after it."""
    from assistant.tts.qwen3.talker import CompiledCache

    talker.compiled = CompiledCache()  # a fresh trace (under gpu_primitives: with the stand-ins)
    seen = mx.zeros((talker.cfg.vocab_size,), dtype=mx.bool_)
    blocked = mx.array(False)
    mx.eval(seen, blocked)
    offset = cache[0].offset
    h = talker.step(x, cache)
    for c in cache:
        c.offset = offset  # the next trace writes the same position
    h_in = mx.zeros_like(h)
    mx.eval(h_in)
    kernel = kernel_of()
    noise = kernel.noise(mx.random.key(0))[0][:1] if kernel.samples else None  # a block's frame, as the loop's
    mx.eval(noise)
    last = mx.zeros((talker.cfg.num_code_groups,), dtype=mx.int32)  # the previous frame's codes, as the loop's
    mx.eval(last)
    return h, kernel.fn(h_in, seen, last, blocked, noise, x), kernel  # x: the text row, as the loop passes one


def codec_kernels(frames: int) -> dict[str, Any]:
    """GPU kernels of one streaming codec step over `frames` frames: the released decoder's layer counts (8
    transformer layers, window 72, head size 64) at narrow widths (hidden 128, decoder 96), randomly initialised."""
    from assistant.tts.qwen3.codec import CodecDecoder, DecoderConfig
    from benchmarks.checkpoints import DECODER

    cfg = {**DECODER, "codebook_dim": 64, "latent_dim": 128, "decoder_dim": 96, "hidden_size": 128}
    cfg.update(intermediate_size=256, num_attention_heads=2, num_key_value_heads=2, head_dim=64)
    cfg["vector_quantization_hidden_dimension"] = 64
    dec = CodecDecoder(DecoderConfig.from_dict(cfg))
    dec.fuse()
    mx.eval(dec.parameters())
    state = dec.new_state()
    mx.eval(state.tails, state.kv)
    codes = mx.zeros((frames, dec.config.num_quantizers), dtype=mx.int32)
    with gpu_primitives():
        audio = dec.step(codes, state)
        out = gpu_summary(graph(audio, *state.tails, *state.kv))
    out["per_frame"] = round(out["kernels"] / frames, 1)
    return out


def count(folder: Path) -> dict[str, Any]:
    from assistant.config import TtsConfig
    from assistant.tts.qwen3.engine import Qwen3TTS, sampling_of
    from assistant.tts.qwen3.generate import FrameKernel

    cfg = TtsConfig(model=str(folder), seed=0)
    tts = Qwen3TTS.load(cfg)
    talker = tts.talker
    hidden = talker.cfg.hidden_size
    x = mx.zeros((hidden,), talker.model.codec_embedding.weight.dtype)
    cache = talker.make_cache()
    talker(mx.zeros((1, 8, hidden), x.dtype), cache)
    mx.eval([c.kv for c in cache], x)
    kv = [c.kv for c in cache]

    def kernel_of() -> FrameKernel:
        return FrameKernel(talker, sampling_of(cfg))

    h, outputs, _ = frame_graphs(talker, kernel_of, cache, x)
    out: dict[str, Any] = {"talker_step": summary(primitives(h)), "frame_kernel": summary(primitives(*outputs))}
    out["frame_total_ops"] = out["talker_step"]["ops"] + out["frame_kernel"]["ops"]
    mx.eval(h, outputs)  # and it runs: a smoke test of the whole frame on this backend
    for c, buffer in zip(cache, kv, strict=True):
        c.kv = buffer
    with gpu_primitives():
        h, outputs, kernel = frame_graphs(talker, kernel_of, cache, x)
        step, frame = gpu_summary(graph(h)), gpu_summary(graph(*outputs))
    talker.compiled = type(talker.compiled)()  # drop the stand-in traces
    noise = gpu_summary(graph(*kernel.noise(mx.random.key(0)))) if kernel.samples else {"kernels": 0}
    noise["per_frame"] = round(noise["kernels"] / NOISE_FRAMES, 1)
    total = step["kernels"] + frame["kernels"] + noise["per_frame"]
    out["gpu"] = {"talker_step": step, "frame_kernel": frame, "noise_block": noise, "frame_total": total}
    out["gpu"].update({f"codec_step@{n}": codec_kernels(n) for n in (1, 4)})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_tts_args(ap)
    ap.add_argument("--real-widths", action="store_true", help="the released widths (slower to write and load)")
    args = ap.parse_args(argv)
    try:
        layout = tts_layout(args)
    except ValueError as e:
        ap.error(str(e))
    from benchmarks.checkpoints import write_checkpoint

    kind = tts_precision(args)
    widths = "real" if args.real_widths else "tiny"
    folder = Path(args.cache) / f"ops-{args.size}-{kind}-L{args.layers[0]}x{args.layers[1]}-{widths}"
    write_checkpoint(
        folder, args.size, args.bits or None, *args.layers, tiny_widths=not args.real_widths, mode=args.mode
    )
    row = {"section": "tts_ops", "size": args.size, "precision": kind, "layers": args.layers, "widths": widths}
    row["layout"] = layout
    row["device"] = str(mx.default_device())
    row.update(count(folder))
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
