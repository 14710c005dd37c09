"""The quantization recipes the loaders must read, as MLX and mlx-lm write them (shared by the TTS/STT/LLM tests)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.nn as nn

# (config.json `quantization`, the layer kept in float or given its own parameters by a per-layer entry)
RECIPES: dict[str, dict[str, Any]] = {
    "affine4": {"group_size": 64, "bits": 4, "mode": "affine"},
    "affine8-legacy": {"group_size": 64, "bits": 8},  # no `mode`: older files, affine
    "mxfp4": {"group_size": 32, "bits": 4, "mode": "mxfp4"},
    "mxfp8": {"group_size": 32, "bits": 8, "mode": "mxfp8"},
    "nvfp4": {"group_size": 16, "bits": 4, "mode": "nvfp4"},
}


def quantize(
    model: nn.Module, recipe: dict[str, Any], ok: Callable[[str, nn.Module], bool], mixed: tuple[str, str] | None
) -> dict[str, Any]:
    """Quantize `model` in place with MLX as mlx-lm's convert does; with `mixed` = (path A, path B), layer A gets
    6-bit affine and layer B stays float, both recorded as per-layer entries. Returns the `quantization` entry."""
    q = dict(recipe)
    gs = int(recipe["group_size"])

    def predicate(path: str, m: nn.Module) -> bool | dict[str, Any]:
        if not (hasattr(m, "to_quantized") and m.weight.shape[-1] % 64 == 0 and ok(path, m)):
            return False
        if mixed and path == mixed[0]:
            q[path] = {"group_size": 64, "bits": 6, "mode": "affine"}
            return dict(q[path])
        if mixed and path == mixed[1]:
            q[path] = False
            return False
        return {"group_size": gs, "bits": int(recipe["bits"]), "mode": recipe.get("mode", "affine")}

    nn.quantize(model, class_predicate=predicate)
    return q
