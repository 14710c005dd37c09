"""Loading a `speech_tokenizer/` folder: values come from its config.json, and broken folders fail clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from assistant.errors import ModelError
from assistant.tts.qwen3.speech_tokenizer import SpeechTokenizer, load_speech_tokenizer
from tools.qwen3_tts_tokenizer_ref import tiny


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_values_come_from_config_json(tokenizer: SpeechTokenizer) -> None:
    """The tiny file's values (window 8, 4 heads of 8, 64 bins) are used, not the class defaults (72, 16, 2048)."""
    cfg = tokenizer.decoder.config
    assert (cfg.sliding_window, cfg.num_attention_heads, cfg.head_dim, cfg.codebook_size) == (8, 4, 8, 64)
    assert tokenizer.sample_rate == 24000 and tokenizer.samples_per_frame == 1920 == cfg.samples_per_frame
    assert tokenizer.encoder is not None and tokenizer.encoder.config.valid_quantizers == 16


def test_missing_config_names_the_file(tokenizer_dir: Path, tmp_path: Path) -> None:
    """A folder without config.json fails with ModelError naming that file."""
    d = _copy(tokenizer_dir, tmp_path / "st")
    (d / "config.json").unlink()
    with pytest.raises(ModelError, match=r"config\.json is missing"):
        load_speech_tokenizer(d)


def test_malformed_config_names_the_file(tokenizer_dir: Path, tmp_path: Path) -> None:
    """Invalid JSON and a foreign model_type both fail naming config.json."""
    d = _copy(tokenizer_dir, tmp_path / "st")
    (d / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"config\.json is not valid JSON"):
        load_speech_tokenizer(d)
    (d / "config.json").write_text(json.dumps({"model_type": "qwen3_tts_tokenizer_25hz"}))
    with pytest.raises(ModelError, match="model_type 'qwen3_tts_tokenizer_25hz'"):
        load_speech_tokenizer(d)


def test_missing_or_truncated_weights_name_the_file(tokenizer_dir: Path, tmp_path: Path) -> None:
    """No safetensors file, or a truncated one, fails with ModelError naming model.safetensors."""
    d = _copy(tokenizer_dir, tmp_path / "st")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"model\.safetensors"):
        load_speech_tokenizer(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"model\.safetensors is missing"):
        load_speech_tokenizer(d)


def test_weights_not_matching_config_fail(tokenizer_dir: Path, tmp_path: Path) -> None:
    """A tensor missing from the file, or a config that disagrees with the weights, fails naming the file."""
    d = _copy(tokenizer_dir, tmp_path / "st")
    w = tiny.speech_tokenizer_weights()
    del w["decoder.pre_conv.conv.bias"]
    tiny.save_safetensors(d / "model.safetensors", w)
    with pytest.raises(ModelError, match="decoder weights do not match"):
        load_speech_tokenizer(d)
    d2 = _copy(tokenizer_dir, tmp_path / "st2")
    cfg = json.loads((d2 / "config.json").read_text())
    cfg["decoder_config"]["num_hidden_layers"] = 3
    (d2 / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="decoder weights do not match"):
        load_speech_tokenizer(d2)


def test_decoder_only_folder_has_no_encoder(tokenizer_dir: Path, tmp_path: Path) -> None:
    """Without `encoder.*` tensors the decoder loads and `encoder` is None."""
    d = _copy(tokenizer_dir, tmp_path / "st")
    w = {k: v for k, v in tiny.speech_tokenizer_weights().items() if k.startswith("decoder.")}
    tiny.save_safetensors(d / "model.safetensors", w)
    loaded = load_speech_tokenizer(d)
    assert loaded.encoder is None and loaded.decoder.config.num_quantizers == 16
