"""Tiny seeded Qwen3-TTS 12 Hz checkpoints, shared by the reference script and our tests.

Pure numpy and json (no torch, no mlx): the reference script (in its own venv) and the tests import this one
module, so both build bit-identical weights from (seed, tensor name). Special ids, the 3072 codec vocabulary,
the 151936-row text vocabulary and the Qwen2 BPE are the real ones; only the widths and depths are small.
"""

from __future__ import annotations

import copy
import json
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "qwen3_tts"
REPO = Path(__file__).resolve().parents[2]
BPE_PACKED = REPO / "tests" / "fixtures" / "qwen2_bpe"  # vocab.json.xz, merges.txt.xz (see its README)
BPE_FILES = ("vocab.json", "merges.txt")


def _unpacked_bpe() -> Path:
    """The committed tables, decompressed once into tests/.models/qwen2-bpe (else a temp folder if read-only)."""
    import lzma
    import tempfile

    for folder in (REPO / "tests" / ".models" / "qwen2-bpe", Path(tempfile.gettempdir()) / "assistant-qwen2-bpe"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for name in BPE_FILES:
                target = folder / name
                if not target.is_file():
                    part = folder / f"{name}.{os.getpid()}.part"  # whole files only, even with parallel runs
                    part.write_bytes(lzma.decompress((BPE_PACKED / f"{name}.xz").read_bytes()))
                    part.replace(target)
            return folder
        except OSError:
            continue
    raise OSError(f"cannot unpack the Qwen2 BPE tables from {BPE_PACKED}; set QWEN2_BPE_DIR to a folder holding them")


BPE_DIR = Path(os.environ["QWEN2_BPE_DIR"]) if os.environ.get("QWEN2_BPE_DIR") else _unpacked_bpe()

LANGUAGES = {
    "chinese": 2055,
    "english": 2050,
    "german": 2053,
    "italian": 2070,
    "portuguese": 2071,
    "spanish": 2054,
    "japanese": 2058,
    "korean": 2064,
    "french": 2061,
    "russian": 2069,
    "beijing_dialect": 2074,
    "sichuan_dialect": 2062,
}

# Qwen2 / Qwen3-TTS added tokens (ids 151643..151675); the TTS ones are 151671..151674.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
    "<|audio_start|>",
    "<|audio_end|>",
    "<tts_pad>",
    "<tts_text_bos>",
    "<tts_text_eod>",
    "<tts_text_bos_single>",
    "<|audio_pad|>",
]
FIRST_SPECIAL_ID = 151643


def _talker(hidden: int, cp_hidden: int, spk_id: dict[str, int], dialect: dict[str, Any]) -> dict[str, Any]:
    return {
        "vocab_size": 3072,
        "hidden_size": hidden,
        "intermediate_size": 96,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,  # explicit: hidden/heads would be 16
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": {"mrope_section": [6, 5, 5], "interleaved": True, "rope_type": "default"},
        "attention_bias": False,
        "num_code_groups": 16,
        "text_hidden_size": 32,
        "text_vocab_size": 151936,
        "codec_eos_token_id": 2150,
        "codec_think_id": 2154,
        "codec_nothink_id": 2155,
        "codec_think_bos_id": 2156,
        "codec_think_eos_id": 2157,
        "codec_pad_id": 2148,
        "codec_bos_id": 2149,
        "codec_language_id": dict(LANGUAGES),
        "spk_id": spk_id,
        "spk_is_dialect": dialect,
        "code_predictor_config": {
            "vocab_size": 2048,
            "hidden_size": cp_hidden,
            "intermediate_size": 80,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "hidden_act": "silu",
            "max_position_embeddings": 65536,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "attention_bias": False,
            "num_code_groups": 16,
        },
    }


def model_config(kind: str) -> dict[str, Any]:
    """config.json of a tiny model: kind is 'custom_voice' (1.7B-like, with a projection), 'voice_design' or 'base'."""
    speaker_cfg = {
        "mel_dim": 128,
        "enc_dim": 64,
        "enc_channels": [32, 32, 32, 32, 96],
        "enc_kernel_sizes": [5, 3, 3, 3, 1],
        "enc_dilations": [1, 2, 3, 4, 1],
        "enc_attention_channels": 16,
        "enc_res2net_scale": 4,
        "enc_se_channels": 16,
        "sample_rate": 24000,
    }
    if kind == "custom_voice":
        talker = _talker(
            64,
            48,
            {"serena": 3066, "vivian": [3065], "eric": 2875},
            {"serena": False, "vivian": False, "eric": "sichuan_dialect"},
        )
        size = "1b7"
    elif kind == "voice_design":
        talker = _talker(64, 48, {}, {})
        size = "1b7"
    elif kind == "base":
        talker = _talker(64, 64, {}, {})  # predictor as wide as the talker: Identity projection (0.6B-like)
        size = "0b6"
    else:
        raise ValueError(kind)
    return {
        "architectures": ["Qwen3TTSForConditionalGeneration"],
        "model_type": "qwen3_tts",
        "tokenizer_type": "qwen3_tts_tokenizer_12hz",
        "tts_model_size": size,
        "tts_model_type": kind,
        "im_start_token_id": 151644,
        "im_end_token_id": 151645,
        "tts_pad_token_id": 151671,
        "tts_bos_token_id": 151672,
        "tts_eos_token_id": 151673,
        "assistant_token_id": 77091,
        "talker_config": talker,
        "speaker_encoder_config": speaker_cfg,
    }


SEEDS = {"custom_voice": 11, "voice_design": 22, "base": 33}
GENERATION_CONFIG = {
    "do_sample": True,
    "repetition_penalty": 1.05,
    "temperature": 0.9,
    "top_p": 1.0,
    "top_k": 50,
    "subtalker_dosample": True,
    "subtalker_temperature": 0.9,
    "subtalker_top_k": 50,
    "subtalker_top_p": 1.0,
    "max_new_tokens": 8192,
}


def draw(seed: int, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """One float32 tensor from default_rng([seed, crc32(name)]), scaled by the kind of parameter."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    x = rng.standard_normal(shape, dtype=np.float32)
    if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
        return (1.0 + 0.1 * x).astype(np.float32)
    if name.endswith(".bias"):
        return (0.05 * x).astype(np.float32)
    if "embedding" in name:
        return x
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return (x / np.sqrt(fan_in)).astype(np.float32)


def weights(kind: str, manifest: dict[str, list[int]] | None = None) -> dict[str, np.ndarray]:
    """The tiny checkpoint in the official (PyTorch) key layout, from the committed manifest."""
    manifest = manifest if manifest is not None else load_manifest(kind)
    out = {name: draw(SEEDS[kind], name, tuple(shape)) for name, shape in manifest.items()}
    eos = out["talker.codec_head.weight"]
    eos[2150] *= EOS_SCALE[kind]  # a louder EOS row makes a case that stops before max_new_tokens
    return out


EOS_SCALE = {"custom_voice": 1.0, "voice_design": 2.5, "base": 1.0}


def load_manifest(kind: str) -> dict[str, list[int]]:
    return json.loads((FIXTURES / f"{kind}.manifest.json").read_text())


def tokenizer_files(folder: Path, with_transformers_version: str | None = None) -> None:
    """Write the Qwen2 BPE tables plus tokenizer_config.json (added tokens) into a checkpoint folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in BPE_FILES:
        (folder / name).write_bytes((BPE_DIR / name).read_bytes())
    added = {
        str(FIRST_SPECIAL_ID + i): {
            "content": tok,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, tok in enumerate(SPECIAL_TOKENS)
    }
    cfg = {
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": 131072,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1))


def write_config(folder: Path, kind: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = copy.deepcopy(model_config(kind))
    cfg.update(extra or {})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    (folder / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=1))
    return cfg
