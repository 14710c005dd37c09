"""At the released sizes (spec §1.4), our modules take exactly the official tensors (shapes only; lazy, no weights).

The official key/shape lists come from tools/qwen3_tts_tokenizer_ref/tiny.py, whose rules the reference script
checks against the official modules' state dicts (strict load) at the tiny sizes.
"""

from __future__ import annotations

import mlx.core as mx
from mlx.utils import tree_flatten

from assistant.tts.qwen3.codec import CodecDecoder, DecoderConfig
from assistant.tts.qwen3.speaker_encoder import SpeakerEncoder, SpeakerEncoderConfig
from assistant.tts.qwen3.speech_tokenizer import sanitize_decoder
from assistant.tts.qwen3.tokenizer_encoder import EncoderConfig, TokenizerEncoder
from benchmarks.codec import REAL_DECODER
from tools.qwen3_tts_tokenizer_ref import tiny

# MimiConfig defaults are the released encoder values (spec §1.4); the file also names frame_rate 12.5.
REAL_ENCODER = {"frame_rate": 12.5, "upsampling_ratios": [8, 6, 5, 4], "sliding_window": 250}


def _lazy(specs: list[tiny.Spec]) -> dict[str, mx.array]:
    return {name: mx.zeros(shape) for name, shape, _ in specs}  # never evaluated: no memory is spent


def _shapes(tree: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tree_flatten(tree)}


def test_real_decoder_takes_the_official_tensors() -> None:
    """Every official decoder tensor of the released config maps onto a parameter of the same (sanitized) shape."""
    cfg = {**REAL_DECODER, "num_quantizers": 16}
    ours = _shapes(CodecDecoder(DecoderConfig.from_dict(cfg)).parameters())
    official = {k: tuple(v.shape) for k, v in sanitize_decoder(_lazy(tiny.decoder_specs(cfg))).items()}
    assert ours == official
    assert ours["upsample.0.0.conv.weight"] == (1024, 2, 1024)
    assert ours["decoder.1.block.1.conv.weight"] == (768, 16, 1536)
    assert ours["pre_transformer.layers.0.self_attn.q_proj.weight"] == (1024, 512)  # 16 heads x 64 != hidden 512


def test_real_encoder_takes_the_official_tensors() -> None:
    """The released Mimi encoder's tensors (32 quantizers, 2048 x 256 codebooks) map onto our parameters."""
    cfg = EncoderConfig.from_dict(REAL_ENCODER, 16)  # MimiConfig defaults are the released values
    assert (cfg.hidden_size, cfg.num_quantizers, cfg.codebook_size, cfg.downsample_kernel) == (512, 32, 2048, 4)
    ours = _shapes(TokenizerEncoder(cfg).parameters())
    raw = {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}
    official = {k: tuple(v.shape) for k, v in TokenizerEncoder.sanitize(_lazy(tiny.encoder_specs(raw))).items()}
    assert ours == official


def test_real_speaker_encoder_takes_the_official_tensors() -> None:
    """The 0.6B Base speaker encoder (enc_dim 1024, channels 512x4 + 1536) maps onto our parameters."""
    cfg = SpeakerEncoderConfig.from_dict({"enc_dim": 1024})
    ours = _shapes(SpeakerEncoder(cfg).parameters())
    raw = {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}
    official = {
        k: tuple(v.shape) for k, v in SpeakerEncoder.sanitize(_lazy(tiny.speaker_encoder_specs(raw)), True).items()
    }
    assert ours == official
    assert ours["fc.weight"] == (1024, 1, 3072)
