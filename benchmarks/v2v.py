"""Voice to voice: the whole daemon headless, from the true end of the user's speech to the first output sample.

    PYTHONPATH=. python -m benchmarks.v2v [--small] [--turns 20]

The real `Conversation` (VAD, speculative start, compute thread, reply pump) runs with random-weight engines: STT
Parakeet TDT (benchmarks/stt.py shapes), LLM Gemma 4 E2B text shapes, 4-bit (benchmarks/llm.py), TTS Qwen3-TTS
0.6B CustomVoice bf16 from an mlx-community-layout folder through `Qwen3TTS.load`; `--small` uses small widths so
a CPU finishes. A source plays benchmarks/data/turn.wav (espeak-ng, 2.2 s) in real time in 20 ms blocks, turn
after turn, with silence until the previous answer has played; a sink timestamps the first sample written after
each true end of speech and plays at 24 kHz in real time. Random weights say nothing meaningful: the STT's text
is replaced by the sentence of the WAV after its real compute (random weights often decode to blanks, which the
daemon would rightly leave unanswered); the LLM's and TTS's lengths are capped (llm.max_tokens, tts.max_frames).
JSON on stdout: latency medians and p90 per stage (from the daemon's LatencyTrace events, which count from the
VAD's end of speech) and end to end (from the true end of speech, measured by this script).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parent / "data" / "turn.wav"
SENTENCE = "What will the weather be like tomorrow morning?"  # what turn.wav says
BLOCK = 320  # 20 ms at 16 kHz, the daemon's audio.block_ms
OUT_RATE = 24_000


def read_wav(path: Path) -> np.ndarray:
    """The recording as int16 at 16 kHz (the microphone's format), through the package's one audio reader."""
    from assistant.audio.files import read_audio
    from assistant.audio.format import CAPTURE_RATE, float32_to_int16, resample

    audio, rate = read_audio(str(path))
    return float32_to_int16(resample(audio, rate, CAPTURE_RATE))


def speech_end(x: np.ndarray, threshold_dbfs: float = -45.0, window: int = 160) -> int:
    """The true end of speech: the end of the last 10 ms window louder than `threshold_dbfs`."""
    n = len(x) // window
    rms = np.sqrt(np.mean(np.square(x[: n * window].astype(np.float64).reshape(n, window) / 32768.0), axis=1))
    loud = np.flatnonzero(20 * np.log10(rms + 1e-12) > threshold_dbfs)
    return (int(loud[-1]) + 1) * window


class FileSource:
    """The microphone: `speech` once per turn, then silence until `next_turn` is set; paced to real time."""

    def __init__(self, speech: np.ndarray, lead_s: float = 0.6) -> None:
        self.speech = speech
        self.end = speech_end(speech)
        self.lead = np.zeros(int(lead_s * 16_000), np.int16)
        self.next_turn = asyncio.Event()
        self.next_turn.set()
        self.true_ends: list[float] = []  # monotonic time at which each turn's speech truly ended
        self._pending = np.zeros(0, np.int16)
        self._t0: float | None = None
        self._pos = 0  # samples delivered

    async def read(self) -> np.ndarray:
        if self._t0 is None:
            self._t0 = time.monotonic()
        if len(self._pending) < BLOCK and self.next_turn.is_set():
            self.next_turn.clear()
            start = self._pos + len(self._pending) + len(self.lead)
            self.true_ends.append(self._t0 + (start + self.end) / 16_000)
            self._pending = np.concatenate([self._pending, self.lead, self.speech])
        if len(self._pending) < BLOCK:
            self._pending = np.concatenate([self._pending, np.zeros(BLOCK, np.int16)])
        block, self._pending = self._pending[:BLOCK], self._pending[BLOCK:]
        self._pos += BLOCK
        await asyncio.sleep(max(0.0, self._t0 + self._pos / 16_000 - time.monotonic()))  # its last sample is "now"
        return block


class TimestampSink:
    """The speaker: plays written audio in real time from the first write; remembers when each write came."""

    def __init__(self) -> None:
        self.writes: list[float] = []
        self._start: float | None = None  # when sample 0 would have played, continuing the current run
        self._dac: float | None = None  # when the current run's first sample played
        self._written = 0

    def write(self, chunk: np.ndarray) -> None:
        now = time.monotonic()
        self.writes.append(now)
        if self._start is None or self.played_samples >= self._written:  # idle: playback restarts now
            self._start, self._dac = now - self._written / OUT_RATE, now
        self._written += len(chunk)

    def flush(self) -> None:
        self._start, self._dac, self._written = None, None, 0

    @property
    def played_samples(self) -> int:
        if self._start is None:
            return 0
        return min(self._written, int((time.monotonic() - self._start) * OUT_RATE))

    def play_left_s(self) -> float:
        """Seconds until everything written so far has played (0 when idle)."""
        if self._start is None:
            return 0.0
        return max(0.0, self._start + self._written / OUT_RATE - time.monotonic())

    @property
    def first_sample_dac_time(self) -> float | None:
        return self._dac


class ForcedText:
    """The real transcriber's compute with the script's text as the result (random weights decode nonsense)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.finalize_ms: list[float] = []  # compute time of each final pass (to tell compute from queueing)

    def warmup(self) -> None:
        self.inner.warmup()

    def reset(self) -> None:
        self.inner.reset()

    def feed(self, audio: np.ndarray) -> str | None:
        return self.inner.feed(audio)

    def finalize(self) -> Any:
        from assistant.stt.types import Transcript

        t0 = time.perf_counter()
        t = self.inner.finalize()
        self.finalize_ms.append(1000.0 * (time.perf_counter() - t0))
        return Transcript(SENTENCE, t.language)


def build_engines(small: bool, folder: Path, cfg: Any, smart_turn: str = "") -> Any:
    """Every engine with random weights (runs on the compute thread: MLX state belongs to it); with `smart_turn`
    (a folder holding the real Smart Turn ONNX model) the end of turn is the daemon's model rule, else silence."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    from assistant.engines import Engines
    from assistant.llm import Chat
    from assistant.stt.mel import MelArgs, MelFrontEnd
    from assistant.stt.model import LoadedModel
    from assistant.stt.transcriber import OfflineTranscriber
    from assistant.stt.transducer import JointNetwork
    from assistant.stt.vocab import Vocabulary
    from assistant.tts.qwen3 import Qwen3TTS
    from assistant.tts.qwen3.engine import ad_hoc_voice
    from assistant.tts.qwen3.prompt import VoicePrompt
    from assistant.vad import Vad
    from benchmarks import llm as llm_bench
    from benchmarks import stt as stt_bench
    from tests.llm.tiny import build_tokenizer

    dtype = mx.float32 if small else mx.bfloat16  # MLX's CPU path has no fast bf16 matmul
    asr = stt_bench.build("parakeet", small, dtype)
    # stt.py draws every parameter N(0, 0.02²): a negative BatchNorm running variance makes NaN logits, and NaN
    # argmax decodes token 0 up to max_symbols times per frame. Variances of 1 keep the encoder finite.
    ones = [(k, mx.ones(v.shape, v.dtype)) for k, v in tree_flatten(asr.parameters()) if "running_var" in k]
    asr.update(tree_unflatten(ones))
    # Random logits are near-uniform: greedy TDT would emit a token on every step. A blank bias and a bias to the
    # longest duration make it skip 4 frames per step with no token (a real model adds ~4 LSTM steps per second).
    joint = next(m for _, m in asr.named_modules() if isinstance(m, JointNetwork))
    out = joint.joint_net[2]
    bias = np.zeros(out.bias.shape, np.float32)
    bias[asr.args.vocab_size] = bias[-1] = 1000.0  # random logits can be large: make it certain
    out.bias = out.bias + mx.array(bias).astype(out.bias.dtype)
    vocab = Vocabulary([f"▁w{i}" for i in range(asr.args.vocab_size)])
    lm = LoadedModel(asr, MelFrontEnd(MelArgs(features=128)), vocab, Path(), {})
    transcriber = ForcedText(OfflineTranscriber(lm, cfg.stt))
    model = llm_bench.random_quantized_model("small" if small else "e2b", 0, dtype)
    with tempfile.TemporaryDirectory() as d:
        build_tokenizer(Path(d), "gemma4")
        from mlx_lm.tokenizer_utils import load as load_tokenizer

        tokenizer = load_tokenizer(Path(d), eos_token_ids=[1])
    chat = Chat(model, tokenizer, cfg.llm)
    tts = Qwen3TTS.load(cfg.tts)
    voice = tts.use_voice(ad_hoc_voice("bench", VoicePrompt(language="english", speaker="vivian")))
    score = None
    if smart_turn:
        from assistant.endofturn import load_smart_turn

        turn = load_smart_turn(replace(cfg.endofturn, model=smart_turn))
        score = None if turn is None else turn.score
    return Engines(transcriber, chat, tts, voice, make_vad=Vad, score_turn=score)


def stats(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs, dtype=np.float64) / 1000.0  # ms -> s, as the other sections
    if not len(a):
        return {"median": float("nan"), "p90": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {
        "median": round(float(np.median(a)), 4),
        "p90": round(float(np.percentile(a, 90)), 4),
        "min": round(float(a.min()), 4),
        "max": round(float(a.max()), 4),
        "n": len(xs),
    }


SOAK_EARLY = 50  # the turn after which memory is taken as the baseline (caches and kernels are warm by then)


def resources() -> dict[str, int]:
    """Resident memory (Linux /proc), live threads and asyncio tasks, after a garbage collection."""
    import gc
    import threading

    gc.collect()
    pages = int(Path("/proc/self/statm").read_text().split()[1]) if Path("/proc/self/statm").exists() else 0
    return {
        "rss_bytes": pages * os.sysconf("SC_PAGE_SIZE"),
        "threads": threading.active_count(),
        "tasks": len(asyncio.all_tasks()),
    }


async def session(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    from assistant.compute import Compute
    from assistant.config import Config
    from assistant.conversation import Conversation
    from assistant.events import LatencyTrace

    cfg = Config().replace(
        {
            "pipeline.mode": "hands_free",
            "tts.model": str(folder),
            "tts.max_frames": args.max_frames,
            "tts.seed": 0,
            "llm.max_tokens": args.max_tokens,
            "llm.temperature": 0.0,
            # on a CPU every partial is a whole offline pass that delays the final one; the GPU run keeps them
            **({"stt.partial_interval_ms": 0} if args.small else {}),
        }
    )
    compute = Compute()
    t0 = time.perf_counter()
    engines = await compute.run(build_engines, args.small, folder, cfg, args.smart_turn)
    build_s = time.perf_counter() - t0
    source, sink = FileSource(read_wav(DATA)), TimestampSink()
    p = Conversation(cfg, engines, source, sink, compute=compute)
    sub = p.subscribe(100_000)
    runner = asyncio.create_task(p.run())
    traces: list[LatencyTrace] = []
    e2e: list[float] = []
    after_endpoint: list[float] = []  # from the endpoint decision (StateChanged to THINKING) to the first sample
    endpoints: list[float] = []  # every endpoint decision's time (monotonic, the sink's clock)
    decision: list[float] = []  # true end of speech -> that turn's endpoint decision
    soak: dict[str, dict[str, int]] = {}  # resident memory, threads and tasks after turn 50 and the last
    misses = 0
    try:
        # the first exchange warms every kernel (MLX compiles on first use): untimed
        while len(traces) < args.turns + 1:
            try:
                trace = await asyncio.wait_for(_next_trace(sub, endpoints), args.turn_timeout)
            except TimeoutError:
                misses += 1
                print(f"[v2v] turn {len(source.true_ends)} timed out", file=sys.stderr, flush=True)
                if misses > 3:
                    break
                source.next_turn.set()
                continue
            end = source.true_ends[-1]  # a new turn starts only after this answer (next_turn below)
            first = next((w for w in sink.writes if w > end), None)
            if len(traces) > 0 and first is not None:
                e2e.append(1000.0 * (first - end))
                decided = [t for t in endpoints if end <= t <= first]
                if decided:  # the last decision before the first sample (a reopened turn decides twice)
                    after_endpoint.append(1000.0 * (first - decided[-1]))
                    decision.append(1000.0 * (decided[-1] - end))
            traces.append(trace)
            print(f"[v2v] turn {len(traces) - 1}: {trace}", file=sys.stderr, flush=True)
            if len(traces) - 1 in (SOAK_EARLY, args.turns):
                soak[f"after_turn_{len(traces) - 1}"] = resources()
            # the next turn starts once the answer has played: speech over it would be a barge-in, not a turn
            await asyncio.sleep(sink.play_left_s() + 0.3)
            source.next_turn.set()
    finally:
        runner.cancel()
        await p.aclose()
        await asyncio.to_thread(compute.close, 2.0)
    timed = traces[1:]

    def col(name: str) -> list[float]:
        return [v for t in timed if (v := getattr(t, name)) is not None]

    return {
        "section": "v2v",
        "soak": soak,
        "setup": {
            "models": "small: STT d256x4 layers, Gemma 4 small, TTS hidden 256 + tiny codec"
            if args.small
            else "Parakeet TDT 0.6B + Gemma 4 E2B 4-bit + Qwen3-TTS 0.6B bf16",
            "turns timed": len(timed),
            "warm-up turns": 1,
            "timeouts": misses,
            "vad.hangover_ms": cfg.vad.hangover_ms,
            "end of turn": "Smart Turn v3.2 (endofturn.*)" if args.smart_turn else "fixed silence (vad.hangover_ms)",
            "speculative": cfg.pipeline.speculative,
            "tts first_chunk_frames": cfg.tts.first_chunk_frames,
            "stt.partial_interval_ms": cfg.stt.partial_interval_ms,
            "llm.max_tokens": args.max_tokens,
            "tts.max_frames": args.max_frames,
            "build_s": round(build_s, 1),
        },
        "latency": {
            "end to end: true end of speech -> first output sample": stats(e2e),
            "after the endpoint: end-of-turn decision -> first output sample": stats(after_endpoint),
            "end-of-turn decision (after true end of speech)": stats(decision),
            "VAD hangover (endpoint - VAD end of speech)": stats(col("vad_hangover_ms")),
            "STT final (after VAD end of speech)": stats(col("stt_final_ms")),
            "STT final pass compute alone (every pass after the first)": stats(engines.transcriber.finalize_ms[1:]),
            "LLM first token": stats(col("llm_first_token_ms")),
            "TTS first text": stats(col("tts_first_text_ms")),
            "TTS first audio": stats(col("tts_first_audio_ms")),
            "first sample played": stats(col("first_sample_played_ms")),
        },
    }


async def _next_trace(sub: Any, endpoints: list[float]) -> Any:
    """The next LatencyTrace of an answered turn (one that had a ResponseDone); appends to `endpoints` the time
    of every end-of-turn decision seen on the way (the core enters THINKING when it ends the user's turn)."""
    from assistant.events import LatencyTrace, ResponseDone, StateChanged, TurnState

    answered = False
    async for ev in sub:
        if isinstance(ev, StateChanged) and ev.new is TurnState.THINKING:
            endpoints.append(ev.time)
        elif isinstance(ev, ResponseDone):
            answered = True
        elif isinstance(ev, LatencyTrace) and answered:
            return ev
    raise RuntimeError("the event subscription closed")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="small widths (CPU)")
    ap.add_argument("--turns", type=int, default=20, help="timed turns (one more is run first to warm up)")
    ap.add_argument("--max-tokens", type=int, default=12, help="llm.max_tokens")
    ap.add_argument("--max-frames", type=int, default=12, help="tts.max_frames (80 ms each)")
    ap.add_argument("--turn-timeout", type=float, default=120.0, help="seconds before a turn counts as lost")
    ap.add_argument("--cache", default="/tmp/bench-checkpoints", help="folder of the TTS checkpoint")
    ap.add_argument("--smart-turn", default="", help="folder of smart-turn-v3.2-cpu.onnx: end of turn by the model")
    args = ap.parse_args(argv)
    from benchmarks.checkpoints import write_checkpoint

    if args.small:
        folder = Path(args.cache) / "v2v-tiny"
        write_checkpoint(folder, "0.6B", None, 2, 2, tiny_widths=True)
    else:
        folder = Path(args.cache) / "0.6B-bf16-L28x5-D1536"  # the one tts_vs wrote, when present
        write_checkpoint(folder, "0.6B", None, 28, 5)
    print(json.dumps(asyncio.run(session(args, folder))), flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # MLX used from the compute thread can abort at interpreter exit (ml-explore/mlx#3126)
