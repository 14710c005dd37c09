"""Loading checkpoints in the mlx-community layouts (fp32, bf16, 8-bit, PyTorch-layout tensors) and bad folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from assistant.config import SttConfig
from assistant.errors import ModelError
from assistant.stt import load_transcriber
from assistant.stt.model import LoadedModel, load_model
from assistant.stt.transcriber import OfflineTranscriber, StreamingTranscriber
from assistant.stt.vocab import Vocabulary, load_vocabulary
from tools.stt_ref import tiny


def encoder_out(lm: LoadedModel, kind: str) -> np.ndarray:
    mel = mx.array(lm.mel(tiny.audio()))[None].astype(lm.dtype)
    ctx = None if kind == "parakeet" else (tiny.LEFT, 1)
    return np.array(lm.model.encoder(mel, ctx)[0].astype(mx.float32))


def test_load_transcriber_from_folder(tiny_dirs: dict[str, Path]) -> None:
    """load_transcriber builds the configured engine from a local folder (stt.model may be a path)."""
    assert isinstance(load_transcriber(SttConfig(model=str(tiny_dirs["parakeet"]))), OfflineTranscriber)
    nem = load_transcriber(SttConfig(engine="nemotron", model=str(tiny_dirs["nemotron"])))
    assert isinstance(nem, StreamingTranscriber)
    with pytest.raises(ModelError, match="cache-aware"):
        load_transcriber(SttConfig(engine="nemotron", model=str(tiny_dirs["parakeet"])))


def test_missing_or_malformed_folders(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    """A missing folder, a folder without config.json or weights, or mismatched weights give a ModelError."""
    with pytest.raises(ModelError, match="not found"):
        load_transcriber(SttConfig(model=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"no config\.json"):
        load_model(tmp_path / "empty")
    bad = shutil.copytree(tiny_dirs["parakeet"], tmp_path / "noweights")
    (bad / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"no \.safetensors"):
        load_model(bad)
    bad = shutil.copytree(tiny_dirs["parakeet"], tmp_path / "mismatch")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["encoder"]["n_layers"] = 3
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="do not match"):
        load_model(bad)
    cfg["encoder"]["subsampling"] = "striding"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="dw_striding"):
        load_model(bad)


@pytest.mark.parametrize("kind", ["parakeet", "nemotron"])
def test_bf16_checkpoint(kind: str, tmp_path: Path, tiny_dirs: dict[str, Path], models: dict[str, LoadedModel]) -> None:
    """A bf16 copy (as on the Hub) loads, computes in bf16 and stays close to the fp32 encoder output."""
    folder = shutil.copytree(tiny_dirs[kind], tmp_path / kind)
    w = mx.load(str(folder / "model.safetensors"))
    mx.save_safetensors(str(folder / "model.safetensors"), {k: v.astype(mx.bfloat16) for k, v in w.items()})
    lm = load_model(folder)
    assert lm.dtype == mx.bfloat16
    ref = encoder_out(models[kind], kind)
    got = encoder_out(lm, kind)
    assert np.abs(got - ref).max() <= 0.1 * np.abs(ref).max()
    assert isinstance(OfflineTranscriber(lm, SttConfig()).transcribe(tiny.audio()).text, str)


@pytest.mark.parametrize("kind", ["parakeet", "nemotron"])
def test_8bit_checkpoint(kind: str, tmp_path: Path, tiny_dirs: dict[str, Path], models: dict[str, LoadedModel]) -> None:
    """An 8-bit quantized copy ("quantization" in config.json, weight/scales/biases) loads and stays close."""
    folder = shutil.copytree(tiny_dirs[kind], tmp_path / kind)
    model = load_model(folder).model
    nn.quantize(
        model,
        group_size=32,
        bits=8,
        class_predicate=lambda p, m: hasattr(m, "to_quantized") and m.weight.shape[-1] % 32 == 0,
    )
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization"] = {"group_size": 32, "bits": 8}
    (folder / "config.json").write_text(json.dumps(cfg))
    lm = load_model(folder)
    assert isinstance(lm.model.encoder.layers[0].feed_forward1.linear1, nn.QuantizedLinear)
    ref = encoder_out(models[kind], kind)
    assert np.abs(encoder_out(lm, kind) - ref).max() <= 0.05 * np.abs(ref).max()


def test_pytorch_layout_weights(tmp_path: Path, tiny_dirs: dict[str, Path], models: dict[str, LoadedModel]) -> None:
    """NeMo keys with PyTorch tensor layouts (conv (out, in, k), LSTM weight_ih_lN) load to the same model."""
    folder = shutil.copytree(tiny_dirs["parakeet"], tmp_path / "torch")
    w = tiny.weights("parakeet")
    out = {}
    for k, v in w.items():
        if v.ndim >= 3:
            v = np.moveaxis(v, -1, 1)
        if ".dec_rnn.lstm." in k:
            stem, n, leaf = k.rsplit(".", 2)
            name = {"Wx": "weight_ih", "Wh": "weight_hh", "bias": "bias_ih"}[leaf]
            out[f"{stem}.{name}_l{n}"] = v
            if leaf == "bias":
                out[f"{stem}.bias_hh_l{n}"] = np.zeros_like(v)
            continue
        out[k] = v
    mx.save_safetensors(str(folder / "model.safetensors"), {k: mx.array(v) for k, v in out.items()})
    assert np.abs(encoder_out(load_model(folder), "parakeet") - encoder_out(models["parakeet"], "parakeet")).max() == 0


def test_vocabulary_decoding(tmp_path: Path) -> None:
    """Word boundaries, byte fallback and language tags decode; control tokens vanish; vocab.txt is a fallback."""
    v = Vocabulary(tiny.VOCAB)
    ids = {p: i for i, p in enumerate(tiny.VOCAB)}
    text, lang = v.decode(
        [ids["▁hello"], ids["▁world"], ids["<unk>"], ids["▁a"], ids["<0xC3>"], ids["<0xA9>"], ids["<en-US>"], 999]
    )
    assert text == "hello world aé" and lang == "en-US"
    (tmp_path / "vocab.txt").write_text("\n".join(tiny.VOCAB) + "\n", encoding="utf-8")
    assert load_vocabulary({}, tmp_path, len(tiny.VOCAB)).pieces == tiny.VOCAB
    with pytest.raises(ModelError, match="expects"):
        load_vocabulary({}, tmp_path, 7)
