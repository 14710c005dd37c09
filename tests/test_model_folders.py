"""A model folder whose config.json holds a value of the wrong type or kind fails to load with one ModelError naming
the model and the fix, never a TypeError traceback (new-user defects found by qa8)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assistant.config import SttConfig, TtsConfig
from assistant.errors import ModelError


def test_a_tts_config_json_with_a_null_section_is_one_model_error(tmp_path: Path) -> None:
    """A Qwen3-TTS config.json whose talker_config is null (hand-edited, or a bad conversion) names the model."""
    from assistant.tts.qwen3 import Qwen3TTS
    from tools.qwen3_tts_ref import tiny as tts_tiny

    tts_tiny.write_config(tmp_path, "custom_voice")
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "talker_config": None}))
    with pytest.raises(ModelError, match=r"TTS model `.*` cannot be built from its config\.json .* fix config\.json"):
        Qwen3TTS.load(TtsConfig(model=str(tmp_path)))


def test_an_stt_config_json_with_a_wrong_section_is_one_model_error(tmp_path: Path) -> None:
    """A NeMo config.json whose encoder is null (not a section) names the model; it was an AttributeError."""
    from assistant.stt import load_transcriber
    from tools.stt_ref import tiny as stt_tiny

    (tmp_path / "config.json").write_text(json.dumps({**stt_tiny.config("parakeet"), "encoder": None}))
    with pytest.raises(ModelError, match=r"STT model `.*` cannot be built from its config\.json"):
        load_transcriber(SttConfig(model=str(tmp_path)))


def test_a_model_path_naming_a_file_says_it_is_a_file(tmp_path: Path) -> None:
    """stt.model naming the model's config.json instead of its folder says so; it said "folder not found"."""
    from assistant import hub

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match=r"config\.json is a file, not a folder; name the folder"):
        hub.resolve(str(tmp_path / "config.json"), "STT model")
