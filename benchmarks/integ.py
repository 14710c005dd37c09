"""Integration timings: the Wyoming services against the in-process path, and LLM TTFT in-process vs mlx_lm.server.

Run: PYTHONPATH=$PWD python -m benchmarks.integ [--reps 5] [--llm MODEL_OR_FOLDER] [--out FILE.json]
     PYTHONPATH=$PWD python -m benchmarks.integ --real     (a GPU: the real-size random-weight models of v2v.py)

Without --llm every model is a tiny random-weight checkpoint (tests/tiny_engines.py): the numbers then measure our
serving overhead (protocol, thread hops, resampling), not model speed. With --llm the LLM rows use that model,
in-process (mlx-lm, our Chat with its persistent prompt cache) and through a local `mlx_lm.server` subprocess
(our RemoteChat over HTTP). Each row gives the median and the spread over the repetitions, in milliseconds:
- tts_first_audio: text in -> first audio samples out (in-process: Utterance.step; Wyoming: synthesize -> first
  audio-chunk over TCP)
- asr_final: end of audio -> final transcript (in-process: finalize(); Wyoming: audio-stop sent -> transcript read)
- llm_ttft turn N: user text -> first text delta, after N-1 earlier turns of history
With --real: Parakeet TDT 0.6B and Qwen3-TTS 0.6B bf16 (v2v.py's engines) behind both paths, and the LLM rows on
a Gemma 4 E2B text-shape folder with random 4-bit weights written once (benchmarks/llm.py's model, saved in the
mlx-lm layout so `mlx_lm.server` loads the very same weights).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

TEXT = "Hello, how are you today? I am fine, thank you."
QUESTIONS = ["Hello, how are you today?", "Tell me a short story.", "What is the capital of France?", "And Germany?"]


def row(name: str, path: str, samples: list[float]) -> dict[str, Any]:
    ms = [s * 1000 for s in samples]
    out = {"name": name, "path": path, "median_ms": round(statistics.median(ms), 2)}
    out.update({"min_ms": round(min(ms), 2), "max_ms": round(max(ms), 2), "n": len(ms)})
    print(
        f"{name:<22} {path:<14} median {out['median_ms']:9.2f} ms  (min {out['min_ms']:.2f}, max {out['max_ms']:.2f})"
    )
    return out


def real_speech_engines(cfg: Any, folder: Path) -> Any:
    """STT and TTS at the real sizes with random weights (v2v.py's), as SpeechEngines (on the compute thread)."""
    from assistant.wyoming import speech_engines
    from benchmarks.v2v import build_engines

    engines = build_engines(False, folder, cfg)
    engines.tts.voice(cfg.tts.voice or None)
    return speech_engines(engines.transcriber.inner, engines.tts)


def write_llm_folder(folder: Path, size: str = "e2b") -> Path:
    """benchmarks/llm.py's random 4-bit Gemma 4 text model saved as an mlx-lm folder (weights, config, tokenizer)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from benchmarks import llm as llm_bench
    from tests.llm.tiny import build_tokenizer

    if (folder / "config.json").is_file():
        return folder
    model = llm_bench.random_quantized_model(size, 0, mx.bfloat16)
    folder.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())), {"format": "mlx"})
    config = {**llm_bench.text_config(size), "eos_token_id": [1]}
    config["quantization"] = {"group_size": llm_bench.GROUP, "bits": llm_bench.BITS}
    build_tokenizer(folder, "gemma4")
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    return folder


def speech_rows(cfg: Any, reps: int, real: Path | None = None) -> list[dict[str, Any]]:
    from wyoming.asr import Transcribe
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient
    from wyoming.tts import Synthesize

    from assistant import cli
    from assistant.compute import Compute
    from assistant.wyoming import WyomingServices
    from tests.llm.servers import free_port
    from tools.stt_ref import tiny

    cfg = cfg.replace({"wyoming.asr_port": free_port(), "wyoming.tts_port": free_port()})
    compute = Compute("mlx-bench")
    if real is not None:
        engines = compute.submit(real_speech_engines, cfg, real).result()
    else:
        engines = compute.submit(cli.build_speech_engines, cfg).result()
    audio = tiny.audio()
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()

    def local_tts() -> float:
        def first() -> float:
            t = time.perf_counter()
            utt = engines.tts.start(engines.tts.voice(None), TEXT)
            while utt.step() is None and not utt.done:
                pass
            return time.perf_counter() - t

        return compute.submit(first).result()

    def local_asr() -> float:
        def final() -> float:
            tr = engines.new_transcriber()
            for i in range(0, len(audio), 1600):
                tr.feed(audio[i : i + 1600])
            t = time.perf_counter()
            tr.finalize()
            return time.perf_counter() - t

        return compute.submit(final).result()

    async def remote(services: WyomingServices) -> tuple[list[float], list[float]]:
        tts_s, asr_s = [], []
        for _ in range(reps):
            async with AsyncTcpClient("127.0.0.1", services.tts_port) as c:
                t = time.perf_counter()
                await c.write_event(Synthesize(text=TEXT).event())
                while (e := await c.read_event()) is not None and e.type != "audio-chunk":
                    pass
                tts_s.append(time.perf_counter() - t)
                while (e := await c.read_event()) is not None and e.type != "audio-stop":
                    pass
            async with AsyncTcpClient("127.0.0.1", services.asr_port) as c:
                await c.write_event(Transcribe().event())
                await c.write_event(AudioStart(rate=16000, width=2, channels=1).event())
                for i in range(0, len(pcm), 3200):  # 100 ms chunks at the pace a microphone delivers them
                    await c.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=pcm[i : i + 3200]).event())
                    await asyncio.sleep(0.1)
                t = time.perf_counter()
                await c.write_event(AudioStop().event())
                while (e := await c.read_event()) is not None and e.type != "transcript":
                    pass
                asr_s.append(time.perf_counter() - t)
        return tts_s, asr_s

    async def main() -> tuple[list[float], list[float]]:
        async with WyomingServices(cfg, engines, compute) as services:
            return await remote(services)

    try:
        local_tts()  # warm-up: first-call compilation and the voice prefix
        local_asr()
        rows = [row("tts_first_audio", "in-process", [local_tts() for _ in range(reps)])]
        tts_w, asr_w = asyncio.run(main())
        rows.append(row("tts_first_audio", "wyoming", tts_w))
        rows.append(row("asr_final", "in-process", [local_asr() for _ in range(reps)]))
        rows.append(row("asr_final", "wyoming", asr_w))
        return rows
    finally:
        compute.close(5.0)


def llm_rows(model: str, reps: int, tmp: Path) -> list[dict[str, Any]]:
    from assistant.config import Config
    from assistant.llm import Chat
    from assistant.llm_remote import RemoteChat
    from tests.llm.servers import MlxLmServer, free_port

    changes = {"llm.model": model, "llm.temperature": 0.0, "llm.max_tokens": 8}
    cfg = Config().replace(changes).llm
    server = MlxLmServer(Path(model), free_port(), tmp / "server.log").start()
    remote_cfg = Config().replace({**changes, "llm.backend": "openai", "llm.base_url": server.base_url}).llm
    rows = []
    try:
        local = Chat.load(cfg)
        for name, make, ttft in (
            ("in-process", lambda: local, _local_ttft),
            ("mlx_lm.server", lambda: RemoteChat(remote_cfg), _remote_ttft),
        ):
            per_turn: dict[int, list[float]] = {}
            for _ in range(reps + 1):  # the first pass warms both paths up and is dropped
                chat = make()
                chat.reset()
                for n, q in enumerate(QUESTIONS, 1):
                    per_turn.setdefault(n, []).append(ttft(chat, q))
            for n, samples in per_turn.items():
                rows.append(row(f"llm_ttft turn {n}", name, samples[1:]))
    finally:
        server.stop()
    return rows


def _local_ttft(chat: Any, text: str) -> float:
    t = time.perf_counter()
    gen = chat.respond(text)
    for delta in gen:
        if delta:
            break
    dt = time.perf_counter() - t
    for _ in gen:
        pass
    chat.finish_turn(None)
    return dt


def _remote_ttft(chat: Any, text: str) -> float:
    t = time.perf_counter()
    gen = chat.respond(text)
    next((d for d in gen if d), None)
    dt = time.perf_counter() - t
    for _ in gen:
        pass
    chat.finish_turn(None)
    return dt


def run(reps: int, llm: str | None, out: str | None, real: str | None = None) -> None:
    from tests.tiny_engines import tiny_config

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        cfg = tiny_config(root)
        if real is not None:
            from benchmarks.checkpoints import write_checkpoint

            tts_folder = Path(real) / "0.6B-bf16-L28x5-D1536"  # the one tts_vs and v2v write
            write_checkpoint(tts_folder, "0.6B", None, 28, 5)
            cfg = cfg.replace({"tts.model": str(tts_folder), "tts.seed": 0, "tts.max_frames": 12})
            llm = llm or str(write_llm_folder(Path(real) / "gemma4-e2b-4bit"))
        rows = speech_rows(cfg, reps, None if real is None else Path(real) / "0.6B-bf16-L28x5-D1536")
        rows += llm_rows(llm or cfg.llm.model, reps, root)
    import mlx.core as mx

    result = {
        "section": "integ",
        "machine": f"{platform.system()} {platform.machine()} {mx.default_device()}",
        "models": (
            "Parakeet TDT 0.6B + Qwen3-TTS 0.6B bf16 + Gemma 4 E2B text 4-bit, random weights"
            if real is not None
            else "tiny random-weight"
            if llm is None
            else f"tiny STT/TTS, LLM {llm}"
        ),
        "rows": rows,
    }
    if out:
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--llm", help="an mlx-lm model folder for the LLM rows (default: the tiny one)")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--real", nargs="?", const="/tmp/bench-checkpoints", help="real sizes; checkpoints in this folder")
    a = ap.parse_args()
    run(a.reps, a.llm, a.out, a.real)
