"""Qwen3-TTS 12 Hz speed on this machine: real-size random weights, forced length, JSON on stdout.

    PYTHONPATH=. python benchmarks/tts.py                      # 0.6B and 1.7B, bf16 and 4-bit, 48 frames
    PYTHONPATH=. python benchmarks/tts.py --small              # quick CPU run: 0.6B widths, 4 talker layers
    PYTHONPATH=. python benchmarks/tts.py --size 0.6B --dtype bf16 --frames 24

Not a test. Weights are random (the released checkpoints cannot be downloaded here), so EOS is suppressed to
force exactly N frames (`min_new_tokens`). Measures: voice-prefix prefill, time to first audio chunk (text tail
prefill + frame 0 + a 1-frame decode), per-frame time, real-time factor (compute time / audio time, < 1 is
faster than real time) and peak memory. Until the speech-tokenizer decoder is importable it times codes only
and says so ("decoder": false).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map

from assistant.tts.qwen3.config import ModelConfig
from assistant.tts.qwen3.generate import FrameGenerator, PrefixState
from assistant.tts.qwen3.prompt import PromptBuilder, VoicePrompt
from assistant.tts.qwen3.sampling import SamplingParams
from assistant.tts.qwen3.talker import Qwen3TTSModel
from assistant.tts.qwen3.tokenizer import TextTokenizer
from benchmarks.checkpoints import DECODER  # speech_tokenizer decoder_config (spec 1.4)

FRAME_S = 0.08  # one 12.5 Hz frame = 80 ms of audio
TEXT = "The weather today is sunny with a light breeze, perfect for a long walk in the park."
# Released shapes (spec 1.3); `layers` overrides for --small.
SIZES = {"0.6B": (1024, 3072, 1024), "1.7B": (2048, 6144, 1024)}  # talker hidden, intermediate, predictor hidden


def config(size: str, talker_layers: int, predictor_layers: int) -> ModelConfig:
    from tools.qwen3_tts_ref import tiny

    hidden, inter, cp_hidden = SIZES[size]
    d = tiny.model_config("custom_voice")
    t = d["talker_config"]
    t.update(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=talker_layers, num_attention_heads=16)
    t.update(num_key_value_heads=8, head_dim=128, text_hidden_size=2048)
    t["rope_scaling"]["mrope_section"] = [24, 20, 20]
    t["code_predictor_config"].update(
        hidden_size=cp_hidden,
        intermediate_size=3072,
        num_hidden_layers=predictor_layers,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
    )
    d["tts_model_size"] = "0b6" if size == "0.6B" else "1b7"
    return ModelConfig.from_dict(d)


def random_model(cfg: ModelConfig, dtype: str) -> Qwen3TTSModel:
    model = Qwen3TTSModel(cfg.talker_config)
    key = iter(mx.random.split(mx.random.key(0), 4096))
    params = tree_map(
        lambda p: (0.02 * mx.random.normal(p.shape, key=next(key))).astype(mx.bfloat16), model.parameters()
    )
    model.update(params)
    if dtype == "4bit":
        skip = ("codec_embedding", "text_embedding")

        def pred(path: str, m: nn.Module) -> bool:
            return isinstance(m, nn.Linear) and m.weight.shape[-1] % 64 == 0 and not any(s in path for s in skip)

        nn.quantize(model, group_size=64, bits=4, class_predicate=pred)
    mx.eval(model.parameters())
    return model


def random_decoder() -> Any | None:
    try:
        from assistant.tts.qwen3.codec import CodecDecoder, DecoderConfig
    except ImportError:
        return None
    dec = CodecDecoder(DecoderConfig.from_dict(DECODER))
    key = iter(mx.random.split(mx.random.key(1), 4096))
    dec.update(tree_map(lambda p: 0.02 * mx.random.normal(p.shape, key=next(key)), dec.parameters()))
    mx.eval(dec.parameters())
    return dec


def run(size: str, dtype: str, frames: int, talker_layers: int, predictor_layers: int, tok: TextTokenizer) -> dict:
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    cfg = config(size, talker_layers, predictor_layers)
    model = random_model(cfg, dtype)
    decoder = random_decoder()
    load_s = time.perf_counter() - t0
    talker = model.talker
    builder = PromptBuilder(talker, cfg, tok)
    t0 = time.perf_counter()
    prefix = PrefixState.compute(talker, builder, VoicePrompt(language="english", speaker="vivian"))
    prefix_s = time.perf_counter() - t0
    sampling = SamplingParams(seed=0, min_new_tokens=frames + 1)
    t0 = time.perf_counter()
    gen = FrameGenerator(talker, builder, prefix, sampling, frames + 1, TEXT, "stream")
    state = decoder.new_state() if decoder is not None else None
    first_audio = None
    frame_times = []
    n = 0
    while not gen.done:
        t1 = time.perf_counter()
        frame = gen.step()
        if frame is None:
            continue
        if decoder is not None:
            mx.eval(decoder.step(mx.array(frame[None], dtype=mx.int32), state))
        n += 1
        frame_times.append(time.perf_counter() - t1)
        if first_audio is None:
            first_audio = time.perf_counter() - t0
    total = time.perf_counter() - t0
    n_params = sum(v.size for _, v in tree_flatten(model.parameters()))
    return {
        "size": size,
        "dtype": dtype,
        "talker_layers": talker_layers,
        "predictor_layers": predictor_layers,
        "decoder": decoder is not None,
        "frames": n,
        "params_stored": int(n_params),
        "build_s": round(load_s, 2),
        "voice_prefix_s": round(prefix_s, 4),
        "first_chunk_s": round(first_audio or 0.0, 4),
        "frame_ms_mean": round(1000 * sum(frame_times[1:]) / max(1, len(frame_times) - 1), 1),
        "rtf": round(total / (n * FRAME_S), 3),
        "peak_memory_gb": round(mx.get_peak_memory() / 2**30, 3),
        "device": str(mx.default_device()),
        "note": "random weights, EOS suppressed"
        + ("" if decoder is not None else "; codes only: the speech-tokenizer decoder is not importable"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=[*SIZES, "all"], default="all")
    ap.add_argument("--dtype", choices=["bf16", "4bit", "all"], default="all")
    ap.add_argument("--frames", type=int, default=48, help="forced length in frames of 80 ms")
    ap.add_argument("--small", action="store_true", help="quick CPU run: 0.6B bf16, 4 talker + 2 predictor layers")
    args = ap.parse_args(argv)
    from tools.qwen3_tts_ref import tiny

    if not (tiny.BPE_DIR / "vocab.json").is_file():
        print(f"the Qwen2 BPE tables are needed at {tiny.BPE_DIR}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        tiny.tokenizer_files(Path(tmp))
        tok = TextTokenizer(Path(tmp), None)
    if args.small:
        runs = [("0.6B", "bf16", 4, 2)]
        frames = min(args.frames, 16)
    else:
        sizes = list(SIZES) if args.size == "all" else [args.size]
        dtypes = ["bf16", "4bit"] if args.dtype == "all" else [args.dtype]
        runs = [(s, d, 28, 5) for s in sizes for d in dtypes]
        frames = args.frames
    for size, dtype, tl, pl in runs:
        print(json.dumps(run(size, dtype, frames, tl, pl, tok)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
