"""Quantized checkpoints as MLX and mlx-lm write them: `quantization` in config.json with `group_size`, `bits`,
`mode` (affine, mxfp4, mxfp8, nvfp4) and per-layer entries keyed by module path (a dict of parameters, or false
for a layer kept in float). A layer not named takes what its saved tensors say (scales stored as uint8 mean one of
the float modes, each with one fixed bits/group size), so mixed recipes such as mlx-audio's `mixed_4_6` load as
written. One reader for the TTS, STT and (through mlx-lm itself) LLM checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from assistant.errors import ModelError

MODES = ("affine", "mxfp4", "mxfp8", "nvfp4")
# (bits, group_size) of the float modes: each allows exactly one (MLX's mx.quantize)
FLOAT_MODES = {(4, 32): "mxfp4", (8, 32): "mxfp8", (4, 16): "nvfp4"}


DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


def float_dtype(name: str) -> mx.Dtype:
    """The compute dtype named by `tts.dtype` / `stt.dtype` (validated by the config)."""
    return DTYPES[name]


def layer_params(path: str, module: nn.Module, weights: dict[str, mx.array]) -> dict[str, Any]:
    """group_size, bits and mode of a saved quantized layer, from its packed weight and scales."""
    scales, packed = weights[f"{path}.scales"], weights[f"{path}.weight"]
    in_dims = int(module.weight.shape[-1])
    group_size = in_dims // int(scales.shape[-1])
    bits = int(packed.shape[-1]) * 32 // in_dims
    if scales.dtype != mx.uint8:  # only affine keeps float scales (and biases)
        return {"group_size": group_size, "bits": bits, "mode": "affine"}
    mode = FLOAT_MODES.get((bits, group_size))
    if mode is None:
        raise ValueError(f"{path}: {bits} bits in groups of {group_size} is no MLX quantization mode")
    return {"group_size": group_size, "bits": bits, "mode": mode}


def quantize_like(
    model: nn.Module,
    q: dict[str, Any],
    weights: dict[str, mx.array],
    where: str,
    skip: Callable[[str], bool] = lambda path: False,
) -> None:
    """Turn the layers of `model` that the checkpoint stores quantized into quantized layers, in place.

    `q` is config.json's `quantization`; `weights` the checkpoint's tensors under the model's own paths; `skip`
    names paths that are never quantized. Raises ModelError naming `where` when the entry is malformed.
    """
    try:
        group_size, bits = int(q["group_size"]), int(q["bits"])
        mode = str(q.get("mode", "affine"))
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"config.json of {where}: malformed `quantization` ({e}); re-download the model") from e
    if mode not in MODES:
        raise ModelError(f"config.json of {where}: quantization mode {mode!r} is unknown; MLX knows {', '.join(MODES)}")

    def predicate(path: str, module: nn.Module) -> bool | dict[str, Any]:
        entry = q.get(path)
        if isinstance(entry, dict):
            return {k: v for k, v in entry.items() if k in ("group_size", "bits", "mode")}
        if entry is False or skip(path) or not hasattr(module, "to_quantized"):
            return False
        if f"{path}.scales" not in weights:
            return False
        try:
            return layer_params(path, module, weights)
        except ValueError as e:
            raise ModelError(f"{where}: {e}; re-download the model") from e

    nn.quantize(model, group_size=group_size, bits=bits, mode=mode, class_predicate=predicate)


def concat_linears(layers: list[nn.Module]) -> nn.Module | None:
    """One layer whose output is the outputs of `layers` (same input) concatenated in order: one matmul instead of
    several. Float and quantized layers of every mode (weights, scales and affine biases stack along the output
    dimension). None when they cannot share a matmul: different types, quantization parameters or input widths, or
    a bias on some only."""
    first = layers[0]
    if not all(type(m) is type(first) for m in layers) or type(first) not in (nn.Linear, nn.QuantizedLinear):
        return None
    if len({"bias" in m for m in layers}) != 1 or len({m.weight.shape[1:] for m in layers}) != 1:
        return None
    bias = "bias" in first
    keys = ["weight", *(["bias"] if bias else [])]
    if isinstance(first, nn.QuantizedLinear):
        if len({(m.group_size, m.bits, m.mode) for m in layers}) != 1:
            return None
        keys += ["scales", *(["biases"] if first.get("biases") is not None else [])]
        in_dims = first.weight.shape[1] * 32 // first.bits
        out = sum(m.weight.shape[0] for m in layers)
        # the constructor's random weight is lazy and replaced below, so it is never computed
        fused: nn.Module = nn.QuantizedLinear(in_dims, out, bias, first.group_size, first.bits, first.mode)
    else:
        fused = nn.Linear(first.weight.shape[1], sum(m.weight.shape[0] for m in layers), bias=bias)
    for k in keys:
        fused[k] = mx.concatenate([m[k] for m in layers], axis=0)
    return fused
