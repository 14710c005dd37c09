"""Every MLX quantization mode, and per-layer entries, in a Qwen3-TTS checkpoint load as written, and the fused
layout the loader builds from them (q/k/v and gate/up in one matmul) computes what the checkpoint layout does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from assistant.quantization import concat_linears
from assistant.tts.qwen3.generate import FrameGenerator, PrefixState, generate_codes
from assistant.tts.qwen3.load import NOT_QUANTIZED, LoadedModel, load_model
from assistant.tts.qwen3.prompt import PromptBuilder, VoicePrompt
from assistant.tts.qwen3.sampling import SamplingParams
from assistant.tts.qwen3.talker import LinearT, Qwen3TTSModel
from tests.quant_modes import RECIPES, quantize
from tests.tts.conftest import checkpoint_model

MIXED = ("talker.model.layers.0.self_attn.o_proj", "talker.model.layers.1.self_attn.q_proj")
FUSED = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj", "gate_proj": "gate_up_proj"}
FUSED["up_proj"] = "gate_up_proj"


def written(checkpoints: Any, tmp_path: Path, name: str | None, mixed: bool) -> tuple[Qwen3TTSModel, LoadedModel]:
    """(the talker in the checkpoint's layout, quantized by MLX with recipe `name` (None: float), and the same
    checkpoint saved and loaded by our loader)."""
    folder = Path(shutil.copytree(checkpoints("custom_voice"), tmp_path / "ckpt"))
    model = checkpoint_model(folder)
    if name is not None:
        ok = lambda p, m: not any(s in p for s in NOT_QUANTIZED)  # noqa: E731
        q = quantize(model, RECIPES[name], ok, MIXED if mixed else None)
        mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())))
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, "quantization": q}))
    return model, load_model(folder)


def greedy_codes(model: Qwen3TTSModel, lm: LoadedModel) -> list[list[int]]:
    talker = model.talker
    builder = PromptBuilder(talker, lm.config, lm.tokenizer)
    prefix = PrefixState.compute(talker, builder, VoicePrompt(language="english", speaker="vivian"))
    gen = FrameGenerator(talker, builder, prefix, SamplingParams.greedy(), 8, "Hello there, how are you?", "stream")
    return [f.tolist() for f in generate_codes(gen)]


@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("name", list(RECIPES))
def test_quantized_tts_checkpoint_reloads_exactly(checkpoints: Any, tmp_path: Path, name: str, mixed: bool) -> None:
    """A tiny talker quantized by MLX in `name` mode (optionally with one 6-bit and one float layer recorded per
    layer) reloads with the same quantization per layer (fused layers with their parts' parameters; a layer whose
    parts differ stays apart) and gives the same hidden states."""
    want, lm = written(checkpoints, tmp_path, name, mixed)
    got = lm.model.talker
    modules = dict(got.named_modules())
    for path, ref in want.talker.named_modules():
        if not isinstance(ref, (nn.Linear, nn.QuantizedLinear)):
            continue
        parent, _, leaf = path.rpartition(".")
        m = modules.get(path, modules.get(f"{parent}.{FUSED.get(leaf)}"))
        float_held_transposed = type(ref) is nn.Linear and isinstance(m, LinearT)
        assert m is not None and (type(m) is type(ref) or float_held_transposed), path
        if isinstance(m, nn.QuantizedLinear):
            assert (m.mode, m.bits, m.group_size) == (ref.mode, ref.bits, ref.group_size), path
    layers = got.model.layers
    assert isinstance(layers[0].self_attn.o_proj, nn.QuantizedLinear)
    assert isinstance(layers[0].self_attn.qkv_proj, nn.QuantizedLinear)
    if mixed:  # q float, k/v quantized: layer 1 keeps three matmuls
        assert layers[0].self_attn.o_proj.bits == 6 and isinstance(layers[1].self_attn.q_proj, nn.Linear)
        assert isinstance(layers[1].self_attn.k_proj, nn.QuantizedLinear) and not layers[1].self_attn.fused
    x = mx.random.normal((1, 5, got.cfg.hidden_size), key=mx.random.key(0))
    ours, ref = np.array(got(x, got.make_cache())), np.array(want.talker(x, want.talker.make_cache()))
    assert np.abs(ours - ref).max() <= 1e-5


@pytest.mark.parametrize("name", [None, *RECIPES])
def test_fused_layout_generates_what_the_checkpoint_layout_does(
    checkpoints: Any, tmp_path: Path, name: str | None
) -> None:
    """Float32 weights, float or quantized in each MLX mode: the loader's fused talker and predictor give the
    checkpoint layout's hidden states and predictor logits (<= 1e-5) and the same greedy codes, frame for frame."""
    want, lm = written(checkpoints, tmp_path, name, False)
    got = lm.model.talker
    assert all(layer.self_attn.fused and layer.mlp.fused for layer in got.model.layers)
    assert all(layer.self_attn.fused and layer.mlp.fused for layer in got.code_predictor.model.layers)
    assert not want.talker.model.layers[0].self_attn.fused
    x = mx.random.normal((1, 5, got.cfg.hidden_size), key=mx.random.key(1))
    ours, ref = got(x, got.make_cache()), want.talker(x, want.talker.make_cache())
    assert np.abs(np.array(ours) - np.array(ref)).max() <= 1e-5
    cp, cp_ref = got.code_predictor, want.talker.code_predictor
    for g in (1, 7, 15):
        a = cp.logits(x[:, :2], g, cp.make_cache())
        b = cp_ref.logits(x[:, :2], g, cp_ref.make_cache())
        assert np.abs(np.array(a) - np.array(b)).max() <= 1e-5, g
    codes = greedy_codes(lm.model, lm)
    assert len(codes) == 7 and codes == greedy_codes(want, lm)


def test_concat_linears_refuses_what_cannot_share_a_matmul() -> None:
    """Layers of different kinds, quantization parameters or bias presence are not fused; equal ones are, with
    their outputs side by side."""
    a, b = nn.Linear(64, 32, bias=False), nn.Linear(64, 16, bias=False)
    fused = concat_linears([a, b])
    x = mx.random.normal((3, 64), key=mx.random.key(2))
    assert fused is not None and mx.allclose(fused(x), mx.concatenate([a(x), b(x)], axis=-1)).item()
    assert concat_linears([a, nn.Linear(64, 16, bias=True)]) is None
    q4, q8 = nn.QuantizedLinear.from_linear(a, 64, 4), nn.QuantizedLinear.from_linear(b, 64, 8)
    assert concat_linears([q4, q8]) is None and concat_linears([a, q8]) is None
    q = concat_linears([q4, nn.QuantizedLinear.from_linear(b, 64, 4)])
    assert isinstance(q, nn.QuantizedLinear) and q.weight.shape[0] == 48


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
