"""Every MLX quantization mode, and per-layer entries, in a Qwen3-TTS checkpoint load exactly as written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

from assistant.tts.qwen3.load import NOT_QUANTIZED, load_model
from tests.quant_modes import RECIPES, quantize

MIXED = ("talker.model.layers.0.self_attn.o_proj", "talker.model.layers.1.self_attn.q_proj")


@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("name", list(RECIPES))
def test_quantized_tts_checkpoint_reloads_exactly(checkpoints: Any, tmp_path: Path, name: str, mixed: bool) -> None:
    """A tiny talker quantized by MLX in `name` mode (optionally with one 6-bit and one float layer recorded per
    layer) reloads with the same layer types and parameters and gives the same hidden states."""
    folder = Path(shutil.copytree(checkpoints("custom_voice"), tmp_path / "ckpt"))
    model = load_model(folder).model
    q = quantize(model, RECIPES[name], lambda p, m: not any(s in p for s in NOT_QUANTIZED), MIXED if mixed else None)
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())))
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "quantization": q}))
    lm = load_model(folder)
    got, want = lm.model.talker, model.talker
    for path, m in got.named_modules():
        ref = dict(want.named_modules())[path]
        assert type(m) is type(ref), path
        if isinstance(m, nn.QuantizedLinear):
            assert (m.mode, m.bits, m.group_size) == (ref.mode, ref.bits, ref.group_size), path
    layers = got.model.layers
    assert isinstance(layers[0].self_attn.o_proj, nn.QuantizedLinear)
    if mixed:
        assert layers[0].self_attn.o_proj.bits == 6 and isinstance(layers[1].self_attn.q_proj, nn.Linear)
    x = mx.random.normal((1, 5, got.cfg.hidden_size), key=mx.random.key(0))
    assert mx.array_equal(got(x, got.make_cache()), want(x, want.make_cache())).item()


def test_unknown_mode_is_a_clear_error(checkpoints: Any, tmp_path: Path) -> None:
    """A `mode` MLX does not know fails naming the mode and the known ones."""
    from assistant.errors import ModelError

    folder = Path(shutil.copytree(checkpoints("custom_voice"), tmp_path / "ckpt"))
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(
        json.dumps({**cfg, "quantization": {"group_size": 32, "bits": 4, "mode": "q4"}})
    )
    with pytest.raises(ModelError, match=r"'q4'.*affine, mxfp4, mxfp8, nvfp4"):
        load_model(folder)
