"""An ASR checkpoint in the mlx-community layout: config.json (the NeMo configuration) + safetensors with NeMo key
names, bf16/fp32 or quantized ("quantization" in config.json). One class covers Parakeet TDT (offline encoder, TDT
head) and Nemotron (cache-aware encoder, RNN-T head, optional language prompt `prompt_kernel`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from assistant.errors import ModelError
from assistant.quantization import quantize_like
from assistant.stt.encoder import Encoder, EncoderArgs
from assistant.stt.mel import MelArgs, MelFrontEnd
from assistant.stt.transducer import Transducer, TransducerArgs
from assistant.stt.vocab import Vocabulary, load_vocabulary

AUTO_PROMPT = 101  # NeMo's prompt index for automatic language detection


@dataclass(frozen=True)
class PromptArgs:
    num_prompts: int
    hidden: int
    dictionary: dict[str, int]

    @classmethod
    def from_config(cls, cfg: dict[str, Any], d_model: int) -> PromptArgs:
        p = cfg.get("prompt") or {}
        defaults = cfg.get("model_defaults") or {}
        return cls(
            num_prompts=int(p.get("num_prompts", defaults.get("num_prompts", 128))),
            hidden=int(p.get("prompt_hidden", 2 * d_model)),
            dictionary=dict(p.get("prompt_dictionary") or defaults.get("prompt_dictionary") or {}),
        )

    def index(self, language: str) -> int:
        """The prompt slot of a locale ("auto", "en-US", "de", ...); raises ModelError naming the known ones."""
        if language in self.dictionary:
            return int(self.dictionary[language])
        if language == "auto" and not self.dictionary:
            return AUTO_PROMPT
        known = ", ".join(sorted(self.dictionary)[:60])
        raise ModelError(f"language `{language}` is not supported by this model; set stt.language to one of: {known}")


class AsrModel(Transducer):
    """Encoder + (optional) prompt kernel + prediction and joint networks; attribute names are checkpoint keys."""

    def __init__(self, enc: EncoderArgs, dec: TransducerArgs, prompt: PromptArgs | None):
        super().__init__(dec)
        self.encoder = Encoder(enc)
        self.prompt_args = prompt
        if prompt is not None:
            self.prompt_kernel = [
                nn.Linear(enc.d_model + prompt.num_prompts, prompt.hidden),
                nn.ReLU(),
                nn.Linear(prompt.hidden, enc.d_model),
            ]

    @property
    def is_tdt(self) -> bool:
        return bool(self.args.durations)

    def project(self, encoded: mx.array, prompt: int | None = None) -> mx.array:
        """Encoder frames (B, T, d) -> joint-space frames (B, T, joint_hidden), through the language prompt if any."""
        if self.prompt_args is not None:
            b, t, _ = encoded.shape
            one_hot = mx.zeros((self.prompt_args.num_prompts,), encoded.dtype)
            one_hot[AUTO_PROMPT if prompt is None else prompt] = 1.0
            x = mx.concatenate([encoded, mx.broadcast_to(one_hot, (b, t, one_hot.shape[0]))], axis=-1)
            for layer in self.prompt_kernel:
                x = layer(x)
            encoded = x
        return self.joint.enc(encoded)


@dataclass
class LoadedModel:
    model: AsrModel
    mel: MelFrontEnd
    vocab: Vocabulary
    folder: Path
    config: dict[str, Any]

    @property
    def dtype(self) -> mx.Dtype:
        return self.model.joint.enc.bias.dtype  # the compute dtype (quantized weights keep float scales/biases)


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise ModelError(f"{folder} has no config.json; point stt.model at an mlx-community ASR folder or repo")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{path} is unreadable ({e}); re-download the model") from e
    if not isinstance(cfg, dict) or "encoder" not in cfg or "decoder" not in cfg or "joint" not in cfg:
        raise ModelError(f"{path} is not a NeMo ASR configuration (no encoder/decoder/joint); check stt.model")
    return cfg


def _sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Drop buffers the model recomputes; accept PyTorch layouts (conv (out, in, k...), LSTM weight_ih_lN)."""
    out: dict[str, mx.array] = {}
    lstm_bias: dict[str, mx.array] = {}
    for key, w in weights.items():
        if key.startswith("preprocessor.") or key.endswith(("num_batches_tracked", "pos_enc.pe")):
            continue
        if ".dec_rnn.lstm." in key and "_l" in key.rsplit(".", 1)[-1]:
            stem, name = key.rsplit(".", 1)
            kind, layer = name.rsplit("_l", 1)
            base = f"{stem}.{layer}"
            if kind == "weight_ih":
                out[f"{base}.Wx"] = w
            elif kind == "weight_hh":
                out[f"{base}.Wh"] = w
            else:
                lstm_bias[f"{base}.bias"] = lstm_bias.get(f"{base}.bias", 0) + w
            continue
        out[key] = w
    return out | lstm_bias


def _fix_conv_layout(model: nn.Module, weights: dict[str, mx.array]) -> None:
    """Transpose convolution weights saved in PyTorch layout to MLX layout, judged by the expected shapes."""
    from mlx.utils import tree_flatten

    expected = dict(tree_flatten(model.parameters()))
    for key, w in list(weights.items()):
        want = expected.get(key)
        if want is None or w.ndim < 3 or tuple(w.shape) == tuple(want.shape):
            continue
        moved = mx.moveaxis(w, 1, -1)
        if tuple(moved.shape) == tuple(want.shape):
            weights[key] = moved


def load_model(folder: Path, dtype: mx.Dtype | None = None) -> LoadedModel:
    """Build and load the checkpoint in `folder`; raises ModelError with the problem and the fix."""
    cfg = read_config(folder)
    enc_args = EncoderArgs.from_dict(cfg["encoder"])
    dec_args = TransducerArgs.from_config(cfg, enc_args.d_model)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{folder} has no .safetensors weights; run `assistant pull` or check stt.model")
    weights: dict[str, mx.array] = {}
    try:
        for f in files:
            weights.update(mx.load(str(f)))  # type: ignore[arg-type]
    except Exception as e:
        raise ModelError(f"cannot read the weights in {folder}: {e}; re-download the model") from e
    weights = _sanitize(weights)
    prompt = PromptArgs.from_config(cfg, enc_args.d_model) if "prompt_kernel.0.weight" in weights else None
    model = AsrModel(enc_args, dec_args, prompt)
    q = cfg.get("quantization") or cfg.get("quantization_config")
    if q:
        quantize_like(model, {"group_size": 64, "bits": 8, **q}, weights, str(folder))
    _fix_conv_layout(model, weights)
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise ModelError(f"the weights in {folder} do not match its config.json: {e}; re-download the model") from e
    if dtype is not None:
        from mlx.utils import tree_map

        model.update(
            tree_map(lambda a: a.astype(dtype) if mx.issubdtype(a.dtype, mx.floating) else a, model.parameters())
        )
    model.eval()
    mx.eval(model.parameters())
    vocab = load_vocabulary(cfg, folder, dec_args.vocab_size)
    mel = MelFrontEnd(MelArgs.from_dict(cfg.get("preprocessor", {})))
    if mel.args.features != enc_args.feat_in:
        raise ModelError(f"config.json: {mel.args.features} mel features but the encoder expects {enc_args.feat_in}")
    return LoadedModel(model=model, mel=mel, vocab=vocab, folder=folder, config=cfg)
