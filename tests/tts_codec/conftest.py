"""Shared fixtures: the tiny seeded speech tokenizer written in the official layout and loaded by our loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from assistant.tts.qwen3.speech_tokenizer import SpeechTokenizer, load_speech_tokenizer
from tools.qwen3_tts_tokenizer_ref import tiny

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "qwen3_tts_tokenizer"


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `speech_tokenizer/` folder (config.json + model.safetensors) regenerated from the committed seed."""
    return tiny.write_speech_tokenizer(tmp_path_factory.mktemp("ckpt") / "speech_tokenizer")


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path) -> SpeechTokenizer:
    return load_speech_tokenizer(tokenizer_dir)


@pytest.fixture(scope="session")
def clip() -> np.ndarray:
    """The committed espeak-ng clip (24 kHz int16) as float32, exactly as the reference script fed it."""
    return np.load(FIXTURES / "clip_24k.npy").astype(np.float32) / 32768.0
