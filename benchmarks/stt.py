"""STT latency benchmark (not a test): real-size random weights, forced token counts.

For Parakeet TDT 0.6B v3 (offline final pass) and Nemotron 3.5 streaming 0.6B (cache-aware chunks), and for
2, 5 and 10 s utterances: the time from the end of the audio to the final transcript, the real-time factor of all
STT compute, and peak memory. Random weights decode to arbitrary tokens, so the decoders here take the model's
own joint/LSTM steps but follow a forced schedule of TOKENS_PER_S tokens per second of speech.

    PYTHONPATH=. python benchmarks/stt.py [--small] [--dtype bfloat16|float32] [--out stt.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from typing import Any

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from assistant.stt.encoder import EncoderArgs
from assistant.stt.mel import MelArgs, MelFrontEnd, MelStream
from assistant.stt.model import AsrModel, PromptArgs
from assistant.stt.transducer import TransducerArgs

TOKENS_PER_S = 4.0  # ~2.7 words/s of conversational speech at ~1.5 subword tokens per word
SECONDS = (2.0, 5.0, 10.0)
NEMOTRON_CHUNK = 1  # right context: 160 ms chunks (stt.chunk_ms default)


def real_size(kind: str, small: bool) -> tuple[EncoderArgs, TransducerArgs, PromptArgs | None]:
    """The published configurations (d_model 1024, 24 layers, 128 mels, LSTM 640, vocab 8192 / 13087)."""
    d, layers, heads, ch = (256, 4, 4, 64) if small else (1024, 24, 8, 256)
    streaming = kind == "nemotron"
    enc = EncoderArgs(
        feat_in=128,
        n_layers=layers,
        d_model=d,
        n_heads=heads,
        subsampling_conv_channels=ch,
        conv_kernel_size=9,
        causal_downsampling=streaming,
        causal_conv=streaming,
        conv_norm_type="layer_norm" if streaming else "batch_norm",
        att_context_style="chunked_limited" if streaming else "regular",
        att_context_size=((70, 13), (70, 6), (70, 1), (70, 0)) if streaming else ((-1, -1),),
    )
    vocab = 13087 if streaming else 8192
    pred = 320 if small else 640
    dec = TransducerArgs(
        vocab_size=vocab,
        pred_hidden=pred,
        pred_rnn_layers=2,
        joint_hidden=pred,
        encoder_hidden=d,
        durations=() if streaming else (0, 1, 2, 3, 4),
    )
    prompt = PromptArgs(num_prompts=128, hidden=2 * d, dictionary={"auto": 101}) if streaming else None
    return enc, dec, prompt


def build(kind: str, small: bool, dtype: mx.Dtype) -> AsrModel:
    model = AsrModel(*real_size(kind, small))
    rng = np.random.default_rng(0)
    params = [
        (k, mx.array((rng.standard_normal(v.shape) * 0.02).astype(np.float32)).astype(dtype))
        for k, v in tree_flatten(model.parameters())
    ]
    model.update(tree_unflatten(params))
    model.eval()
    mx.eval(model.parameters())
    return model


def schedule(frames: int, seconds: float) -> set[int]:
    n = max(1, round(TOKENS_PER_S * seconds))
    return {int(i * frames / n) for i in range(n)}


def forced_tdt(model: AsrModel, proj: mx.array, at: set[int]) -> int:
    """TDT greedy steps (joint + argmax sync per step, LSTM per token) following a forced token schedule."""
    a = model.args
    n_tok = a.vocab_size + 1
    pred, state = model.start()
    t, steps, total = 0, 0, proj.shape[0]
    while t < total:
        logits = model.joint(proj[t], pred[0])
        mx.stack([mx.argmax(logits[:n_tok]), mx.argmax(logits[n_tok:])]).tolist()
        steps += 1
        nxt = min([f for f in at if f > t], default=total)
        if t in at:
            pred, state = model.advance(7, state)
        t += max(1, min(4, nxt - t))  # blanks skip at most 4 frames
    return steps


def forced_rnnt(model: AsrModel, proj: mx.array, at: set[int], offset: int, carry: list[Any]) -> None:
    """RNN-T greedy over new frames: one joint per blank, a joint + LSTM step per forced token."""
    pred, state = carry
    for i in range(proj.shape[0]):
        frame = proj[i]
        mx.argmax(model.joint(frame, pred[0])).tolist()
        if offset + i in at:
            pred, state = model.advance(7, state)
            mx.argmax(model.joint(frame, pred[0])).tolist()
    carry[:] = [pred, state]


def audio(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.1 * np.sin(2 * np.pi * 150 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def bench_parakeet(model: AsrModel, mel: MelFrontEnd, seconds: float, dtype: mx.Dtype) -> dict[str, float]:
    x = audio(seconds)
    t0 = time.perf_counter()  # the final pass starts when the audio ends
    feats = mx.array(mel(x))[None].astype(dtype)
    t1 = time.perf_counter()
    proj = model.project(model.encoder(feats))[0]
    mx.eval(proj)
    t2 = time.perf_counter()
    steps = forced_tdt(model, proj, schedule(proj.shape[0], seconds))
    t3 = time.perf_counter()
    return {
        "audio_s": seconds,
        "final_latency_s": t3 - t0,
        "mel_s": t1 - t0,
        "encoder_s": t2 - t1,
        "decode_s": t3 - t2,
        "decode_steps": steps,
        "rtf": (t3 - t0) / seconds,
    }


def bench_nemotron(model: AsrModel, mel: MelFrontEnd, seconds: float, dtype: mx.Dtype) -> dict[str, float]:
    x = audio(seconds)
    r, factor = NEMOTRON_CHUNK, model.encoder.args.subsampling_factor
    cache = model.encoder.new_cache((70, r))
    stream = MelStream(mel)
    at = schedule(int(seconds * 12.5), seconds)
    carry: list[Any] = list(model.start())
    pending = np.zeros((0, mel.args.features), np.float32)
    state = {"first": True, "frames": 0}
    busy = 0.0

    def run(frames: np.ndarray, final: bool) -> None:
        nonlocal pending
        pending = np.concatenate([pending, frames])
        while True:
            need = 1 + factor * r if state["first"] else factor * (r + 1)
            if len(pending) < need and not (final and len(pending)):
                return
            chunk, pending = pending[:need], pending[need:]
            if len(chunk) < need:
                chunk = np.concatenate([chunk, np.full((need - len(chunk), chunk.shape[1]), -16.6, np.float32)])
            enc = model.encoder.stream(mx.array(chunk)[None].astype(dtype), cache)
            proj = model.project(enc, 101)[0]
            forced_rnnt(model, proj, at, state["frames"], carry)
            state["frames"] += proj.shape[0]
            state["first"] = False

    block = 160 * 16  # the microphone delivers 160 ms blocks
    for s in range(0, len(x), block):
        t = time.perf_counter()
        run(stream.push(x[s : s + block]), final=False)
        busy += time.perf_counter() - t
    t0 = time.perf_counter()
    run(stream.flush(), final=True)
    t1 = time.perf_counter()
    busy += t1 - t0
    return {"audio_s": seconds, "final_latency_s": t1 - t0, "rtf": busy / seconds, "chunk_ms": (r + 1) * 80}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="a 4-layer, d=256 stand-in for a quick run")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    dtype = getattr(mx, args.dtype)
    mel = MelFrontEnd(MelArgs(features=128))
    nem_mel = MelFrontEnd(MelArgs(features=128, normalize="NA"))
    result: dict[str, Any] = {
        "device": f"{platform.machine()} {mx.default_device()}",
        "mlx": mx.__version__,
        "dtype": args.dtype,
        "size": "small" if args.small else "real",
        "tokens_per_s": TOKENS_PER_S,
        "engines": {},
    }
    for kind, bench, front in (("parakeet", bench_parakeet, mel), ("nemotron", bench_nemotron, nem_mel)):
        mx.reset_peak_memory()
        model = build(kind, args.small, dtype)
        n_params = sum(v.size for _, v in tree_flatten(model.parameters()))
        bench(model, front, 1.0, dtype)  # warm-up
        runs = []
        for s in SECONDS:
            runs.append(bench(model, front, s, dtype))
            print(f"{kind} {s:.0f} s: {runs[-1]}", file=sys.stderr, flush=True)
        result["engines"][kind] = {
            "params_m": round(n_params / 1e6, 1),
            "runs": [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in runs],
            "peak_memory_mb": round(mx.get_peak_memory() / 2**20, 1),
        }
        del model
    result["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
