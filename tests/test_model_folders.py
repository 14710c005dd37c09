"""A model folder whose config.json holds a value of the wrong type or kind fails to load with one ModelError naming
the model and the fix, never a TypeError traceback (new-user defects found by qa8)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from assistant.config import SttConfig, TtsConfig
from assistant.errors import ConfigError, ModelError
from assistant.tts.voices import VoiceProfile


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


def _tiny_tts_config(folder: Path) -> list[str]:
    """A tiny CustomVoice config.json in `folder` (no weights); its preset speakers."""
    from assistant.tts.qwen3.config import ModelConfig
    from tools.qwen3_tts_ref import tiny as tts_tiny

    return ModelConfig.from_dict(tts_tiny.write_config(folder, "custom_voice")).speakers


def test_a_voice_whose_speaker_the_model_lacks_fails_before_the_models_load(tmp_path: Path) -> None:
    """tts.voice = "default" (speaker ryan) with a CustomVoice model without ryan is refused by the pre-load check
    that run, say and doctor make, naming the model's speakers; it passed, and only the voice load failed."""
    from assistant import cli
    from assistant.config import Config

    speakers = _tiny_tts_config(tmp_path)
    assert "ryan" not in speakers
    cfg = Config().replace({"tts.model": str(tmp_path), "tts.voice": "default"})
    with pytest.raises(ConfigError, match=r"^tts\.voice: voice 'default' uses speaker 'ryan', which tts\.model does"):
        cli.check_voice(cfg)
    cli.check_voice(cfg.replace({"tts.voice": "vivian"}))  # a preset speaker of the tiny model passes


@dataclass
class Loaded:
    """What a loaded tiny CustomVoice model tells the voice check (settings.VoiceCatalog)."""

    found: dict[str, VoiceProfile]
    model_type: str = "custom_voice"
    speakers: list[str] = field(default_factory=lambda: ["vivian", "eric"])
    languages: list[str] = field(default_factory=lambda: ["auto", "english"])

    def profiles(self) -> dict[str, VoiceProfile]:
        return self.found


def _profile(folder: Path, name: str, speaker: str, language: str, mode: str = "custom_voice") -> VoiceProfile:
    return VoiceProfile(name, mode, folder / f"{name}.toml", language=language, speaker=speaker)


def test_config_set_refuses_a_voice_the_loaded_model_cannot_speak(tmp_path: Path) -> None:
    """config.set of a voice whose speaker or language the loaded model lacks is refused; it answered success, the
    voice load then failed in the log with a traceback and config.get named a voice that never spoke."""
    from assistant import settings
    from assistant.config import Config

    voices = Loaded(
        {p.name: p for p in (_profile(tmp_path, "ryan", "Ryan", "english"), _profile(tmp_path, "en", "vivian", "en"))}
    )
    voices.found["ok"] = _profile(tmp_path, "ok", "Vivian", "English")
    with pytest.raises(ConfigError) as e:
        settings.apply(Config(), {"tts.voice": "ryan"}, voices)
    assert str(e.value) == (
        "config.set: voice 'ryan' uses speaker 'Ryan', which tts.model does not have (its speakers: vivian, eric); "
        "set `speaker` in the voice's profile, or pick another voice: ok"
    )
    with pytest.raises(ConfigError) as e:
        settings.apply(Config(), {"tts.voice": "en"}, voices)
    assert str(e.value) == (
        "config.set: voice 'en' has language 'en', which tts.model does not know (it knows auto, english); set "
        "`language` in the voice's profile, or pick another voice: ok"
    )
    assert settings.apply(Config(), {"tts.voice": "ok"}, voices).tts.voice == "ok"


def test_clients_are_offered_only_the_voices_the_model_can_speak(tmp_path: Path) -> None:
    """Home Assistant's Wyoming voice list and /health's `voices` (the page's picker) hold only the profiles the
    model can speak; they offered every profile, and a clone voice picked for a CustomVoice model then failed."""
    from types import SimpleNamespace

    from assistant.config import Config
    from assistant.oneshot import OneShot
    from assistant.wyoming import tts_info

    found = [
        _profile(tmp_path, "vivian", "vivian", "english"),
        _profile(tmp_path, "ryan", "ryan", "english"),  # a speaker this model lacks
        _profile(tmp_path, "clone", "", "english", mode="clone"),  # needs a Base model
    ]
    tts = Loaded({p.name: p for p in found})
    loaded_tts = SimpleNamespace(
        **vars(tts), profiles=tts.profiles, loaded=SimpleNamespace(config=tts), sample_rate=24000
    )
    (program,) = tts_info(Config(), loaded_tts).tts
    assert [v.name for v in program.voices] == ["vivian"]
    engines = SimpleNamespace(tts=loaded_tts, transcriber=None)
    assert OneShot(Config(), engines, compute=None).voices() == ["vivian"]


def test_doctor_fails_a_model_folder_copied_in_part(tmp_path: Path) -> None:
    """doctor's model check fails a TTS folder without its speech_tokenizer/ or tokenizer files and an LLM folder
    without a tokenizer (weights and config.json alone passed as ok, and `run` failed after loading the others)."""
    import mlx.core as mx

    from assistant import cli
    from assistant.errors import AssistantError

    for name in ("tts", "llm"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        mx.save_safetensors(str(tmp_path / name / "model.safetensors"), {"w": mx.zeros((2,))})
    with pytest.raises(AssistantError, match=r"TTS model folder .*tts has no vocab\.json; run `assistant pull`"):
        cli._check_model(str(tmp_path / "tts"), "TTS model")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        (tmp_path / "tts" / name).write_text("{}")
    with pytest.raises(AssistantError, match=r"has no speech_tokenizer/config\.json; run `assistant pull` or copy"):
        cli._check_model(str(tmp_path / "tts"), "TTS model")
    with pytest.raises(AssistantError, match=r"LLM folder .*llm has no tokenizer file \(tokenizer\.json, "):
        cli._check_model(str(tmp_path / "llm"), "LLM")
    (tmp_path / "llm" / "tokenizer.json").write_text("{}")
    cli._check_model(str(tmp_path / "llm"), "LLM")


def test_a_voice_profile_with_a_bom_loads_and_one_in_utf16_is_named(tmp_path: Path) -> None:
    """A voice profile saved with a UTF-8 BOM (Windows editors) loads, as config.toml does; one saved as UTF-16 is
    a broken profile named with the fix, not a UnicodeDecodeError traceback that took every voice away."""
    from assistant.tts.voices import load_profiles

    text = 'mode = "custom_voice"\nspeaker = "vivian"\n'
    (tmp_path / "bom.toml").write_bytes(b"\xef\xbb\xbf" + text.encode())
    (tmp_path / "wide.toml").write_bytes(text.encode("utf-16"))
    broken: dict[str, str] = {}
    assert list(load_profiles(tmp_path, broken)) == ["bom"]
    assert broken == {
        "wide": f"voice profile {tmp_path / 'wide.toml'} is not UTF-8 text (byte 0xff at offset 0); save it as UTF-8"
    }
