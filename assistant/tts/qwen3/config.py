"""Qwen3-TTS 12 Hz configuration, read from the checkpoint's config.json (never from class defaults).

The released values differ from the official Python class defaults (codec_pad 2148 vs 4196, 16 code groups vs
32), so every field the model needs is required here and a missing one fails naming the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from assistant.errors import ModelError


def _take(cls: type, d: dict[str, Any], where: str) -> dict[str, Any]:
    """The keys of `d` that `cls` has; a missing required one raises ModelError naming it."""
    names = {f.name: f for f in dataclasses.fields(cls) if f.init}
    out = {k: v for k, v in d.items() if k in names}
    for name, f in names.items():
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name not in out and no_default:
            raise ModelError(f"{where} has no `{name}`; the checkpoint's config.json is incomplete, re-download it")
    return out


@dataclass(frozen=True)
class CodePredictorConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    num_code_groups: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "talker_config.code_predictor_config") -> CodePredictorConfig:
        return cls(**_take(cls, d, where))


@dataclass(frozen=True)
class TalkerConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    text_hidden_size: int
    text_vocab_size: int
    num_code_groups: int
    codec_eos_token_id: int
    codec_think_id: int
    codec_nothink_id: int
    codec_think_bos_id: int
    codec_think_eos_id: int
    codec_pad_id: int
    codec_bos_id: int
    code_predictor_config: CodePredictorConfig
    codec_language_id: dict[str, int] = field(default_factory=dict)
    spk_id: dict[str, int] = field(default_factory=dict)
    spk_is_dialect: dict[str, str | bool] = field(default_factory=dict)
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "talker_config") -> TalkerConfig:
        d = dict(d)
        if "code_predictor_config" not in d:
            raise ModelError(f"{where} has no `code_predictor_config`; re-download the checkpoint's config.json")
        d["code_predictor_config"] = CodePredictorConfig.from_dict(d["code_predictor_config"])
        # Some copies store speaker ids as one-element lists ([3066]); accept both.
        d["spk_id"] = {k.lower(): int(v[0] if isinstance(v, list) else v) for k, v in (d.get("spk_id") or {}).items()}
        d["spk_is_dialect"] = {k.lower(): v for k, v in (d.get("spk_is_dialect") or {}).items()}
        d["codec_language_id"] = {k.lower(): int(v) for k, v in (d.get("codec_language_id") or {}).items()}
        cfg = cls(**_take(cls, d, where))
        if cfg.code_predictor_config.num_code_groups != cfg.num_code_groups:
            raise ModelError(f"{where}: num_code_groups differs from its code_predictor_config; fix config.json")
        return cfg


@dataclass(frozen=True)
class ModelConfig:
    tts_model_type: str  # "base" | "custom_voice" | "voice_design"
    tts_model_size: str  # "0b6" | "1b7"
    talker_config: TalkerConfig
    im_start_token_id: int
    im_end_token_id: int
    tts_pad_token_id: int
    tts_bos_token_id: int
    tts_eos_token_id: int
    speaker_encoder_config: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] | None = None
    transformers_version: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        if "talker_config" not in d:
            raise ModelError("config.json has no `talker_config`; this is not a Qwen3-TTS checkpoint")
        d = dict(d)
        d["talker_config"] = TalkerConfig.from_dict(d["talker_config"])
        cfg = cls(**_take(cls, d, "config.json"))
        if cfg.tts_model_type not in ("base", "custom_voice", "voice_design"):
            raise ModelError(
                f"config.json: unknown tts_model_type {cfg.tts_model_type!r}; expected a Qwen3-TTS 12 Hz model"
            )
        return cfg

    @property
    def languages(self) -> list[str]:
        """Public language names: 'auto' plus the codec languages that are not dialects."""
        return ["auto"] + [k for k in self.talker_config.codec_language_id if "dialect" not in k]

    @property
    def speakers(self) -> list[str]:
        return list(self.talker_config.spk_id)
