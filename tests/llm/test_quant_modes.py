"""mlx-lm (the LLM loader) reads every MLX quantization mode and per-layer entries as the converter writes them."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

from tests.quant_modes import RECIPES, quantize

from .tiny import make_tiny


@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("name", list(RECIPES))
def test_mlx_lm_loads_each_mode(tmp_path: Path, name: str, mixed: bool) -> None:
    """A tiny Gemma 3 quantized in `name` mode (optionally mixed per layer), saved with its `quantization`
    entry, loads through mlx_lm.load with the same layers and logits."""
    from mlx_lm import load

    folder = make_tiny(tmp_path / "m", "gemma3")
    model, _ = load(str(folder))
    mixed_paths = ("model.layers.0.mlp.gate_proj", "model.layers.0.self_attn.q_proj")
    q = quantize(model, RECIPES[name], lambda p, m: "embed" not in p, mixed_paths if mixed else None)
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())))
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "quantization": q}))
    again, _ = load(str(folder))
    want = dict(model.named_modules())
    n_quantized = 0
    for path, m in again.named_modules():
        assert type(m) is type(want[path]), path
        if isinstance(m, nn.QuantizedLinear):
            n_quantized += 1
            assert (m.mode, m.bits, m.group_size) == (want[path].mode, want[path].bits, want[path].group_size)
    assert n_quantized > 0
    ids = mx.array([[1, 5, 9, 20]])
    assert mx.array_equal(again(ids), model(ids)).item()
