"""The end-of-turn clip set: espeak-ng sentences, complete or with a thinking pause, generated at test time.

Only the labels and this generator are committed. Each sentence marks with "|" where a speaker might stop to
think; from it come four clips:
- complete: the sentence as one phrase;             the end of speech is a "complete" pause point
- pause600 / pause900: the sentence with a 600 / 900 ms silent pause at "|" (espeak-ng SSML <break>);
                       the pause is an "incomplete" point (the same sentence cut before its end), the end "complete"
- filler900: "..., um," then 900 ms of silence at "|";  likewise
Every clip ends in 2.5 s of silence. A policy handles a pause point right when it ends the turn within 1 s of
the end of a complete turn, and does not end it during an incomplete pause.

`Smart Turn` scores the speech of the current segment (from the onset after the last pause the policy waited
through, with PREROLL of silence before it) plus SCORE_AFTER of trailing silence: the core sends the same.
"""

from __future__ import annotations

import functools
import io
import os
import subprocess
import sys
import tempfile
import wave
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from assistant.audio.format import CAPTURE_RATE, float32_to_int16, int16_to_float32, resample
from assistant.endofturn import SMART_TURN_FILE, EndOfTurnPolicy, TurnEvidence

SENTENCES = (
    "What time is it in | London?",
    "Turn on the lights in the | kitchen.",
    "Can you tell me the weather for | tomorrow?",
    "I need a taxi to the | airport.",
    "How far away is the | moon?",
    "Please set a timer for | ten minutes.",
    "What is the capital of | France?",
    "Remind me to call my | mother tonight.",
    "I would like to order a pizza with | extra cheese.",
    "Play some music by | the Beatles.",
    "Send a message to | my sister.",
    "How do I get to the | train station?",
    "Add milk and eggs to | the shopping list.",
    "What is the population of | Japan?",
    "Wake me up at | seven tomorrow.",
    "Who wrote the book | Pride and Prejudice?",
    "Book a table for two at | eight tonight.",
    "Translate good morning into | Spanish.",
    "How many days are there in | February?",
    "Tell me a joke about | cats.",
)
KINDS = {"complete": None, "pause600": "<break time='600ms'/>", "pause900": "<break time='900ms'/>"}
KINDS["filler900"] = ", um, <break time='900ms'/>"
VOICE, WPM = "en-us", 160
TAIL_S = 2.5
FRAME_MS = 30  # the VAD's frame: silence grows in these steps
SPEECH_DBFS = -45.0  # espeak-ng's output is clean: a 10 ms window louder than this is speech
PREROLL = CAPTURE_RATE * 200 // 1000  # silence kept before a segment's onset, as the VAD's preroll does
COMPLETE_WITHIN_MS = 1000  # a complete turn that ends later than this after the speech counts as missed


@dataclass(frozen=True)
class PausePoint:
    """A moment in a clip where the speaker stops: should the turn end there?"""

    at: int  # sample where the silence starts
    pause_ms: int | None  # how long the speaker stays silent; None: the turn is over
    segment_start: int  # first sample of the audio the model is given (the current segment with preroll)
    partial_text: str  # the words spoken so far (a perfect streaming transcript)

    @property
    def complete(self) -> bool:
        return self.pause_ms is None


@dataclass(frozen=True)
class Clip:
    name: str
    kind: str
    audio: np.ndarray  # int16 mono 16 kHz
    points: tuple[PausePoint, ...]


def espeak_ssml(text: str) -> np.ndarray:
    """`text` (SSML body) spoken by espeak-ng, int16 mono at 16 kHz."""
    wav = subprocess.run(
        ["espeak-ng", "-m", "-v", VOICE, "-s", str(WPM), "--stdout", f"<speak>{text}</speak>"],
        capture_output=True,
        check=True,
    ).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return float32_to_int16(resample(int16_to_float32(x), rate, CAPTURE_RATE))


def _loud_windows(x: np.ndarray, window: int = 160) -> np.ndarray:
    n = len(x) // window
    rms = np.sqrt(np.mean(np.square(x[: n * window].astype(np.float64).reshape(n, window) / 32768.0), axis=1))
    return np.flatnonzero(20 * np.log10(rms + 1e-12) > SPEECH_DBFS) * window


def make_clip(sentence: str, kind: str) -> Clip:
    """One clip of `sentence` (with its "|") of `kind` (a key of KINDS), with its pause points located in the
    audio: the silent gap longer than 400 ms at "|" and the end of speech."""
    head, tail = (s.strip() for s in sentence.split("|"))
    brk = KINDS[kind]
    text = f"{head} {tail}" if brk is None else f"{head}{brk} {tail}"
    speech = espeak_ssml(text)
    loud = _loud_windows(speech)
    start, end = int(loud[0]), int(loud[-1]) + 160
    audio = np.concatenate([speech[start:end], np.zeros(round(TAIL_S * CAPTURE_RATE), np.int16)])
    loud = loud - start
    points = []
    seg = 0
    if brk is not None:
        gaps = np.flatnonzero(np.diff(loud) > CAPTURE_RATE * 400 // 1000)
        if len(gaps) != 1:
            raise RuntimeError(f"{kind} clip of {sentence!r}: expected one long pause, found {len(gaps)}")
        pause_at, resume = int(loud[gaps[0]]) + 160, int(loud[gaps[0] + 1])
        said = head + (", um," if "um" in brk else "")
        points.append(PausePoint(pause_at, (resume - pause_at) * 1000 // CAPTURE_RATE, 0, said))
        seg = max(0, resume - PREROLL)
    points.append(PausePoint(end - start, None, seg, f"{head} {tail}"))
    return Clip(f"{kind}: {sentence}", kind, audio, tuple(points))


@functools.cache
def clip_set() -> tuple[Clip, ...]:
    """Every sentence in every kind: 80 clips, 140 pause points."""
    return tuple(make_clip(s, k) for s in SENTENCES for k in KINDS)


def model_audio(clip: Clip, point: PausePoint, silence_ms: int) -> np.ndarray:
    """What the model is given at `point` after `silence_ms` of silence: the segment so far."""
    return clip.audio[point.segment_start : point.at + CAPTURE_RATE * silence_ms // 1000]


def end_after_ms(
    policy: EndOfTurnPolicy, clip: Clip, point: PausePoint, score: Callable[[np.ndarray], float], limit_ms: int = 5000
) -> int | None:
    """The silence (ms, in VAD frames) after which `policy` ends the turn at `point`; None when it does not end
    it within the pause (or within `limit_ms` at the end of a turn). The model is asked once, at score_after_ms."""
    pause = point.pause_ms if point.pause_ms is not None else limit_ms
    speech_ms = (point.at - point.segment_start) * 1000 // CAPTURE_RATE
    value: float | None = None
    silence = 0
    while silence <= pause:
        after = policy.score_after_ms
        if value is None and after is not None and silence >= after:
            value = score(model_audio(clip, point, after))
        if policy.decide(TurnEvidence(silence, speech_ms, value, point.partial_text)) == "end":
            return silence
        silence += FRAME_MS
    return None


def handled_right(point: PausePoint, ended_at: int | None) -> bool:
    """A complete turn must end within COMPLETE_WITHIN_MS; an incomplete pause must not end the turn."""
    if point.complete:
        return ended_at is not None and ended_at <= COMPLETE_WITHIN_MS
    return ended_at is None


PIPECAT_WHEEL = "pipecat-ai==1.14.0"  # ships the same Smart Turn v3.2 export that `assistant pull` fetches
WHEEL_MEMBER = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
MODELS = Path(os.environ.get("ASSISTANT_TEST_MODELS", Path(__file__).parent / ".models"))


def smart_turn_file() -> Path:
    """The real Smart Turn v3.2 weights, from the pipecat-ai wheel on PyPI, cached in tests/.models/ (or
    $ASSISTANT_TEST_MODELS). Raises RuntimeError naming the fix when it cannot be fetched."""
    target = MODELS / SMART_TURN_FILE
    if target.is_file():
        return target
    MODELS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, PIPECAT_WHEEL],
            capture_output=True,
            text=True,
        )
        wheels = list(Path(tmp).glob("pipecat_ai-*.whl"))
        if got.returncode != 0 or not wheels:
            raise RuntimeError(
                f"cannot fetch the Smart Turn model: `pip download --no-deps {PIPECAT_WHEEL}` failed "
                f"({got.stderr.strip()[-300:]}); fix the network or put {SMART_TURN_FILE} into {MODELS}"
            )
        with zipfile.ZipFile(wheels[0]) as whl:
            part = target.with_suffix(f".{os.getpid()}.part")  # parallel test workers may fetch it at once
            part.write_bytes(whl.read(WHEEL_MEMBER))
            part.rename(target)
    return target
