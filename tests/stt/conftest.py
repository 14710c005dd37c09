"""Tiny seeded checkpoints in the mlx-community layout (regenerated per session) and the reference outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from assistant.stt.model import LoadedModel, load_model
from tools.stt_ref import tiny

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "stt"


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stt_models")
    return {kind: tiny.write(root / kind, kind) for kind in tiny.KINDS}


@pytest.fixture(scope="session")
def models(tiny_dirs: dict[str, Path]) -> dict[str, LoadedModel]:
    return {kind: load_model(path) for kind, path in tiny_dirs.items()}


@pytest.fixture(scope="session")
def refs() -> dict[str, dict[str, np.ndarray]]:
    return {kind: dict(np.load(FIXTURES / f"{kind}.npz")) for kind in tiny.KINDS}
