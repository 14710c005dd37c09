"""Where a TTS frame's time goes: each part of the frame loop timed alone at the real shapes (random weights).

    PYTHONPATH=. python -m benchmarks.tts_profile --size 0.6B [--bits 4 --mode affine] [--positions 100 400]
        [--unfused | --fuse attention=gemv,residual=add]

Parts, each run `--iters` times after a warm-up and evaluated every time (so each time includes one host sync):
the talker's one-position step compiled and eager at a KV position, the frame kernel (code 0, the 15 predictor
steps, the next embedding), a whole frame (step + kernel, one evaluation), and the codec decoder on a 4-frame
chunk; then whole streamed utterances (`Utterance.step()`, as tts_vs times them) per frame count.
Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from benchmarks.checkpoints import add_tts_args, tts_layout, tts_precision


def per_call_ms(fn: Callable[[], Any], iters: int) -> float:
    """Median ms of fn() evaluated, after two warm-up calls."""
    for _ in range(2):
        mx.eval(fn())
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        mx.eval(fn())
        out.append(time.perf_counter() - t0)
    return round(1000 * float(np.median(out)), 3)


def build_ms(fn: Callable[[], Any], iters: int) -> float:
    """Median ms of calling fn() alone, its graph evaluated after the clock: the host's cost of building a
    frame's graph (compiled functions replay their recorded graph, node by node)."""
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        r = fn()
        out.append(time.perf_counter() - t0)
        mx.eval(r)
    return round(1000 * float(np.median(out)), 3)


def codec_parts(dec: Any, codes: np.ndarray, iters: int) -> dict[str, float]:
    """The codec's 4-frame step split: quantizer + pre-conv + transformer, and the conv stack eager vs compiled."""
    from assistant.tts.qwen3.codec_vocoder import DecoderState, SnakeBeta

    state = dec.new_state()
    x = mx.array(codes)[None]

    def front() -> mx.array:
        st = DecoderState(list(state.tails), list(state.kv), state.offset)
        return dec.pre_transformer(dec.pre_conv(dec.quantizer.decode(x), st), st)

    def convs(h: mx.array, tails: list[mx.array]) -> tuple[mx.array, list[mx.array]]:
        st = DecoderState(list(tails), [], 0)
        for transconv, convnext in dec.upsample:
            h = convnext(transconv(h, st), st)
        for layer in dec.decoder:
            h = layer(h) if isinstance(layer, SnakeBeta) else layer(h, st)
        return mx.clip(h[..., 0], -1.0, 1.0), st.tails

    h = front()
    mx.eval(h)
    fast = mx.compile(convs)
    return {
        "codec_front_4_ms": per_call_ms(front, iters),
        "codec_convs_4_ms": per_call_ms(lambda: convs(h, state.tails), iters),
        "codec_convs_4_compiled_ms": per_call_ms(lambda: fast(h, state.tails), iters),
    }


def beside_peer(folder: Path, run: Callable[[], float]) -> dict[str, float]:
    """Ours per frame as mlx-audio joins the process step by step: imported, its model loaded, run once."""
    out = {"utterance_ms_per_frame@100 again": run()}
    import mlx_audio.tts.utils as mau

    out["torch imported by mlx_audio"] = float("torch" in sys.modules)
    out["after import mlx_audio"] = run()
    model = mau.load_model(folder)
    out["after mlx-audio load_model"] = run()
    model.config.talker_config.codec_eos_token_id = model.config.talker_config.vocab_size
    for r in model.generate(
        "Hello there, how are you?",
        voice="vivian",
        lang_code="english",
        max_tokens=30,
        stream=True,
        streaming_interval=0.08,
        verbose=False,
    ):
        mx.eval(r.audio)
    out["after mlx-audio ran"] = run()
    return out


def profile(
    folder: Path, positions: list[int], frames: list[int], iters: int, peer: bool, parts: bool = True, runs: int = 3
) -> dict[str, Any]:
    from assistant.config import TtsConfig
    from assistant.tts.qwen3.engine import Qwen3TTS, Utterance, ad_hoc_voice, sampling_of
    from assistant.tts.qwen3.generate import FrameGenerator, FrameKernel
    from assistant.tts.qwen3.prompt import VoicePrompt
    from assistant.tts.qwen3.sampling import noise_block
    from benchmarks.tts_vs import TEXT

    cfg = TtsConfig(model=str(folder), first_chunk_frames=1, chunk_frames=4, seed=0)
    tts = Qwen3TTS.load(cfg)
    talker = tts.talker
    voice = tts.use_voice(ad_hoc_voice("bench", VoicePrompt(language="english", speaker="vivian")))
    hidden = talker.cfg.hidden_size
    x = mx.random.normal((hidden,), key=mx.random.key(0)).astype(talker.model.codec_embedding.weight.dtype) * 0.1
    out: dict[str, Any] = {}
    dec = tts.speech_tokenizer.decoder

    def utterance(n: int, runs: int = 3) -> float:
        sampling = replace(sampling_of(cfg), min_new_tokens=n + 1)
        times = []
        for _ in range(runs):  # the first run warms up
            gen = FrameGenerator(talker, tts.builder, tts._prefix(voice), sampling, n + 1, TEXT, "stream")
            utt = Utterance(gen, dec, None, 1, 4)
            t0 = time.perf_counter()
            while not utt.done:
                utt.step()
            times.append(time.perf_counter() - t0)
        if runs > 3:  # the spread between runs of one process (a host-bound loop's noise)
            out[f"utterance_runs_ms_per_frame@{n}"] = [round(1000 * t / n, 2) for t in times[1:]]
        return round(1000 * min(times[1:]) / n, 3)

    if not parts:
        for n in frames:
            out[f"utterance_ms_per_frame@{n}"] = utterance(n, runs)
        return out
    kernel = FrameKernel.of(talker, sampling_of(cfg))
    seen = mx.zeros((talker.cfg.vocab_size,), dtype=mx.bool_)
    key = mx.random.key(0)
    noise = kernel.noise(key)[0][:1]  # one frame of a block, as the frame loop passes it
    mx.eval(noise)
    for pos in positions:
        cache = talker.make_cache()
        talker(mx.zeros((1, pos, hidden), x.dtype), cache)
        mx.eval([c.kv for c in cache])

        def step(cache: list[Any] = cache) -> mx.array:
            h = talker.step(x, cache)
            for c in cache:
                c.offset -= 1  # stay at the same position: every call times the same shapes
            return h

        def eager(cache: list[Any] = cache, pos: int = pos) -> Any:
            tables = talker.model.tables.of(cache[0].capacity)
            return talker.model.step(x[None], mx.array(pos, mx.int32), [c.kv for c in cache], tables)[0]

        def frame(cache: list[Any] = cache) -> Any:
            h = step(cache)
            return kernel(h, seen, None, False, noise)

        out[f"talker_step_ms@{pos}"] = per_call_ms(step, iters)
        out[f"talker_step_eager_ms@{pos}"] = per_call_ms(eager, iters)
        out[f"frame_ms@{pos}"] = per_call_ms(frame, iters)
        out[f"frame_build_ms@{pos}"] = build_ms(frame, iters)
    h = talker.step(x, cache)
    out["frame_kernel_ms"] = per_call_ms(lambda: kernel(h, seen, None, False, noise), iters)
    c0 = mx.array([5], dtype=mx.int32)
    p = sampling_of(cfg)
    vocab = talker.cfg.code_predictor_config.vocab_size
    cp = talker.code_predictor
    pred = mx.compile(lambda h, k: cp.predict(h, talker.codec(c0)[0, :], noise_block(k, 1, 15, vocab)[0][0], p))
    out["predictor_15_steps_ms"] = per_call_ms(lambda: pred(h, key), iters)
    codes = np.random.default_rng(0).integers(0, 2048, (4, 16)).astype(np.int32)
    for warm in (0, 80):  # a fresh stream, and one past the attention window (steady state)
        state = dec.new_state()
        for _ in range(warm // 4):
            mx.eval(dec.step(codes, state))
        out[f"codec_4_frames_ms@{warm}"] = per_call_ms(lambda state=state: dec.step(codes, state), iters)
    out.update(codec_parts(dec, codes, iters))
    for n in frames:
        out[f"utterance_ms_per_frame@{n}"] = utterance(n)
    if peer:
        out.update(beside_peer(folder, lambda: utterance(100)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_tts_args(ap)
    ap.add_argument("--decoder-dim", type=int, default=1536)
    ap.add_argument("--positions", type=int, nargs="+", default=[100, 400])
    ap.add_argument("--frames", type=int, nargs="+", default=[100, 250])
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--utterances-only", action="store_true", help="only whole utterances (--runs each): the A/B")
    ap.add_argument("--runs", type=int, default=3, help="utterances per frame count, the first a warm-up")
    ap.add_argument("--peer", action="store_true", help="then time ours as mlx-audio is imported, loaded and run")
    ap.add_argument("--no-addmm", action="store_true", help="the same as --fuse residual=add")
    args = ap.parse_args(argv)
    if args.no_addmm:  # the earlier name of the choice
        args.fuse = ",".join(filter(None, [args.fuse, "residual=add"]))
    try:
        layout = tts_layout(args)
    except ValueError as e:
        ap.error(str(e))
    from benchmarks.checkpoints import write_checkpoint

    kind = tts_precision(args)
    folder = Path(args.cache) / f"{args.size}-{kind}-L{args.layers[0]}x{args.layers[1]}-D{args.decoder_dim}"
    layers, bits = args.layers, args.bits or None
    write_checkpoint(folder, args.size, bits, layers[0], layers[1], decoder_dim=args.decoder_dim, mode=args.mode)
    row = {"section": "tts_profile", "size": args.size, "precision": kind, "device": str(mx.default_device())}
    row["layout"] = layout
    row["started"] = time.strftime("%H:%M:%S UTC", time.gmtime())
    row["env"] = {k: v for k, v in os.environ.items() if k.startswith("MLX_")}
    row.update(profile(folder, args.positions, args.frames, args.iters, args.peer, not args.utterances_only, args.runs))
    print(json.dumps(row), flush=True)
    print(row, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
