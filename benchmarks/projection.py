"""Bytes read per Qwen3-TTS frame and the Apple-silicon frame time they imply (a bandwidth bound, no launches).

    PYTHONPATH=. python -m benchmarks.projection > docs/benchmarks/projection.json

Per frame the weights read are: every talker Linear and codec_head once (one talker step), text_projection once
(the frame's text vector), the 5 predictor layers 15 times (15 sequential steps; 157 MB in bf16 does not stay in
any cache), each lm_head once, small_to_mtp_projection once (1.7B: the prefill's two rows; the steps' inputs come
projected with their group tables' rows), and the float32 codec decoder once per chunk of 4 frames. Embeddings
are one row each (negligible). Parameter counts come from the real module shapes
(nothing is evaluated). Quantized bytes per weight include the scales (and affine biases) of each group.
"""

from __future__ import annotations

import json
from typing import Any

from mlx.utils import tree_flatten

CHUNK_FRAMES = 4  # tts.chunk_frames: the decoder runs once per 4 frames in steady state
PREDICTOR_STEPS = 15
# bytes per weight: packed bits / 8 + per-group scale (+ bias) bytes / group size
BYTES_PER_WEIGHT = {
    "bf16": 2.0,
    "8-bit affine g64": 1.0 + 4 / 64,
    "4-bit affine g64": 0.5 + 4 / 64,
    "mxfp4 g32": 0.5 + 1 / 32,
}
# unified-memory bandwidth of the fastest configuration of each chip, GB/s (Apple's published figures)
APPLE_GBS = {
    "M1": 68,
    "M1 Pro": 200,
    "M1 Max": 400,
    "M1 Ultra": 800,
    "M2": 100,
    "M2 Pro": 200,
    "M2 Max": 400,
    "M2 Ultra": 800,
    "M3": 100,
    "M3 Pro": 150,
    "M3 Max": 400,
    "M3 Ultra": 819,
    "M4": 120,
    "M4 Pro": 273,
    "M4 Max": 546,
}


def part_of(name: str) -> tuple[str, int] | None:
    """(part, reads per frame) of a talker parameter (names as in `talker.parameters()`); None: not read whole."""
    if "embedding" in name:
        return None
    if name.startswith("code_predictor.model.layers"):
        return "predictor_layers", PREDICTOR_STEPS
    if name.startswith("code_predictor.lm_head"):
        return "lm_heads", 1
    if name.startswith("code_predictor.small_to_mtp"):
        return "projection", 1
    if name.startswith("text_projection"):
        return "text_projection", 1
    return "talker", 1


def loaded_frame_bytes(talker: Any, decoder: Any | None) -> int:
    """Bytes per frame of a loaded (possibly quantized) talker as stored, plus its decoder per chunk."""
    total = 0
    for name, p in tree_flatten(talker.parameters()):
        part = part_of(name)
        total += p.nbytes * part[1] if part else 0
    if decoder is not None:
        total += sum(p.nbytes for _, p in tree_flatten(decoder.parameters())) // CHUNK_FRAMES
    return total


def weight_counts(size: str) -> dict[str, int]:
    """Weights (elements) read per frame by part, from the released shapes of `size` (spec 1.3, 1.4)."""
    from assistant.tts.qwen3.codec import CodecDecoder, DecoderConfig
    from assistant.tts.qwen3.config import ModelConfig
    from assistant.tts.qwen3.talker import Talker
    from benchmarks.checkpoints import DECODER, model_config

    talker = Talker(ModelConfig.from_dict(model_config(size)).talker_config)
    parts = {"talker": 0, "text_projection": 0, "predictor_layers": 0, "lm_heads": 0, "projection": 0}
    for name, p in tree_flatten(talker.parameters()):
        part = part_of(name)
        if part is not None and p.ndim >= 2:  # norms and biases are negligible
            parts[part[0]] += p.size * part[1]
    decoder = CodecDecoder(DecoderConfig.from_dict(DECODER))
    parts["decoder_per_frame"] = sum(p.size for _, p in tree_flatten(decoder.parameters())) // CHUNK_FRAMES
    return parts


def frame_bytes(counts: dict[str, int], precision: str) -> float:
    """Bytes per frame: LM weights at `precision`, the codec decoder in float32 (as released)."""
    lm = sum(v for k, v in counts.items() if k != "decoder_per_frame")
    return lm * BYTES_PER_WEIGHT[precision] + 4.0 * counts["decoder_per_frame"]


def main() -> int:
    sizes: dict[str, Any] = {}
    for size in ("0.6B", "1.7B"):
        counts = weight_counts(size)
        sizes[size] = {"weights_read_per_frame": counts, "bytes_per_frame": {}}
        for precision in BYTES_PER_WEIGHT:
            sizes[size]["bytes_per_frame"][precision] = round(frame_bytes(counts, precision))
    chips = {
        chip: {
            size: {p: round(b / (gbs * 1e9) * 1000, 2) for p, b in sizes[size]["bytes_per_frame"].items()}
            for size in sizes
        }
        for chip, gbs in APPLE_GBS.items()
    }
    print(json.dumps({"chunk_frames": CHUNK_FRAMES, "sizes": sizes, "apple_gbs": APPLE_GBS, "ms_per_frame": chips}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
