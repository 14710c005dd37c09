"""Run the transformers reference (ParakeetForTDT, Nemotron3_5AsrForRNNT, NemotronAsrStreamingForRNNT) on the tiny
seeded checkpoints of tiny.py and write the outputs the tests compare against to tests/fixtures/stt/.

Run in the reference venv (torch 2.13 + transformers 5.23), offline:
    HF_HUB_OFFLINE=1 /work/refvenv-stt/bin/python tools/stt_ref/make_fixtures.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "stt"
STREAM_LOOKAHEADS = tiny.STREAM_LOOKAHEADS
OFFLINE_LOOKAHEAD = tiny.OFFLINE_LOOKAHEAD
LATTICE_TOKENS = tiny.LATTICE_TOKENS
SILENCE_LOGMEL = float(np.log(2.0**-24))  # pads the last streaming chunk


def to_hf(w: dict[str, np.ndarray], kind: str) -> dict[str, torch.Tensor]:
    """mlx-community (NeMo keys, MLX layout) -> transformers state dict."""
    out: dict[str, torch.Tensor] = {}
    sub = {
        "0": "conv_in",
        "2": "layers.0.depthwise_conv",
        "3": "layers.0.pointwise_conv",
        "5": "layers.1.depthwise_conv",
        "6": "layers.1.pointwise_conv",
    }
    attn = {
        "linear_q": "q_proj",
        "linear_k": "k_proj",
        "linear_v": "v_proj",
        "linear_out": "o_proj",
        "linear_pos": "relative_k_proj",
        "pos_bias_u": "bias_u",
        "pos_bias_v": "bias_v",
    }
    for key, a in w.items():
        t = torch.from_numpy(np.array(a))
        if t.ndim == 4:
            t = t.permute(0, 3, 1, 2)
        elif t.ndim == 3:
            t = t.permute(0, 2, 1)
        parts = key.split(".")
        if key.startswith("encoder.pre_encode.conv."):
            i = parts[3]
            name = f"encoder.subsampling.{sub[i] if kind != 'parakeet' else 'layers.' + i}.{parts[4]}"
        elif key.startswith("encoder.pre_encode.out."):
            name = f"encoder.subsampling.linear.{parts[-1]}"
        elif ".self_attn." in key:
            leaf = parts[4]
            name = ".".join([*parts[:4], attn[leaf], *parts[5:]])
        elif ".conv.batch_norm." in key:
            name = key.replace(".conv.batch_norm.", ".conv.norm.")
        elif key.startswith("decoder.prediction.embed."):
            name = "decoder.embedding.weight"
        elif key.startswith("decoder.prediction.dec_rnn.lstm."):
            n, leaf = parts[4], parts[5]
            if leaf == "bias":
                out[f"decoder.lstm.bias_ih_l{n}"] = t
                out[f"decoder.lstm.bias_hh_l{n}"] = torch.zeros_like(t)
                continue
            name = f"decoder.lstm.{'weight_ih' if leaf == 'Wx' else 'weight_hh'}_l{n}"
        elif key.startswith("joint.pred."):
            name = f"decoder.decoder_projector.{parts[-1]}"
        elif key.startswith("joint.enc."):
            name = f"encoder_projector.{parts[-1]}"
        elif key.startswith("joint.joint_net.2."):
            name = f"joint.head.{parts[-1]}"
        elif key.startswith("prompt_kernel."):
            name = f"prompt_projector.linear_{1 if parts[1] == '0' else 2}.{parts[-1]}"
        else:
            name = key
        out[name] = t
    return out


def build(kind: str) -> torch.nn.Module:
    from transformers import (
        Nemotron3_5AsrConfig,
        Nemotron3_5AsrForRNNT,
        NemotronAsrStreamingConfig,
        NemotronAsrStreamingForRNNT,
        ParakeetForTDT,
        ParakeetTDTConfig,
    )

    v = len(tiny.VOCAB)
    enc = dict(
        hidden_size=tiny.D_MODEL,
        num_hidden_layers=tiny.LAYERS,
        num_attention_heads=tiny.HEADS,
        intermediate_size=4 * tiny.D_MODEL,
        conv_kernel_size=tiny.KERNEL,
        subsampling_factor=8,
        subsampling_conv_channels=tiny.CHANNELS,
        num_mel_bins=tiny.FEATURES,
        scale_input=True,
        dropout=0.0,
        layerdrop=0.0,
        activation_dropout=0.0,
        attention_dropout=0.0,
    )
    common = dict(
        vocab_size=v + 1, decoder_hidden_size=tiny.PRED, num_decoder_layers=2, blank_token_id=v, max_symbols_per_step=10
    )
    if kind == "parakeet":
        model = ParakeetForTDT(ParakeetTDTConfig(**common, durations=list(tiny.DURATIONS), encoder_config=enc))
    elif kind == "nemotron":
        enc_s = dict(enc, model_type="nemotron_asr_streaming_encoder", sliding_window=tiny.LEFT + 1)
        model = Nemotron3_5AsrForRNNT(
            Nemotron3_5AsrConfig(
                **common,
                encoder_config=enc_s,
                num_prompts=tiny.NUM_PROMPTS,
                prompt_intermediate_size=tiny.PROMPT_HIDDEN,
                default_prompt_id=tiny.PROMPTS["auto"],
            )
        )
    else:
        enc_s = dict(enc, sliding_window=tiny.LEFT + 1)
        model = NemotronAsrStreamingForRNNT(NemotronAsrStreamingConfig(**common, encoder_config=enc_s))
    state = to_hf(tiny.weights(kind), kind)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    assert not missing and not unexpected, (missing, unexpected)
    model.eval()
    model.generation_config.decoder_start_token_id = v
    model.generation_config.pad_token_id = v
    model.generation_config.eos_token_id = None
    return model


def features(kind: str, x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    from transformers import NemotronAsrStreamingFeatureExtractor, ParakeetFeatureExtractor

    cls = ParakeetFeatureExtractor if kind == "parakeet" else NemotronAsrStreamingFeatureExtractor
    fe = cls(feature_size=tiny.FEATURES)
    out = fe(x, sampling_rate=16000, return_tensors="pt", return_attention_mask=True)
    return out["input_features"], out["attention_mask"]


def non_blank(seq: torch.Tensor, blank: int) -> np.ndarray:
    return np.array([int(t) for t in seq[0, 1:] if int(t) != blank], dtype=np.int64)


def lattice(model, proj: torch.Tensor, tokens: np.ndarray, blank: int) -> np.ndarray:
    """Joint logits for every (frame, prefix of the greedy tokens): (T, U+1, classes)."""
    ids = torch.tensor([[blank, *tokens.tolist()]])
    dec = model.decoder(ids)
    return model.joint(encoder_hidden_states=proj[:, :, None, :], decoder_hidden_states=dec[:, None])[0].numpy()


def chunks(mel: torch.Tensor, r: int) -> list[torch.Tensor]:
    first, step = 1 + 8 * r, 8 * (r + 1)
    out = [mel[:, :first]]
    for s in range(first, mel.shape[1], step):
        c = mel[:, s : s + step]
        if c.shape[1] < step:
            c = torch.cat([c, torch.full((1, step - c.shape[1], mel.shape[2]), SILENCE_LOGMEL)], dim=1)
        out.append(c)
    return out


@torch.no_grad()
def run(kind: str) -> dict[str, np.ndarray]:
    model = build(kind)
    v = len(tiny.VOCAB)
    x = tiny.audio()
    feats, mask = features(kind, x)
    n = int(mask.sum())
    res: dict[str, np.ndarray] = {"mel": feats[0, :n].numpy()}
    prompt = {"prompt_ids": torch.tensor([tiny.PROMPTS["auto"]])} if kind == "nemotron" else {}
    look = {} if kind == "parakeet" else {"num_lookahead_tokens": OFFLINE_LOOKAHEAD}
    audio_out = model.get_audio_features(input_features=feats, attention_mask=mask, **look, **prompt)
    valid = int(audio_out.attention_mask.sum())
    res["encoder"] = audio_out.last_hidden_state[0, :valid].numpy()
    res["projected"] = audio_out.pooler_output[0, :valid].numpy()
    gen = model.generate(input_features=feats, attention_mask=mask, max_new_tokens=100_000, **look, **prompt)
    res["tokens"] = non_blank(gen.sequences, v)
    res["lattice"] = lattice(model, audio_out.pooler_output[:, :valid], res["tokens"][:LATTICE_TOKENS], v)
    if kind != "parakeet":
        mel = feats[:, :n]
        for r in STREAM_LOOKAHEADS:
            cs = chunks(mel, r)
            pkv = pc = None
            enc_parts = []
            for c in cs:
                o = model.get_audio_features(
                    input_features=c,
                    past_key_values=pkv,
                    padding_cache=pc,
                    num_lookahead_tokens=r,
                    use_cache=True,
                    output_attention_mask=False,
                    **prompt,
                )
                pkv, pc = o.past_key_values, o.padding_cache
                enc_parts.append(o.last_hidden_state[0].numpy())
            res[f"stream_encoder_r{r}"] = np.concatenate(enc_parts)
            seq = model.generate(input_features=(c for c in cs), num_lookahead_tokens=r, **prompt).sequences
            res[f"stream_tokens_r{r}"] = non_blank(seq, v)
    return res


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for kind in tiny.KINDS:
        res = run(kind)
        np.savez_compressed(OUT / f"{kind}.npz", **res)
        print(kind, {k: v.shape for k, v in res.items()})
        for k, v in res.items():
            if "tokens" in k:
                print(f"  {k}: {v.tolist()}")
    with tempfile.TemporaryDirectory() as tmp:  # the layout itself must load with safetensors
        tiny.write(Path(tmp) / "p", "parakeet")


if __name__ == "__main__":
    main()
