"""Voice to voice: the whole daemon headless, from the true end of the user's speech to the first output sample.

    PYTHONPATH=. python -m benchmarks.v2v [--small] [--turns 20] [--smart-turn DIR] [--set vad.early_silence_ms=100]

The real `Conversation` (VAD, speculative start, compute thread, reply pump) runs with random-weight engines: STT
Parakeet TDT (benchmarks/stt.py shapes), LLM Gemma 4 E2B text shapes, 4-bit (benchmarks/llm.py), TTS Qwen3-TTS
0.6B CustomVoice bf16 from an mlx-community-layout folder through `Qwen3TTS.load`; `--small` uses small widths so
a CPU finishes. A source plays benchmarks/data/turn.wav (espeak-ng, 2.2 s) in real time in 20 ms blocks, turn
after turn, with silence until the previous answer has played; a sink timestamps the first sample written after
each true end of speech and plays at 24 kHz in real time as Playback does (its pacer's lead before a run: the
traces' "first sample played" includes it; a gap is silence from running dry to playing again; stderr lists each
reply's writes with the audio still queued at each). Random weights say nothing meaningful: the STT's text
is replaced by the sentence of the WAV after its real compute (random weights often decode to blanks, which the
daemon would rightly leave unanswered); the LLM runs its real steps but answers REPLY_WORDS, a word a step (random
tokens often decode to nothing, so the TTS would wait for text a real model gives at once); tts.max_frames caps the
audio.
JSON on stdout: latency medians and p90 per stage (from the daemon's LatencyTrace events, which count from the
VAD's end of speech), end to end (from the true end of speech, measured by this script), and "after the endpoint,
per hop": from the end-of-turn decision to the first sample written, hop by hop from the compute thread's own job
log (`TimedCompute`), with how far the speculative reply had got at the decision and what the compute thread did
meanwhile (the reply's jobs, other jobs, idle = waits outside compute). stderr has the same per turn.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from assistant.audio.format import SILENT_DBFS, level_dbfs
from assistant.audio.playback import Pacer
from assistant.compute import Compute, Priority, Ticket
from assistant.llm import Chat

DATA = Path(__file__).resolve().parent / "data" / "turn.wav"
SENTENCE = "What will the weather be like tomorrow morning?"  # what turn.wav says
BLOCK = 320  # 20 ms at 16 kHz, the daemon's audio.block_ms
OUT_RATE = 24_000
T = TypeVar("T")


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
    """The speaker as assistant/audio/playback.Playback plays (less its 20 ms blocks and device latency), with the
    monotonic `clock` (a test drives its own): after flush() a run starts once the pacer's lead is queued (40 ms,
    audio.output_prebuffer_ms, at first; the Pacer measures it from the writes), or once writes paused that long
    (at least 100 ms); when the queue runs dry mid-reply, the next write is an underrun and a new run starts after
    the lead again. The silence from running dry to playing again is a gap the listener hears. `log` keeps each
    write: when it came, its samples and the audio still queued just before it."""

    def __init__(self, prebuffer_s: float = 0.04, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.pacer = Pacer(prebuffer_s)
        self.writes: list[float] = []
        self.log: list[tuple[float, int, float]] = []  # (time, samples, seconds queued just before it)
        self.last_sample_time: float | None = None  # no drain time known: the turn core goes by level_at
        self.underruns = 0
        self._gap_s = 0.0
        self._level = SILENT_DBFS  # of the latest write
        self.flush()

    def flush(self) -> None:
        self._lead = self.pacer.lead_s()
        self.pacer.new_run()
        self._written = 0  # samples written since flush
        self._base = 0  # samples played before the current stretch of playing
        self._start: float | None = None  # when the current stretch began playing (None: prebuffering)
        self._dac: float | None = None  # when the run's first sample played
        self._last_write: float | None = None
        self._dry_at: float | None = None  # when the queue ran dry mid-reply (the next write is an underrun)

    def _begin(self, t: float) -> None:
        self._start = t
        if self._dac is None:
            self._dac = t
        if self._dry_at is not None:
            self._gap_s += t - self._dry_at
            self._dry_at = None

    def _advance(self, now: float) -> None:
        """Bring the model up to `now`: a paused prebuffer starts playing, a playing queue runs dry."""
        queued = self._written - self._base
        if self._start is None and queued and self._last_write is not None:
            begin = self._last_write + max(self._lead, 0.1)  # Playback plays what it has once writes pause
            if begin <= now:
                self._begin(begin)
        if self._start is not None and self._start + (self._written - self._base) / OUT_RATE <= now:
            self._dry_at = self._start + (self._written - self._base) / OUT_RATE
            self._base, self._start = self._written, None

    def level_at(self, t: float) -> float:
        """The latest write's level while written audio still plays (no history: now stands for `t`)."""
        return self._level if self.play_left_s() > 0 else SILENT_DBFS

    def write(self, chunk: np.ndarray) -> None:
        now = self.clock()
        self._advance(now)
        self.writes.append(now)
        self.log.append((now, len(chunk), (self._written - self.played_samples) / OUT_RATE))
        self._level = level_dbfs(chunk)
        self.pacer.note(now, len(chunk) / OUT_RATE)
        if self._dry_at is not None:  # the reply's audio ran dry before this chunk came: the listener hears a gap
            self.underruns += 1
            self._lead = self.pacer.lead_s()  # as Playback: the lead is rebuilt first
        self._written += len(chunk)
        self._last_write = now
        if self._start is None and (self._written - self._base) / OUT_RATE >= self._lead:
            self._begin(now)

    @property
    def gap_s(self) -> float:
        """Silence inside replies so far: from running dry to playing again, summed."""
        self._advance(self.clock())
        return self._gap_s

    @property
    def played_samples(self) -> int:
        now = self.clock()
        self._advance(now)
        if self._start is None:
            return self._base
        return self._base + min(self._written - self._base, int((now - self._start) * OUT_RATE))

    def play_left_s(self, now: float | None = None) -> float:
        """Seconds until everything written so far has played (0 when idle)."""
        now = self.clock() if now is None else now
        self._advance(now)
        queued_s = (self._written - self._base) / OUT_RATE
        if self._start is not None:
            return max(0.0, self._start + queued_s - now)
        if queued_s and self._last_write is not None:  # prebuffering: it plays once the lead or the pause is there
            return max(0.0, self._last_write + max(self._lead, 0.1) - now) + queued_s
        return 0.0

    @property
    def first_sample_dac_time(self) -> float | None:
        self._advance(self.clock())
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


REPLY_WORDS = ("It", " will", " be", " sunny", " and", " mild", " tomorrow", " morning.")  # ~1 Gemma token each


def forced_reply(deltas: Iterator[str], tokens: Callable[[], int]) -> Iterator[str]:
    """The real generation's steps with a scripted answer: each decode step of the model (a step after which
    `tokens()`, the tokens sampled so far, has grown) yields the next word of REPLY_WORDS whatever text it
    decoded; a prefill step yields ""; after the script the answer ends. A real Gemma's streaming detokenizer
    gives ~1 word a token, but random weights often sample byte tokens that decode to "" (the H100 run of 09:24
    took 12 steps for 8 words, which put ~155 ms of empty steps between the first word and the TTS's first text)."""
    words = iter(REPLY_WORDS)
    seen = 0
    try:
        for _ in deltas:  # what the step decoded is replaced by the script
            if tokens() == seen:
                yield ""  # a prefill chunk, or a detokenizer tail with no token of its own
                continue
            seen = tokens()
            word = next(words, None)
            if word is None:
                return
            yield word
    finally:
        close = getattr(deltas, "close", None)
        if close is not None:
            close()


class ForcedChat(Chat):
    """The real chat (template, prompt cache, one forward a step) answering with REPLY_WORDS, a word a token."""

    def respond(self, user_text: str) -> Iterator[str]:
        return forced_reply(super().respond(user_text), lambda: self.stats.generated_tokens)


@dataclass(frozen=True)
class JobTime:
    """One compute-thread job: what ran (`name`), when it was queued, started and ended, and what it made."""

    name: str
    queued: float
    started: float
    ended: float
    priority: int
    made: str = ""  # "audio" (a TTS step with samples), "text" (an LLM step that pushed text), "token" (a delta)


class TimedCompute(Compute):
    """The daemon's compute thread, recording every job it runs (appended from the worker; list.append is atomic)."""

    def __init__(self, keep_cache: bool = False) -> None:
        super().__init__()
        self.jobs: list[JobTime] = []
        self.keep_cache = keep_cache  # a diagnostic: does allocating afresh after mx.clear_cache() cost latency?

    def clear_cache(self) -> concurrent.futures.Future[None]:
        if not self.keep_cache:
            return super().clear_cache()
        kept: concurrent.futures.Future[None] = concurrent.futures.Future()
        kept.set_result(None)
        return kept

    def submit(
        self, fn: Callable[..., T], *args: Any, priority: Priority = Priority.REPLY, ticket: Ticket | None = None
    ) -> concurrent.futures.Future[T]:
        queued, name = time.monotonic(), getattr(fn, "__qualname__", type(fn).__name__)

        def timed(*a: Any) -> T:
            started, out = time.monotonic(), None
            try:
                out = fn(*a)
                return out
            finally:
                self.jobs.append(JobTime(name, queued, started, time.monotonic(), int(priority), _made(name, out)))

        return super().submit(timed, *args, priority=priority, ticket=ticket)


def _made(name: str, out: Any) -> str:
    if name.endswith(".step") and out is not None and len(out):
        return "audio"
    if name in ("llm_step", "push_delta") and isinstance(out, tuple):
        return "text" if out[2] else "token" if out[1] else ""
    return ""


def build_engines(small: bool, folder: Path, cfg: Any, smart_turn: str = "") -> Any:
    """Every engine with random weights (runs on the compute thread: MLX state belongs to it); with `smart_turn`
    (a folder holding the real Smart Turn ONNX model) the end of turn is the daemon's model rule, else silence."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    from assistant.engines import Engines
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
    chat = ForcedChat(model, tokenizer, cfg.llm)
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


HOPS = (  # after the endpoint, in order; a stage done before the endpoint takes 0
    "endpoint -> STT final",
    "STT final -> LLM first token",
    "LLM first token -> TTS first text",
    "TTS first text -> TTS first chunk",
    "TTS first chunk -> first sample written",
)
REPLY_JOBS = ("start_answer", "llm_step", "push_delta", "end_speech", "token_counts")  # and the TTS's start, step
STAGES = ("nothing", "STT final", "LLM first token", "TTS first text", "TTS first chunk")


def _is_reply_job(j: JobTime) -> bool:
    return j.name in REPLY_JOBS or j.name.endswith((".step", "TTS.start"))


def breakdown(endpoint: float, write: float, spec: float | None, jobs: list[JobTime]) -> dict[str, Any] | None:
    """Where the time from the end-of-turn decision (`endpoint`) to the first sample `write` went, from the
    compute thread's jobs: the milestones of the reply that made that sample (the last one started before it),
    each hop clipped at the endpoint; the speculation's lead (`spec`: when it started); what the compute thread
    did meanwhile (the reply's jobs, other jobs such as transcriber feeds, idle: waits outside compute)."""
    starts = [j for j in jobs if j.name == "start_answer" and j.started <= write]
    if not starts:
        return None
    start = starts[-1]
    finals = [j.ended for j in jobs if j.name.endswith("finalize") and j.ended <= start.started]
    ours = [j for j in jobs if j.started >= start.started and j.ended <= write]
    token = next((j.ended for j in ours if j.made in ("token", "text")), None)
    text = next((j.ended for j in ours if j.made == "text"), None)
    chunk = next((j.ended for j in ours if j.made == "audio"), None)
    marks = [finals[-1] if finals else None, token, text, chunk, write]
    if any(m is None for m in marks):
        return None
    out: dict[str, Any] = {}
    at = endpoint
    for hop, mark in zip(HOPS, marks, strict=True):
        nxt = max(at, mark)  # type: ignore[type-var]
        out[hop] = 1000.0 * (nxt - at)
        at = nxt
    done = [m for m in marks[:-1] if m is not None and m <= endpoint]
    out["stage"] = STAGES[len(done)]  # how far the (speculative) reply had got at the endpoint
    out["speculation lead"] = None if spec is None else 1000.0 * (endpoint - spec)
    out["reply starts"] = len([j for j in starts if spec is not None and j.started >= spec])

    def busy(js: list[JobTime]) -> float:
        return 1000.0 * sum(max(0.0, min(j.ended, write) - max(j.started, endpoint)) for j in js)

    window = [j for j in jobs if j.ended > endpoint and j.started < write]
    out["compute: reply jobs"] = busy([j for j in window if _is_reply_job(j)])
    out["compute: other jobs"] = busy([j for j in window if not _is_reply_job(j)])
    out["compute: idle"] = 1000.0 * (write - endpoint) - out["compute: reply jobs"] - out["compute: other jobs"]
    out["queue wait of reply jobs"] = 1000.0 * sum(
        max(0.0, j.started - max(j.queued, endpoint)) for j in window if _is_reply_job(j) and j.started > endpoint
    )
    return out


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
    from assistant.config import Config, parse_override
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
            **dict(parse_override(o) for o in args.set),
        }
    )
    compute = TimedCompute(args.keep_mlx_cache)
    t0 = time.perf_counter()
    engines = await compute.run(build_engines, args.small, folder, cfg, args.smart_turn)
    build_s = time.perf_counter() - t0
    source, sink = FileSource(read_wav(DATA)), TimestampSink(cfg.audio.output_prebuffer_ms / 1000)
    p = Conversation(cfg, engines, source, sink, compute=compute)
    t0 = time.perf_counter()
    await p.warmup()  # as the daemon does before it listens: every engine compiles its shapes
    warmup_s = time.perf_counter() - t0
    sub = p.subscribe(100_000)
    runner = asyncio.create_task(p.run())
    traces: list[LatencyTrace] = []
    e2e: list[float] = []
    after_endpoint: list[float] = []  # from the endpoint decision (StateChanged to THINKING) to the first sample
    endpoints: list[float] = []  # every endpoint decision's time (monotonic, the sink's clock)
    decision: list[float] = []  # true end of speech -> that turn's endpoint decision
    specs: list[float] = []  # every speculation's start (SpeculationStarted)
    hops: list[dict[str, Any]] = []  # per timed turn: `breakdown` after the endpoint
    gaps: list[float] = []  # per timed turn: ms of silence inside its reply (the sink ran dry)
    gap_mark, log_mark = 0.0, 0
    soak: dict[str, dict[str, int]] = {}  # resident memory, threads and tasks after turn 50 and the last
    misses = 0
    try:
        # the first exchange warms what warmup() may not (Smart Turn): kept out of the statistics, reported alone
        while len(traces) < args.turns + 1:
            try:
                trace = await asyncio.wait_for(_next_trace(sub, endpoints, specs), args.turn_timeout)
            except TimeoutError:
                misses += 1
                print(f"[v2v] turn {len(source.true_ends)} timed out", file=sys.stderr, flush=True)
                if misses > 3:
                    break
                source.next_turn.set()
                continue
            if len(traces) > 0:  # the trace comes once the reply has played: its gaps are all in
                gaps.append(1000.0 * (sink.gap_s - gap_mark))
            gap_mark = sink.gap_s
            # each write of the reply: ms after its first, 80 ms frames, ms of audio still queued just before it
            shown = [
                (round(1000 * (t - sink.log[log_mark][0])), n // 1920, round(1000 * q))
                for t, n, q in sink.log[log_mark:]
            ]
            log_mark = len(sink.log)
            print(f"[v2v] writes (ms, frames, queued ms): {shown}", file=sys.stderr, flush=True)
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
        if args.job_log:
            write_job_log(Path(args.job_log), compute.jobs, endpoints, specs, source.true_ends, sink.writes)
    timed = traces[1:]
    first_turn: dict[str, float] = {}  # the daemon's first answer after warmup(): a compile there is an outlier
    for end, decided, first in answered(source.true_ends, endpoints, sink.writes):
        if end == source.true_ends[0]:
            first_turn = {"end to end ms": round(1000.0 * (first - end), 1)}
            first_turn["after the endpoint ms"] = round(1000.0 * (first - decided), 1)
            continue  # the warm-up turn: reported on its own, not in the timed turns' statistics
        e2e.append(1000.0 * (first - end))
        after_endpoint.append(1000.0 * (first - decided))
        decision.append(1000.0 * (decided - end))
        spec = next((t for t in reversed(specs) if end - 1.0 <= t <= decided), None)
        hop = breakdown(decided, first, spec, compute.jobs)
        if hop is not None:
            hops.append(hop)
            shown = {k: round(v, 1) if isinstance(v, float) else v for k, v in hop.items()}
            print(f"[v2v] after the endpoint: {shown}", file=sys.stderr, flush=True)

    def col(name: str) -> list[float]:
        return [v for t in timed if (v := getattr(t, name)) is not None]

    def hop_col(name: str) -> list[float]:
        return [v for h in hops if (v := h[name]) is not None]

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
            "vad.early_silence_ms (speculation start)": cfg.vad.early_silence_ms,
            "endofturn.score_after_ms": cfg.endofturn.score_after_ms,
            "overrides": args.set,
            "mx.clear_cache() after each reply": not args.keep_mlx_cache,
            "build_s": round(build_s, 1),
            "warmup_s": round(warmup_s, 1),
        },
        "first turn after start-up (not in the statistics below)": first_turn,
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
        "after the endpoint, per hop": {
            **{hop: stats(hop_col(hop)) for hop in HOPS},
            "speculation lead (speculation start -> endpoint)": stats(hop_col("speculation lead")),
            "compute thread: the reply's jobs": stats(hop_col("compute: reply jobs")),
            "compute thread: other jobs (transcriber feeds, finals)": stats(hop_col("compute: other jobs")),
            "compute thread: idle (waits outside compute)": stats(hop_col("compute: idle")),
            "queue wait of the reply's jobs": stats(hop_col("queue wait of reply jobs")),
            "turns with a playback gap (the sink ran dry mid-reply)": sum(
                t.extra.get("playback_underruns", 0.0) > 0 for t in timed
            ),
            "playback gaps: ms of silence inside a reply": stats(gaps),
            "stage reached at the endpoint (turns)": {s: sum(h["stage"] == s for h in hops) for s in STAGES},
            "turns whose reply started more than once": sum(h["reply starts"] > 1 for h in hops),
        },
    }


def answered(ends: list[float], endpoints: list[float], writes: list[float]) -> list[tuple[float, float, float]]:
    """(true end of speech, end-of-turn decision, first sample written) per answered turn, oldest first. Each
    decision is paired with the last true end before it and the first sample written after it, so a turn answered
    late (after a timeout, while the source has spoken again) still gets its own times; a turn decided twice (a
    reopened turn) counts its last decision before that sample."""
    turns: dict[float, tuple[float, float, float]] = {}
    for decided in sorted(endpoints):
        first = next((w for w in writes if w > decided), None)
        end = max((e for e in ends if e <= decided), default=None)
        if first is not None and end is not None:
            turns[first] = (end, decided, first)
    return sorted(turns.values())


def write_job_log(
    path: Path, jobs: list[JobTime], endpoints: list[float], specs: list[float], ends: list[float], writes: list[float]
) -> None:
    """Every compute job and every milestone as JSON lines (monotonic seconds), to follow one turn job by job."""
    with path.open("w") as f:
        for name, times in (("true end", ends), ("speculation", specs), ("endpoint", endpoints), ("write", writes)):
            f.writelines(json.dumps({"mark": name, "t": t}) + "\n" for t in times)
        f.writelines(json.dumps(asdict(j)) + "\n" for j in jobs)


async def _next_trace(sub: Any, endpoints: list[float], specs: list[float]) -> Any:
    """The LatencyTrace of the next answered turn (the core publishes it just before that turn's ResponseDone);
    appends to `endpoints` the time of every end-of-turn decision seen on the way (the core enters THINKING when
    it ends the user's turn), and to `specs` every speculation's start."""
    from assistant.events import LatencyTrace, ResponseDone, SpeculationStarted, StateChanged, TurnState

    trace: LatencyTrace | None = None
    async for ev in sub:
        if isinstance(ev, StateChanged) and ev.new is TurnState.THINKING:
            endpoints.append(ev.time)
        elif isinstance(ev, SpeculationStarted):
            specs.append(ev.time)
        elif isinstance(ev, LatencyTrace):
            trace = ev
        elif isinstance(ev, ResponseDone) and trace is not None and trace.turn == ev.turn:
            return trace
    raise RuntimeError("the event subscription closed")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="small widths (CPU)")
    ap.add_argument("--turns", type=int, default=20, help="timed turns (one more is run first to warm up)")
    ap.add_argument("--max-tokens", type=int, default=12, help="llm.max_tokens")
    ap.add_argument("--max-frames", type=int, default=12, help="tts.max_frames (80 ms each)")
    ap.add_argument("--turn-timeout", type=float, default=120.0, help="seconds before a turn counts as lost")
    ap.add_argument("--cache", default="/tmp/bench-checkpoints", help="folder of the TTS checkpoint")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override (repeatable)")
    ap.add_argument(
        "--keep-mlx-cache",
        action="store_true",
        help="diagnostic: skip the daemon's mx.clear_cache() after each reply (the next turn then reuses buffers)",
    )
    ap.add_argument("--job-log", default="", help="write every compute job and milestone here (JSON lines)")
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
