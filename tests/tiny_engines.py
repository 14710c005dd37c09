"""Tiny seeded checkpoints of every engine in the real on-disk layouts, and the config naming them (tests only).

Shared by the end-to-end tests (the virtual room, the headless WebSocket session, the installed wheel).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from assistant.config import Config


def tiny_stt(root: Path) -> Path:
    """A tiny Parakeet TDT checkpoint in `root`."""
    from tools.stt_ref import tiny as stt_tiny

    return stt_tiny.write(root, "parakeet")


def tiny_tts(root: Path) -> Path:
    """A tiny Qwen3-TTS CustomVoice checkpoint (preset speaker "vivian") with its speech tokenizer in `root`."""
    import mlx.core as mx

    from tools.qwen3_tts_ref import tiny as tts_tiny
    from tools.qwen3_tts_tokenizer_ref import tiny as codec_tiny

    if not (tts_tiny.BPE_DIR / "vocab.json").is_file():
        pytest.fail(f"no Qwen2 BPE tables at {tts_tiny.BPE_DIR}; unset QWEN2_BPE_DIR to use the committed copy")
    tts_tiny.write_config(root, "custom_voice")
    tts_tiny.tokenizer_files(root)
    weights = {k: mx.array(v) for k, v in tts_tiny.weights("custom_voice").items()}
    mx.save_safetensors(str(root / "model.safetensors"), weights)
    saved = dict(codec_tiny.DECODER_CONFIG), dict(codec_tiny.ENCODER_CONFIG)
    codec_tiny.DECODER_CONFIG["codebook_size"] = codec_tiny.ENCODER_CONFIG["codebook_size"] = 2048  # every code
    try:
        codec_tiny.write_speech_tokenizer(root / "speech_tokenizer")
    finally:
        codec_tiny.DECODER_CONFIG.update(saved[0])
        codec_tiny.ENCODER_CONFIG.update(saved[1])
    return root


def tiny_config(root: Path, changes: dict[str, object] | None = None) -> Config:
    """Write tiny STT, LLM and TTS (with codec) models under `root`; the config uses them, greedy and short."""
    from tests.llm import tiny as llm_tiny

    stt = tiny_stt(root / "stt")
    llm = llm_tiny.make_tiny(root / "llm", "gemma3", seed=7, window=16)
    tts = tiny_tts(root / "tts")
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
            "endofturn.detector": "silence",  # no Smart Turn weights here; tests that need them fetch them
            **(changes or {}),
        }
    )
