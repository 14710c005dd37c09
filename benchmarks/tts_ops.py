"""Operations per TTS frame: the primitives MLX records for the compiled talker step and the frame kernel.

    PYTHONPATH=. python -m benchmarks.tts_ops [--size 0.6B] [--bits 4 --mode affine] [--layers 28 5] [--unfused]

On a GPU whose frame is bound by the host issuing kernels (~7 us each on the H100), fewer operations per frame
is the lever; this counts them from the graph of one compiled call (`mx.export_to_dot`), split into views (reshape,
slice, transpose, broadcast: usually no kernel) and the rest. On the CPU (no device time) MLX's fast norm, RoPE and
attention appear decomposed into their fallback ops; on a GPU they are one primitive each (or the GPU's fallback).
Narrow widths (hidden 256) by default: the operation count depends on the layer counts, not the widths.
Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import io
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import mlx.core as mx

from benchmarks.checkpoints import add_tts_args, keep_checkpoint_layout, tts_precision

VIEWS = {"Reshape", "Slice", "Transpose", "Broadcast", "ExpandDims", "Squeeze", "Flatten", "Unflatten", "Split"}


def primitives(*outputs: Any) -> Counter[str]:
    """Primitive names in the lazy graph behind `outputs` (their inputs already evaluated)."""
    buf = io.StringIO()
    mx.export_to_dot(buf, *outputs)
    return Counter(re.findall(r'label ="([^"]+)"', buf.getvalue()))


def summary(c: Counter[str]) -> dict[str, Any]:
    ops = sum(n for k, n in c.items() if k not in VIEWS)
    return {"ops": ops, "views": sum(c.values()) - ops, "by_primitive": dict(c.most_common())}


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
    kernel = FrameKernel.of(talker, sampling_of(cfg))
    seen = mx.zeros((talker.cfg.vocab_size,), dtype=mx.bool_)
    key = mx.random.key(0)
    mx.eval([c.kv for c in cache], seen, key)
    mx.eval(talker.step(x, cache, x))  # traced and compiled once (with E(frame) + text, as in the frame loop)
    h = talker.step(x, cache, x)  # the next call is the graph a frame runs
    step = primitives(h)
    mx.eval(h)
    blocked = mx.array(False)
    mx.eval(blocked)
    outputs = kernel.fn(h, seen, blocked, key)
    frame = primitives(*outputs)
    mx.eval(outputs)  # and it runs: a smoke test of the whole frame on this backend
    out = {"talker_step": summary(step), "frame_kernel": summary(frame)}
    out["frame_total_ops"] = out["talker_step"]["ops"] + out["frame_kernel"]["ops"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_tts_args(ap)
    ap.add_argument("--real-widths", action="store_true", help="the released widths (slower to write and load)")
    args = ap.parse_args(argv)
    if args.unfused:
        keep_checkpoint_layout()
    from benchmarks.checkpoints import write_checkpoint

    kind = tts_precision(args)
    widths = "real" if args.real_widths else "tiny"
    folder = Path(args.cache) / f"ops-{args.size}-{kind}-L{args.layers[0]}x{args.layers[1]}-{widths}"
    write_checkpoint(
        folder, args.size, args.bits or None, *args.layers, tiny_widths=not args.real_widths, mode=args.mode
    )
    row = {"section": "tts_ops", "size": args.size, "precision": kind, "layers": args.layers, "widths": widths}
    row["layout"] = "unfused" if args.unfused else "fused"
    row["device"] = str(mx.default_device())
    row.update(count(folder))
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
