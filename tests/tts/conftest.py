"""Tiny Qwen3-TTS checkpoints rebuilt from seeds (tools/qwen3_tts_ref/tiny.py) in both on-disk layouts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from tools.qwen3_tts_ref import tiny

FIXTURES = tiny.FIXTURES


def needs_bpe() -> None:
    if not (tiny.BPE_DIR / "vocab.json").is_file():
        pytest.fail(f"the Qwen2 BPE tables are not at {tiny.BPE_DIR}; unset QWEN2_BPE_DIR to use the committed copy")


def checkpoint_model(folder: Path) -> Any:
    """The float talker of a tiny checkpoint folder in the checkpoint's own layout (unfused, as converters see it)."""
    from assistant.tts.qwen3.config import ModelConfig
    from assistant.tts.qwen3.talker import Qwen3TTSModel

    cfg = ModelConfig.from_dict(json.loads((folder / "config.json").read_text()))
    model = Qwen3TTSModel(cfg.talker_config)
    weights = mx.load(str(folder / "model.safetensors"))
    assert isinstance(weights, dict)
    model.load_weights([(k, v) for k, v in weights.items() if k.startswith("talker.")], strict=True)
    return model


def write_checkpoint(folder: Path, kind: str, layout: str = "pytorch", bits: int | None = None) -> Path:
    """The tiny checkpoint of `kind` in the official layout, or mlx-community's (optionally quantized)."""
    needs_bpe()
    tiny.write_config(folder, kind)
    tiny.tokenizer_files(folder)
    weights = {k: mx.array(v) for k, v in tiny.weights(kind).items()}
    if layout == "mlx":
        weights = {
            k: (v.transpose(0, 2, 1) if k.startswith("speaker_encoder.") and v.ndim == 3 else v)
            for k, v in weights.items()
        }
    mx.save_safetensors(str(folder / "model.safetensors"), weights)
    if bits is not None:
        from assistant.tts.qwen3.load import NOT_QUANTIZED

        model = checkpoint_model(folder)

        def predicate(path: str, module: nn.Module) -> bool:
            ok = isinstance(module, nn.Linear) and module.weight.shape[-1] % 64 == 0
            return ok and not any(p in path for p in NOT_QUANTIZED)

        nn.quantize(model, group_size=64, bits=bits, class_predicate=predicate)
        flat = dict(tree_flatten(model.parameters()))
        flat.update({k: v for k, v in weights.items() if k.startswith("speaker_encoder.")})
        mx.save_safetensors(str(folder / "model.safetensors"), flat)
        cfg = json.loads((folder / "config.json").read_text())
        cfg["quantization"] = {"group_size": 64, "bits": bits}
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """kind -> folder of the official-layout tiny checkpoint (built once per session)."""
    made: dict[tuple[str, str, int | None], Path] = {}

    def get(kind: str, layout: str = "pytorch", bits: int | None = None) -> Path:
        key = (kind, layout, bits)
        if key not in made:
            made[key] = write_checkpoint(tmp_path_factory.mktemp(f"{kind}-{layout}-{bits}"), kind, layout, bits)
        return made[key]

    return get


@pytest.fixture(scope="session")
def reference() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The official package's outputs: cases.json and reference.npz."""
    cases = json.loads((FIXTURES / "cases.json").read_text(encoding="utf-8"))
    with np.load(FIXTURES / "reference.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return cases, arrays
