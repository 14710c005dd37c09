"""Every MLX quantization mode, and per-layer entries, in an STT checkpoint load exactly as written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

from assistant.stt.model import load_model
from tests.quant_modes import RECIPES, quantize
from tools.stt_ref import tiny

MIXED = ("encoder.layers.0.feed_forward1.linear2", "encoder.layers.0.feed_forward2.linear2")


@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("name", list(RECIPES))
def test_quantized_stt_checkpoint_reloads_exactly(
    tiny_dirs: dict[str, Path], tmp_path: Path, name: str, mixed: bool
) -> None:
    """A tiny Parakeet quantized by MLX in `name` mode (optionally with per-layer entries) reloads with the same
    quantized layers and encodes identically."""
    folder = Path(shutil.copytree(tiny_dirs["parakeet"], tmp_path / "ckpt"))
    model = load_model(folder).model
    q = quantize(model, RECIPES[name], lambda p, m: isinstance(m, nn.Linear), MIXED if mixed else None)
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())))
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "quantization": q}))
    lm = load_model(folder)
    want = dict(model.named_modules())
    for path, m in lm.model.named_modules():
        assert type(m) is type(want[path]), path
        if isinstance(m, nn.QuantizedLinear):
            assert (m.mode, m.bits, m.group_size) == (want[path].mode, want[path].bits, want[path].group_size)
    if mixed:
        layer = lm.model.encoder.layers[0]
        assert layer.feed_forward1.linear2.bits == 6 and isinstance(layer.feed_forward2.linear2, nn.Linear)
    mel = lm.mel.features(tiny.audio())[None]
    assert mx.array_equal(lm.model.encoder(mel), model.encoder(mel)).item()
