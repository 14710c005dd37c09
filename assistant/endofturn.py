"""When is a turn over: the evidence at a pause, the policies that weigh it, the `Endpointer` that applies one to a
turn's pauses, the barge-in rule (when the user's speech takes the turn from a reply), and the Smart Turn model.

All pure but the model: the turn core feeds its `Endpointer` the VAD events of the open turn and asks it whether to
score and whether the turn is over; a model's score arrives as a plain value (the driver runs the model), so a
smarter detector is a second policy, not an edit of the core.

`SmartTurn` runs Smart Turn v3.2 (pipecat-ai/smart-turn-v3, BSD-2): a Whisper-encoder classifier over the last
<= 8 s of the turn's audio that gives P(the speaker has finished). It runs on onnxruntime (the int8 QDQ CPU export),
one decision in tens of milliseconds on one core, so it never touches the compute thread that owns MLX.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from assistant import hub
from assistant.audio.format import CAPTURE_RATE
from assistant.audio.ring import AudioRing
from assistant.config import EndOfTurnConfig, VadConfig
from assistant.errors import InputError, ModelError
from assistant.events import PauseStarted, SilenceStarted, SpeechEnded, SpeechResumed, SpeechStarted, VadEvent

Decision = Literal["end", "wait"]


@dataclass(frozen=True)
class TurnEvidence:
    """What is known about the user's turn at one moment of a pause."""

    silence_ms: int  # silence since the last voiced frame, measured in capture time
    speech_ms: int  # voiced audio in the turn so far
    score: float | None  # P(turn complete) from an end-of-turn model for this pause; None until it arrives
    partial_text: str  # the latest partial transcript, "" when there is none
    # The user could take an early end back (speak on within endofturn.resume_ms, heard over the reply). False while
    # the echo canceller has not learned the room: AEC3 then turns a user talking over the reply down to nothing.
    room_known: bool = True


class EndOfTurnPolicy(Protocol):
    """Decides at a pause whether the user has finished."""

    @property
    def score_after_ms(self) -> int | None: ...  # silence after which the core asks for a model score; None: never

    def decide(self, ev: TurnEvidence) -> Decision: ...


@dataclass(frozen=True)
class FixedSilence:
    """The classic endpoint: the turn ends after `hangover_ms` of silence, whatever was said."""

    hangover_ms: int
    score_after_ms: int | None = None

    def decide(self, ev: TurnEvidence) -> Decision:
        return "end" if ev.silence_ms >= self.hangover_ms else "wait"


# Words after which nobody ends a turn: conjunctions, prepositions, articles and hesitations.
TRAILING_FILLERS = frozenset(
    "and or but so because um umm uh uhh er erm hmm like the a an of to in on at for with from my your "
    "if then than that which who when where while about into by our their his".split()
)
_WORD = re.compile(r"[a-z']+")


def ends_mid_phrase(partial_text: str, fillers: frozenset[str] = TRAILING_FILLERS) -> bool:
    """Whether the transcript so far ends on a word that promises more (see TRAILING_FILLERS)."""
    words = _WORD.findall(partial_text.lower())
    return bool(words) and words[-1] in fillers


def bare_word(word: str) -> str:
    """A word as a backchannel list holds it: lower case, no surrounding punctuation."""
    return word.strip(".,!?;:\"'()").lower()


def turn_words(text: str, backchannels: frozenset[str]) -> int:
    """Words of `text` that count towards taking the turn: the listener's `backchannels` ("mm-hm", "yeah", as
    bare words) do not."""
    return sum(1 for w in text.split() if bare_word(w) not in backchannels)


@dataclass(frozen=True)
class BargeInRule:
    """When the user's speech over a reply takes the turn from it: never (not `enabled`: the reply goes on and the
    speech is answered once it is over), at the VAD's start (`min_words` 0 and no backchannels), or once its
    transcript holds `min_words` (at least one) words that are not the listener's `backchannels` ("mm-hm")."""

    enabled: bool = True
    min_words: int = 0
    backchannels: frozenset[str] = frozenset()  # bare words (see bare_word)

    @property
    def at_start(self) -> bool:
        """The VAD's start alone interrupts the reply: there are no words to wait for."""
        return self.enabled and self.min_words == 0 and not self.backchannels

    def words(self, text: str) -> int:
        return turn_words(text, self.backchannels)

    def takes_turn(self, text: str) -> bool:
        """Whether speech over the reply whose transcript (partial or final) is `text` interrupts it now."""
        return self.enabled and self.words(text) >= max(1, self.min_words)


@dataclass(frozen=True)
class SmartTurnPolicy:
    """The end-of-turn model's policy: weigh a score of the speech plus `score_after_ms` of silence once that
    silence is heard, end the turn when the score reaches `threshold` (unless the partial transcript ends on a
    filler), else wait, up to `max_wait_ms`. The core asks for the score then, or earlier where the VAD gives
    notice of the pause (PauseStarted, endofturn.ask_after_ms) with the silence not yet heard as zeros.
    Where an early end could not be taken back (`TurnEvidence.room_known` False: the first reply in a room the echo
    canceller has not heard yet), no pause shorter than `room_unknown_wait_ms` ends the turn: as long as the user
    could have taken it back (endofturn.resume_ms), so a thinking pause there is never answered on its own."""

    threshold: float = 0.5
    score_after_ms: int | None = 150  # 5 VAD frames: as accurate as 120 or 180, longer than gaps inside words
    max_wait_ms: int = 2000  # a pause this long ends the turn whatever the model said
    fillers: frozenset[str] = TRAILING_FILLERS
    room_unknown_wait_ms: int = 0

    def decide(self, ev: TurnEvidence) -> Decision:
        if ev.silence_ms >= self.max_wait_ms:
            return "end"
        if not ev.room_known and ev.silence_ms < self.room_unknown_wait_ms:
            return "wait"
        if ev.score is None or ends_mid_phrase(ev.partial_text, self.fillers):
            return "wait"
        return "end" if ev.score >= self.threshold else "wait"


# Realtime semantic_vad eagerness -> Smart Turn's threshold and longest wait. OpenAI's low/medium/high wait at most
# 8/4/2 s and auto is medium; a higher threshold asks the model to be surer the user has finished.
EAGERNESS: dict[str, tuple[float, int]] = {
    "low": (0.7, 8000),
    "medium": (0.5, 4000),
    "auto": (0.5, 4000),
    "high": (0.3, 2000),
}


def eagerness_policy(eagerness: str, base: SmartTurnPolicy | None = None) -> SmartTurnPolicy:
    """The Smart Turn policy for a Realtime `semantic_vad` eagerness (a key of EAGERNESS), else InputError."""
    if eagerness not in EAGERNESS:
        raise InputError(f"eagerness {eagerness!r} is not one of {', '.join(EAGERNESS)}")
    threshold, max_wait_ms = EAGERNESS[eagerness]
    return dataclasses.replace(base or SmartTurnPolicy(), threshold=threshold, max_wait_ms=max_wait_ms)


# ---- the model ----------------------------------------------------------------------------------------------

SMART_TURN_REPO = "pipecat-ai/smart-turn-v3"
SMART_TURN_FILE = "smart-turn-v3.2-cpu.onnx"  # int8 QDQ export, ~8.7 MB
WINDOW_SAMPLES = 8 * CAPTURE_RATE  # 128000: the model sees the last 8 s, zero-padded in front when shorter
N_FFT = 400  # 25 ms Whisper analysis window at 16 kHz
HOP = 160  # 10 ms hop: 800 frames in 8 s
N_MELS = 80
FRAMES = WINDOW_SAMPLES // HOP  # 800
_LOG_FLOOR = 1e-10
_NORM_EPS = 1e-7


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, Whisper's): linear to 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(hz >= 1000.0, log_part, hz * 3.0 / 200.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((mel - 15.0) * (np.log(6.4) / 27.0)), mel * 200.0 / 3.0)


def mel_filters(n_mels: int = N_MELS, n_fft: int = N_FFT, rate: int = CAPTURE_RATE) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters evenly spaced in Slaney mels over 0..rate/2, each scaled to
    unit area (Slaney normalisation), as Whisper's feature extractor builds them."""
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(rate / 2)), n_mels + 2))
    bins = np.linspace(0.0, rate / 2, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    tri = np.maximum(0.0, np.minimum(rising, falling))
    out: np.ndarray = tri * (2.0 / (upper - lower))
    return out


_FILTERS = mel_filters()
_HANN = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann, as torch.hann_window
# The filters' nonzero weights (391 of 80 x 201), row by row: applied with a gather and a segment sum instead of a
# BLAS matrix product, whose OpenBLAS thread pool made each decision wait for a second core (14 ms -> 2 ms of
# features on the loaded 2-core test machine; the decision 115 -> 50 ms wall)
_ROWS, _BINS = np.nonzero(_FILTERS)
_WEIGHTS = _FILTERS[_ROWS, _BINS]
_ROW_STARTS = np.flatnonzero(np.r_[True, np.diff(_ROWS) != 0])  # every row has weights (mel_filters' triangles)


def _mel_energies(power: np.ndarray) -> np.ndarray:
    """(N_MELS, frames) = _FILTERS @ power.T for (frames, N_FFT // 2 + 1) power spectra, without BLAS."""
    out: np.ndarray = np.add.reduceat(power[:, _BINS] * _WEIGHTS, _ROW_STARTS, axis=1).T
    return out


def log_mel(window: np.ndarray) -> np.ndarray:
    """Whisper-style features of exactly WINDOW_SAMPLES float samples: (N_MELS, FRAMES) float32.

    The window is normalised to zero mean and unit variance first (padding included), then a centred STFT
    (reflect padding) gives power spectra; log10 mel energies are clamped to 8 decades below the peak and
    mapped by (x + 4) / 4, so speech lies roughly in [-1, 1].
    """
    x = np.asarray(window, dtype=np.float32)
    x = (x - x.mean()) / np.sqrt(x.var() + _NORM_EPS)
    padded = np.pad(x.astype(np.float64), N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:FRAMES]  # the last (801st) is dropped
    # a turn shorter than the window is zero-padded in front: every frame wholly inside that constant stretch has
    # the same spectrum, so it is computed once (most of the window for a short turn: ~60% of the CPU time)
    varies = np.flatnonzero(padded != padded[0])
    same = min(FRAMES, (int(varies[0]) - N_FFT) // HOP + 1) if len(varies) else FRAMES
    first = max(same - 1, 0)
    power = np.abs(np.fft.rfft(frames[first:] * _HANN, axis=-1)) ** 2
    mel = np.log10(np.maximum(_mel_energies(power), _LOG_FLOOR))
    mel = np.concatenate([np.repeat(mel[:, :1], first, axis=1), mel], axis=1)
    mel = np.maximum(mel, mel.max() - 8.0)
    out: np.ndarray = ((mel + 4.0) / 4.0).astype(np.float32)
    return out


def model_input(audio: np.ndarray) -> np.ndarray:
    """The model's (1, N_MELS, FRAMES) input for int16 16 kHz mono audio: its last 8 s, zeros in front."""
    if not isinstance(audio, np.ndarray) or audio.ndim != 1 or audio.dtype != np.int16:
        what = f"{audio.dtype} {audio.shape}" if isinstance(audio, np.ndarray) else type(audio).__name__
        raise InputError(f"SmartTurn.score expects 1-D int16 audio at {CAPTURE_RATE} Hz, got {what}")
    tail = audio[-WINDOW_SAMPLES:].astype(np.float32) / 32768.0
    window = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
    window[WINDOW_SAMPLES - len(tail) :] = tail
    return log_mel(window)[None]


SCORE_LEAD_IN = CAPTURE_RATE // 5  # 200 ms before the scored segment's onset: the model hears it begin


def scored_clip(ring: AudioRing, start: int, segment: int | None, pause: int, after_ms: int) -> np.ndarray:
    """What the model scores for the pause that began at `pause` in a turn from `start`: the speech and the pause's
    first `after_ms` (as trained, and as the clip benchmark gives it; cut at the pause's start it hears an abrupt
    stop and scores complete turns low), silence not yet heard as zeros. The speech is the current segment (from
    the onset `segment` after the last pause the policy waited through, less a lead-in; else the turn start)."""
    end = pause + after_ms * CAPTURE_RATE // 1000
    if segment is not None:
        start = max(start, segment - SCORE_LEAD_IN)
    audio = ring.slice(max(start, end - WINDOW_SAMPLES, ring.start), min(ring.end, end))
    return np.concatenate([audio, np.zeros(max(0, end - ring.end), dtype=np.int16)])


class Endpointer:
    """The end-of-turn strategy at work in one turn core: it follows the pauses of the user's turn in progress
    (positions on the capture clock) and answers the core's two questions, whether to ask the model for a score
    and of which clip (`ask`), and whether the turn is over (`ends`); the model's answer comes back to `scored`.

    Under a silence-only policy (`judges` False) it never asks and never ends a turn: the VAD's hangover is that
    silence. A smarter detector is a second `EndOfTurnPolicy`: neither this class nor the core changes for it."""

    def __init__(self, policy: EndOfTurnPolicy) -> None:
        self.policy = policy
        self.start = 0  # the turn's first sample
        self.silence_at: int | None = None  # where the current pause began
        self.segment: int | None = None  # onset of the speech after the last pause waited through (None: the start)
        self.noticed: int | None = None  # a pause the VAD gave early notice of (PauseStarted), not yet asked about
        self.score: float | None = None
        self.asking = 0  # the score request in flight for this pause (0: none)
        self.scored_pause: int | None = None  # the pause (its first silent sample) that score / asking are for
        self.room_known = True  # the latest audio's TurnEvidence.room_known
        self._requests = 0

    @property
    def judges(self) -> bool:
        """Whether the policy weighs each pause itself (with a model's score) rather than leave it to the VAD."""
        return self.policy.score_after_ms is not None

    def news(self, ev: VadEvent) -> bool:
        """Whether clients hear of this VAD event inside the open turn: where the policy judges pauses, a new start
        is the same turn's and the VAD's untruncated end is not the turn's (the core publishes the end it decides)."""
        judged = isinstance(ev, SpeechStarted) or (isinstance(ev, SpeechEnded) and not ev.truncated)
        return not self.judges or not judged

    def begin(self, start: int) -> None:
        """A new turn from sample `start`."""
        self.start, self.silence_at, self.segment, self.noticed = start, None, None, None
        self._forget()

    def vad(self, ev: VadEvent) -> None:
        """A VAD event inside the open turn: speech again ends the pause, a notice or silence begins one."""
        match ev:
            case SpeechStarted() | SpeechResumed():
                if self.score is not None or self.asking:  # a pause the policy judged and waited through
                    self.segment = ev.onset_sample if isinstance(ev, SpeechStarted) else ev.sample
                self.silence_at, self.noticed = None, None
                self._forget()  # a score still coming is of a pause that is over
            case PauseStarted():
                self.noticed = ev.sample  # asked at once: the answer is ready when SilenceStarted confirms it
            case SilenceStarted():
                self.silence_at = ev.sample
                if self.scored_pause != ev.sample:  # asked at a pause that voice ended before it was confirmed
                    self._forget()
            case SpeechEnded():
                if self.silence_at is None:
                    self.silence_at = ev.end_sample

    def ask(self, ring: AudioRing) -> np.ndarray | None:
        """The clip the model is to score now (request `asking`; see `scored_clip`), or None: at the VAD's notice
        of a pause, or once a pause has lasted `score_after_ms` with no score asked for."""
        after = self.policy.score_after_ms
        pause, self.noticed = self.noticed, None
        if after is None:
            return None
        if pause is None and self.silence_at is not None and self.score is None and not self.asking:
            pause = self.silence_at if (ring.end - self.silence_at) * 1000 // CAPTURE_RATE >= after else None
        if pause is None:
            return None
        self._requests += 1
        self.score, self.asking, self.scored_pause = None, self._requests, pause
        return scored_clip(ring, self.start, self.segment, pause, after)

    def scored(self, request: int, score: float | None) -> bool:
        """The model's answer to `request` (None: it failed); False when it is of a pause that is over."""
        if not self.asking or request != self.asking:
            return False
        # a broken model must not hold the turn open: it ends as the silence rule would end it
        self.score, self.asking = 1.0 if score is None else score, 0
        return True

    def ends(self, heard_to: int, partial_text: str) -> int | None:
        """Where the turn ends (the current pause's first silent sample) when the policy says it is over, with the
        audio heard up to sample `heard_to`; None: it goes on."""
        if not self.judges or self.silence_at is None:
            return None
        silence_ms = (heard_to - self.silence_at) * 1000 // CAPTURE_RATE
        speech_ms = (self.silence_at - self.start) * 1000 // CAPTURE_RATE
        evidence = TurnEvidence(silence_ms, speech_ms, self.score, partial_text, self.room_known)
        return self.silence_at if self.policy.decide(evidence) == "end" else None

    def _forget(self) -> None:
        self.score, self.asking, self.scored_pause = None, 0, None


class SmartTurn:
    """Smart Turn v3.x on onnxruntime: `score(audio)` = P(the user has finished speaking)."""

    def __init__(self, session: Any):
        self._session = session
        self._input = session.get_inputs()[0].name

    @classmethod
    def load(cls, path: Path, threads: int = 1) -> SmartTurn:
        """Load an exported Smart Turn .onnx file (or the folder holding SMART_TURN_FILE). Raises ModelError."""
        file = path / SMART_TURN_FILE if path.is_dir() else path
        if not file.is_file():
            raise ModelError(f"end-of-turn model not found at {file}; run `assistant pull` to fetch it")
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ModelError(f"onnxruntime is not installed ({e}); pip install onnxruntime") from e
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads  # one decision per pause: one core keeps the STT/TTS cores free
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            session = ort.InferenceSession(str(file), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelError(f"cannot load end-of-turn model {file}: {e}; delete it and run `assistant pull`") from e
        shape = session.get_inputs()[0].shape
        if len(shape) != 3 or shape[1:] != [N_MELS, FRAMES]:
            raise ModelError(f"{file} is not a Smart Turn v3 model (input {shape}); set endofturn.model to one")
        model = cls(session)
        model.score(np.zeros(CAPTURE_RATE, dtype=np.int16))  # the first run allocates and plans: not in a turn
        return model

    def score(self, audio: np.ndarray) -> float:
        """P(turn complete) for the turn's audio so far (int16 16 kHz mono, ending at the current pause)."""
        (out,) = self._session.run(None, {self._input: model_input(audio)})
        return float(np.asarray(out).reshape(-1)[0])


def policy_from_config(cfg: EndOfTurnConfig, hangover_ms: int) -> EndOfTurnPolicy:
    """The configured policy: Smart Turn's (patient for `resume_ms` while the room is unknown), or a fixed
    `hangover_ms` of silence (vad.hangover_ms)."""
    if cfg.detector == "silence":
        return FixedSilence(hangover_ms)
    return SmartTurnPolicy(cfg.threshold, cfg.score_after_ms, cfg.max_wait_ms, room_unknown_wait_ms=cfg.resume_ms)


def vad_settings(vad: VadConfig, cfg: EndOfTurnConfig) -> VadConfig:
    """The VAD's settings for this detector: with the model, silence is reported (SilenceStarted, where the turn
    core starts counting and weighs the score) no later than `score_after_ms`, and a pause is noticed
    (PauseStarted, where the core asks the model) after `ask_after_ms`, so the answer is ready by then."""
    if cfg.detector == "silence":
        return vad
    return replace(
        vad, early_silence_ms=min(vad.early_silence_ms, cfg.score_after_ms), pause_notice_ms=cfg.ask_after_ms
    )


def load_smart_turn(cfg: EndOfTurnConfig) -> SmartTurn | None:
    """The configured model from the cache or a local folder (None when the detector is "silence").
    Raises ModelError naming `assistant pull` when it is not downloaded."""
    if cfg.detector == "silence":
        return None
    return SmartTurn.load(hub.resolve(cfg.model, "end-of-turn model"), cfg.threads)
