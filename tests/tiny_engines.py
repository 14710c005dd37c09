"""Tiny seeded checkpoints of every engine in the real on-disk layouts, and the config naming them (tests only).

Shared by the end-to-end tests (the virtual room and the headless WebSocket session). `tiny_config` skips the
calling test, with the reason, when a builder or the Qwen2 BPE tables are missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from assistant.config import Config


def tiny_config(root: Path, changes: dict[str, object] | None = None) -> Config:
    """Write tiny STT, LLM and TTS (with codec) models under `root`; the config uses them, greedy and short."""
    import mlx.core as mx

    import tests.llm.tiny as llm_tiny
    import tools.qwen3_tts_ref.tiny as tts_tiny
    import tools.qwen3_tts_tokenizer_ref.tiny as codec_tiny
    import tools.stt_ref.tiny as stt_tiny

    if not (tts_tiny.BPE_DIR / "vocab.json").is_file():
        pytest.skip(f"the Qwen2 BPE tables are not at {tts_tiny.BPE_DIR}; set QWEN2_BPE_DIR")
    stt = stt_tiny.write(root / "stt", "parakeet")
    llm = llm_tiny.make_tiny(root / "llm", "gemma3", seed=7, window=16)
    tts = root / "tts"
    tts_tiny.write_config(tts, "custom_voice")
    tts_tiny.tokenizer_files(tts)
    weights = {k: mx.array(v) for k, v in tts_tiny.weights("custom_voice").items()}
    mx.save_safetensors(str(tts / "model.safetensors"), weights)
    saved = dict(codec_tiny.DECODER_CONFIG), dict(codec_tiny.ENCODER_CONFIG)
    codec_tiny.DECODER_CONFIG["codebook_size"] = codec_tiny.ENCODER_CONFIG["codebook_size"] = 2048  # every code
    try:
        codec_tiny.write_speech_tokenizer(tts / "speech_tokenizer")
    finally:
        codec_tiny.DECODER_CONFIG.update(saved[0])
        codec_tiny.ENCODER_CONFIG.update(saved[1])
    return Config().replace(
        {
            "stt.model": str(stt),
            "llm.model": str(llm),
            "llm.max_tokens": 24,
            "llm.temperature": 0.0,
            "tts.model": str(tts),
            "tts.voice": "vivian",  # a preset speaker of the tiny CustomVoice checkpoint
            "tts.temperature": 0.0,
            "tts.subtalker_temperature": 0.0,
            "tts.max_frames": 60,
            **(changes or {}),
        }
    )
