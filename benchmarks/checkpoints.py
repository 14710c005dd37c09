"""Random-weight Qwen3-TTS checkpoint folders in the mlx-community on-disk layout, for side-by-side benchmarks.

One folder is read by both our loader (`Qwen3TTS.load`) and mlx-audio's `load_model`, so both run the same
weights. Layout (spec §1, §6.3): config.json with the released values, generation_config.json, model.safetensors
(the official `talker.*` names; 4-bit: mlx-community's `nn.quantize(group_size=64, bits=4)` of every Linear
except embeddings, `.scales`/`.biases` beside uint32 weights and `quantization` in config.json), the Qwen2 BPE
tokenizer files with the added special tokens, and speech_tokenizer/ (config.json + official-layout decoder
weights, copied verbatim by the converter). CustomVoice variant: no speaker encoder, speakers in config.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

REPO = Path(__file__).resolve().parents[1]
BPE_ENV = "QWEN2_BPE_DIR"  # override; default .bench-data/qwen2-bpe/ in the repository root
BPE_DEFAULT = REPO / ".bench-data" / "qwen2-bpe"
GROUP_SIZE = {"affine": 64, "mxfp4": 32, "mxfp8": 32, "nvfp4": 16}  # mlx-community's affine; the float modes' only
NOT_QUANTIZED = ("codec_embedding", "text_embedding", "speech_tokenizer", "speaker_encoder")

# talker hidden / intermediate per released size (spec §1.3); the predictor is the same in both
SIZES = {"0.6B": (1024, 3072), "1.7B": (2048, 6144)}
SPEAKERS = {
    "serena": 3066,
    "vivian": 3065,
    "uncle_fu": 3010,
    "ryan": 3061,
    "aiden": 2861,
    "ono_anna": 2873,
    "sohee": 2864,
    "eric": 2875,
    "dylan": 2878,
}
DIALECT = {"eric": "sichuan_dialect", "dylan": "beijing_dialect"}
# speech_tokenizer/config.json decoder_config of the released 12 Hz checkpoints (spec §1.4)
DECODER = {
    "codebook_size": 2048,
    "codebook_dim": 512,
    "latent_dim": 1024,
    "decoder_dim": 1536,
    "hidden_size": 512,
    "intermediate_size": 1024,
    "head_dim": 64,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "num_hidden_layers": 8,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "layer_scale_initial_scale": 0.01,
    "rope_theta": 10000,
    "max_position_embeddings": 8000,
    "sliding_window": 72,
    "num_quantizers": 16,
    "num_semantic_quantizers": 1,
    "semantic_codebook_size": 4096,
    "vector_quantization_hidden_dimension": 512,
    "upsample_rates": [8, 5, 4, 3],
    "upsampling_ratios": [2, 2],
    "attention_bias": False,
    "attention_dropout": 0.0,
}


def bpe_dir() -> Path:
    """The Qwen2 BPE tables: $QWEN2_BPE_DIR, else .bench-data/qwen2-bpe/ (never committed)."""
    d = Path(os.environ.get(BPE_ENV) or BPE_DEFAULT)
    if not (d / "vocab.json").is_file() or not (d / "merges.txt").is_file():
        raise FileNotFoundError(f"Qwen2 BPE tables (vocab.json, merges.txt) missing in {d}; set {BPE_ENV}")
    return d


def model_config(
    size: str,
    talker_layers: int = 28,
    predictor_layers: int = 5,
    bits: int | None = None,
    tiny_widths: bool = False,
    mode: str = "affine",
) -> dict:
    """config.json of a CustomVoice checkpoint with the released shapes (layers overridable for CPU runs;
    `tiny_widths`: hidden 256 (the 1.7B talker 512), for CPU runs of the whole daemon)."""
    from tools.qwen3_tts_ref import tiny

    hidden, inter = SIZES[size]
    d = tiny.model_config("custom_voice")
    t = d["talker_config"]
    t.update(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=talker_layers)
    t.update(num_attention_heads=16, num_key_value_heads=8, head_dim=128, text_hidden_size=2048)
    t["rope_scaling"]["mrope_section"] = [24, 20, 20]
    t["spk_id"] = dict(SPEAKERS)
    t["spk_is_dialect"] = {k: DIALECT.get(k, False) for k in SPEAKERS}
    t["code_predictor_config"].update(
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=predictor_layers,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
    )
    if tiny_widths:  # the 1.7B's talker stays wider than its predictor: it keeps its projection between them
        wide = 256 if size == "0.6B" else 512
        t.update(hidden_size=wide, intermediate_size=3 * wide, num_attention_heads=4, num_key_value_heads=2)
        t.update(head_dim=64)
        t.update(text_hidden_size=256)
        t["rope_scaling"]["mrope_section"] = [12, 10, 10]
        t["code_predictor_config"].update(
            hidden_size=256, intermediate_size=768, num_attention_heads=4, num_key_value_heads=2, head_dim=64
        )
    d["tts_model_size"] = "0b6" if size == "0.6B" else "1b7"
    d["speaker_encoder_config"]["enc_dim"] = t["hidden_size"]
    if bits is not None:
        d["quantization"] = {"group_size": GROUP_SIZE[mode], "bits": bits, "mode": mode}
    return d


def _random_params(model: nn.Module, seed: int) -> None:
    """Norm weights 1, biases 0, matrices N(0, 1/fan_in) (embeddings N(0, 0.02²)), all bf16: stable activations."""
    keys = mx.random.split(mx.random.key(seed), len(tree_flatten(model.parameters())))
    new = []
    for i, (name, p) in enumerate(tree_flatten(model.parameters())):
        if p.ndim == 1:
            v = mx.ones(p.shape) if name.endswith("weight") else mx.zeros(p.shape)
        else:
            scale = 0.02 if "embedding" in name else float(p.shape[-1]) ** -0.5
            v = scale * mx.random.normal(p.shape, key=keys[i])
        new.append((name, v.astype(mx.bfloat16)))
        if i % 16 == 0:
            mx.eval([a for _, a in new[-16:]])
    model.load_weights(new, strict=True)
    mx.eval(model.parameters())


def write_talker(folder: Path, cfg: dict, seed: int = 0) -> int:
    """model.safetensors as the mlx-community converter saves it; returns the bytes of weights written."""
    from assistant.tts.qwen3.config import ModelConfig
    from assistant.tts.qwen3.talker import Qwen3TTSModel

    model = Qwen3TTSModel(ModelConfig.from_dict(cfg).talker_config)
    _random_params(model, seed)
    q = cfg.get("quantization")
    if q:

        def pred(path: str, m: nn.Module) -> bool:
            ok = hasattr(m, "to_quantized") and m.weight.shape[-1] % 64 == 0
            return ok and not any(s in path for s in NOT_QUANTIZED)

        nn.quantize(model, group_size=q["group_size"], bits=q["bits"], mode=q["mode"], class_predicate=pred)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    return sum(v.nbytes for v in weights.values())


def write_speech_tokenizer(folder: Path, seed: int = 1, tiny_widths: bool = False, decoder_dim: int = 1536) -> None:
    """speech_tokenizer/ with the released decoder config (or the tests' tiny one) and official-layout float32
    decoder weights. (mlx-audio's conv-layout heuristic needs the released widths: 1x1 convs wider than 64.)"""
    from tools.qwen3_tts_tokenizer_ref import tiny as tok_tiny

    folder.mkdir(parents=True, exist_ok=True)
    cfg = dict(tok_tiny.SPEECH_TOKENIZER_CONFIG)
    # tiny: the tests' decoder with the talker's 2048 codes; a narrower vocoder (decoder_dim) for CPU runs
    dec = {**tok_tiny.DECODER_CONFIG, "codebook_size": 2048} if tiny_widths else {**DECODER, "decoder_dim": decoder_dim}
    cfg["decoder_config"] = dec
    cfg.pop("encoder_config", None)  # a CustomVoice model never encodes audio; both loaders accept its absence
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    weights = tok_tiny.draw(tok_tiny.decoder_specs(dec), seed, "decoder.")
    tok_tiny.save_safetensors(folder / "model.safetensors", weights)


def write_checkpoint(
    folder: Path,
    size: str,
    bits: int | None,
    talker_layers: int = 28,
    predictor_layers: int = 5,
    tiny_widths: bool = False,
    decoder_dim: int = 1536,
    mode: str = "affine",
) -> dict[str, Any]:
    """Write (or reuse, when config.json matches) a whole checkpoint folder; returns facts for the report."""
    from tools.qwen3_tts_ref import tiny

    cfg = model_config(size, talker_layers, predictor_layers, bits, tiny_widths, mode)
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / ".complete"
    st_cfg = folder / "speech_tokenizer" / "config.json"
    same_dec = st_cfg.is_file() and json.loads(st_cfg.read_text())["decoder_config"].get("decoder_dim") == decoder_dim
    if done.is_file() and json.loads((folder / "config.json").read_text()) == cfg and (tiny_widths or same_dec):
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    (folder / "generation_config.json").write_text(json.dumps(tiny.GENERATION_CONFIG, indent=1))
    src = bpe_dir()
    tiny.BPE_DIR = src  # the tables travel in .bench-data/ on the benchmark machine
    tiny.tokenizer_files(folder)  # vocab.json, merges.txt and tokenizer_config.json with the added tokens
    nbytes = write_talker(folder, cfg)
    write_speech_tokenizer(folder / "speech_tokenizer", tiny_widths=tiny_widths, decoder_dim=decoder_dim)
    facts = {"weights_bytes": nbytes, "write_s": round(time.perf_counter() - t0, 1)}
    done.write_text(json.dumps(facts))
    return facts


def add_tts_args(ap: argparse.ArgumentParser) -> None:
    """The options that name a random-weight TTS checkpoint to build, shared by the TTS benchmarks."""
    ap.add_argument("--size", choices=["0.6B", "1.7B"], default="0.6B")
    ap.add_argument("--bits", type=int, choices=[0, 4, 8], default=0)
    ap.add_argument("--mode", default="affine")
    ap.add_argument("--layers", type=int, nargs=2, default=[28, 5])
    ap.add_argument("--cache", default="/tmp/bench-checkpoints")
    ap.add_argument("--unfused", action="store_true", help="keep the checkpoint layout (skip fuse()): the A/B")
    ap.add_argument("--fuse", default="", metavar="KEY=VALUE,...", help="fused with these FuseOptions: the A/B")


def tts_precision(args: argparse.Namespace) -> str:
    """The row's precision label for add_tts_args' options, e.g. bf16 or affine-4bit."""
    return f"{args.mode}-{args.bits}bit" if args.bits else "bf16"


def fuse_options(spec: str) -> Any:
    """FuseOptions from "key=value,..." (e.g. "attention=gemv,residual=add"); ValueError naming the choices."""
    from typing import get_args, get_type_hints

    from assistant.tts.qwen3.talker import FuseOptions

    hints = get_type_hints(FuseOptions)
    chosen = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key not in hints or value not in get_args(hints[key]):
            choices = "; ".join(f"{k}={'|'.join(get_args(t))}" for k, t in hints.items())
            raise ValueError(f"--fuse {item!r}: the choices are {choices}")
        chosen[key] = value
    return FuseOptions(**chosen)


LAYOUTS = "fused (the loader's), unfused (the checkpoint's), no-addmm (fuse=residual=add) or fuse=KEY=VALUE,..."


def layout_fuse(spec: str) -> tuple[str, Callable[[Any], None]]:
    """The row label of a layout spec (LAYOUTS) and what `Qwen3TTSModel.fuse` does under it; ValueError naming
    the choices. (Through the talker's own fuse: `Qwen3TTSModel.fuse` is what the A/B replaces.)"""
    if spec == "fused":
        return "fused", lambda model: model.talker.fuse()
    if spec == "unfused":
        return "unfused", lambda model: None
    if spec == "no-addmm":  # the earlier name of the choice
        spec = "fuse=residual=add"
    if not spec.startswith("fuse="):
        raise ValueError(f"layout {spec!r}: use {LAYOUTS}")
    options = fuse_options(spec.removeprefix("fuse="))
    return f"fused {spec.removeprefix('fuse=')}", lambda model: model.talker.fuse(options)


@contextmanager
def loading_as(spec: str) -> Iterator[str]:
    """TTS models loaded inside the block take the layout `spec` (LAYOUTS; the loader calls `fuse()` once, so a
    model keeps its layout after the block); yields the row label. Raises ValueError for an unknown spec."""
    from assistant.tts.qwen3.talker import Qwen3TTSModel

    label, fn = layout_fuse(spec)
    original = Qwen3TTSModel.fuse
    Qwen3TTSModel.fuse = lambda self, _=None: fn(self)  # type: ignore[method-assign,misc,assignment]
    try:
        yield label
    finally:
        Qwen3TTSModel.fuse = original  # type: ignore[method-assign]


def tts_layout(args: argparse.Namespace) -> str:
    """Load TTS models from now on in the layout add_tts_args' --unfused / --fuse ask for (the A/B); returns the
    row's label of it."""
    from assistant.tts.qwen3.talker import Qwen3TTSModel

    spec = "unfused" if args.unfused else f"fuse={args.fuse}" if args.fuse else "fused"
    label, fn = layout_fuse(spec)
    Qwen3TTSModel.fuse = lambda self, _=None: fn(self)  # type: ignore[method-assign,misc,assignment]
    return label
