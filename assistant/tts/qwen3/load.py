"""Loading a Qwen3-TTS 12 Hz checkpoint: official `Qwen/...` (PyTorch keys) or `mlx-community/...` (MLX).

Both layouts share the `talker.*` key names; they differ in (a) the speaker encoder's conv weights, [out, in, k]
officially and [out, k, in] in mlx-community conversions, and (b) quantized Linears (`.scales`/`.biases`,
`quantization` in config.json). The layout is decided by rule: quantization present, or the shape of
`speaker_encoder.blocks.0.conv.weight` against `mel_dim` and the first kernel size from config.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import mlx.core as mx

from assistant import hub
from assistant.errors import ModelError
from assistant.quantization import float_dtype, quantize_like
from assistant.tts.qwen3.config import ModelConfig
from assistant.tts.qwen3.talker import Qwen3TTSModel
from assistant.tts.qwen3.tokenizer import TextTokenizer

Layout = Literal["pytorch", "mlx"]
# Never quantized by mlx-community conversions (spec 6.3); everything else with `.scales` in the file is.
NOT_QUANTIZED = ("codec_embedding", "text_embedding", "speech_tokenizer", "speaker_encoder")


@dataclass
class LoadedModel:
    folder: Path
    repo: str
    config: ModelConfig
    model: Qwen3TTSModel
    tokenizer: TextTokenizer
    layout: Layout
    generation: dict[str, Any]
    speaker_weights: dict[str, mx.array]  # `speaker_encoder.*` without the prefix (Base models)


def _missing(name: str, folder: Path, repo: str) -> ModelError:
    """A file missing from a model: a local folder is named once and needs the files copied in; a Hub model's
    cached folder is named beside its id and is fixed by pulling it again."""
    if Path(repo).expanduser().resolve() == folder.resolve():
        return ModelError(f"{name} is missing from the model folder {folder}; copy the whole model there")
    return ModelError(f"{name} is missing from {repo} ({folder}); re-download the model (`assistant pull`)")


def read_json(path: Path, repo: str) -> dict[str, Any]:
    if not path.is_file():
        raise _missing(path.name, path.parent, repo)
    return hub.read_json_object(path, f"{path.name} of {repo}", "re-download the model (`assistant pull`)")


def read_weights(folder: Path, repo: str) -> dict[str, mx.array]:
    files = sorted(folder.glob("model*.safetensors"))
    if not files:
        raise _missing("model.safetensors", folder, repo)
    weights: dict[str, mx.array] = {}
    for f in files:
        try:
            loaded = mx.load(str(f))
        except Exception as e:
            raise ModelError(f"{f.name} of {repo} cannot be read ({e}); re-download the model") from e
        assert isinstance(loaded, dict)
        weights.update(loaded)
    return weights


def detect_layout(weights: dict[str, mx.array], config: ModelConfig) -> Layout:
    """'mlx' for mlx-community conversions, 'pytorch' for the official files (see the module docstring)."""
    if config.quantization:
        return "mlx"
    w = weights.get("speaker_encoder.blocks.0.conv.weight")
    if w is not None:
        mel = int(config.speaker_encoder_config.get("mel_dim", 128))
        k = int(config.speaker_encoder_config.get("enc_kernel_sizes", [5])[0])
        if mel != k:
            return "pytorch" if w.shape[1] == mel else "mlx"
    return "pytorch"  # talker keys are identical in both layouts


def load_model(spec_or_folder: str | Path, repo: str | None = None, dtype: str = "auto") -> LoadedModel:
    """Talker, predictor and tokenizer from a folder (no speech tokenizer needed). Raises ModelError.

    dtype "auto" computes in the checkpoint's float type; "float32", "bfloat16" or "float16" casts every float
    parameter (quantized weights stay packed; their scales follow), e.g. float32 from a bf16 file for parity."""

    folder = hub.resolve(str(spec_or_folder), "TTS model") if not isinstance(spec_or_folder, Path) else spec_or_folder
    repo = repo or str(spec_or_folder)
    raw = read_json(folder / "config.json", repo)
    try:
        config = ModelConfig.from_dict(raw)
    except ModelError as e:
        raise ModelError(f"{repo}: {e}") from e
    generation = (
        read_json(folder / "generation_config.json", repo) if (folder / "generation_config.json").exists() else {}
    )
    weights = {k: v for k, v in read_weights(folder, repo).items() if "position_ids" not in k}
    layout = detect_layout(weights, config)
    speaker = {k[len("speaker_encoder.") :]: v for k, v in weights.items() if k.startswith("speaker_encoder.")}
    talker_w = {k: v for k, v in weights.items() if k.startswith("talker.")}
    model = Qwen3TTSModel(config.talker_config)
    if config.quantization:
        quantize_like(model, config.quantization, talker_w, repo, skip=lambda p: any(s in p for s in NOT_QUANTIZED))
    try:
        model.load_weights(list(talker_w.items()), strict=True)
    except ValueError as e:
        raise ModelError(f"model.safetensors of {repo} does not match its config.json ({e}); re-download it") from e
    if dtype != "auto":
        model.set_dtype(float_dtype(dtype))
    model.fuse()
    mx.eval(model.parameters())
    tokenizer = TextTokenizer(folder, config.transformers_version, repo)
    return LoadedModel(folder, repo, config, model, tokenizer, layout, generation, speaker)


def load_speaker_encoder(loaded: LoadedModel) -> Any | None:
    """The Base model's x-vector encoder, or None when the model has none."""
    if not loaded.speaker_weights:
        return None
    from assistant.tts.qwen3.speaker_encoder import SpeakerEncoder, SpeakerEncoderConfig

    enc = SpeakerEncoder(SpeakerEncoderConfig.from_dict(loaded.config.speaker_encoder_config))
    weights = SpeakerEncoder.sanitize(loaded.speaker_weights, pytorch_layout=loaded.layout == "pytorch")
    enc.load_weights(list(weights.items()), strict=True)
    return enc


def load_speech_tokenizer_of(loaded: LoadedModel) -> Any:
    """The 12 Hz speech tokenizer from the `speech_tokenizer/` subfolder. Raises ModelError."""
    sub = loaded.folder / "speech_tokenizer"
    if not (sub / "config.json").is_file():
        raise ModelError(f"speech_tokenizer/config.json is missing from {loaded.repo}; re-download the model")
    from assistant.tts.qwen3.speech_tokenizer import load_speech_tokenizer

    return load_speech_tokenizer(sub)
