"""Endpointing: a pure state machine over webrtcvad frames that says when the user starts and stops talking.

quiet -> starting (voiced frames in a row, fewer than `min_speech_ms`) -> speaking -> stopping (silence, less than
the hangover) -> quiet. A frame is voiced when webrtcvad says so and it is `noise_gate_db` louder than the
quietest frame of the last 3 s, or than FLOOR_DBFS if that is louder (webrtcvad alone calls steady rumble
speech). Events:
- SpeechStarted once min_speech_ms of voiced frames are in a row (barge_in_min_speech_ms, and louder by
  barge_in_energy_margin_db than the echo the audio may hold, while the assistant speaks: the echo canceller's
  room-aware bound, EchoCanceller.echo_dbfs; where that bound is its linear path's, LINEAR_SHARE of the last
  as many frames will do); start_sample = onset less the pre-roll.
- SilenceStarted after early_silence_ms of silence without one voiced frame (a voiced frame before it means the
  speaker goes on: the silence starts again after it), and PauseStarted before it after pause_notice_ms where
  that is shorter (an early notice for the end-of-turn model); SpeechResumed when half of min_speech_ms of voice
  comes back after SilenceStarted (single clicks do not); SpeechEnded after the hangover or at max_utterance_s
  (truncated).
Positions are sample indices from 0 at construction or from `reset(origin)`'s origin, exact whatever the sizes
of the blocks fed; a frame's decision is placed at its first sample. `time` is the clock's reading when the event
was decided. No I/O: feed samples, get events.
"""

from __future__ import annotations

import enum
import math
import time
from collections import deque
from collections.abc import Callable

import numpy as np
import webrtcvad

from assistant.audio.format import SILENT_DBFS, level_dbfs
from assistant.config import VadConfig
from assistant.errors import ConfigError, InputError
from assistant.events import PauseStarted, SilenceStarted, SpeechEnded, SpeechResumed, SpeechStarted, VadEvent

WEBRTC_RATES = (8000, 16000, 32000, 48000)  # the rates webrtcvad accepts
NOISE_WINDOW_S = 3.0  # the noise floor is the quietest frame of this window: longer than any syllable
# The floor the gate counts from is at least this: a microphone's own noise is louder, so only digitally clean
# audio (the echo canceller's output in a quiet room, a headless client) is quieter. There the gate would pass the
# canceller's fading output after speech (-60 to -96 dBFS over ~150 ms) and webrtcvad's hangover called it
# speech, so the silence began ~90 ms after the speech ended (issue 13 d)
FLOOR_DBFS = -70.0
ENDING_FRAMES = 3  # adaptive hangover: the last voiced frames whose level tells a finished phrase
ENDING_DROP_DB = 6.0  # ... when they are this much quieter than the utterance's median voiced frame
# While the assistant speaks, a user the echo canceller's linear path has told from the echo (a frame over its
# bound, `set_playback(linear=True)`) starts once this share of barge_in_min_speech_ms's frames from the first
# over it are: a user as loud as the echo dips under the gate for 2-3 frames ~200 ms in (issue 13 b). Frames that
# only passed AEC3's gate still need them all in a row: echo alone ran 5-8 in a row over it.
LINEAR_SHARE = 0.7


class State(enum.Enum):
    QUIET = "quiet"
    STARTING = "starting"
    SPEAKING = "speaking"
    STOPPING = "stopping"


class Vad:
    """Speech start/end events from int16 mono audio; see the module docstring for the states."""

    def __init__(self, cfg: VadConfig, sample_rate: int = 16000, *, clock: Callable[[], float] = time.monotonic):
        if sample_rate not in WEBRTC_RATES:
            raise ConfigError(
                f"VAD sample rate {sample_rate} Hz is not supported; resample to one of {WEBRTC_RATES} (16000 is used)"
            )
        self.cfg = cfg
        self.sample_rate = sample_rate
        self._clock = clock
        self.frame = sample_rate * cfg.frame_ms // 1000  # e.g. 480 = 30 ms at 16 kHz
        self._min_speech = self._frames(cfg.min_speech_ms)
        self._barge_min_speech = self._frames(cfg.barge_in_min_speech_ms)
        self._linear_min = math.ceil(LINEAR_SHARE * self._barge_min_speech)
        self._votes: deque[int | None] = deque(maxlen=self._barge_min_speech)  # the last frames while playing: a
        # frame over the linear path's gate (its position), or None
        # after a pause, half of min_speech_ms resumes the utterance: words after a pause can be short and soft,
        # while single clicks and noise bursts still do not stretch the pause
        self._min_resume = math.ceil(self._min_speech / 2)
        self._early = self._frames(cfg.early_silence_ms)
        self._notice = self._frames(cfg.pause_notice_ms) if cfg.pause_notice_ms else 0  # 0: no PauseStarted
        self._hangover = self._frames(cfg.hangover_ms)
        self._short_hangover = self._frames(cfg.short_hangover_ms)
        self._preroll = sample_rate * cfg.preroll_ms // 1000
        self._max_utterance = round(sample_rate * cfg.max_utterance_s)
        self._levels: deque[float] = deque(maxlen=self._frames(NOISE_WINDOW_S * 1000))  # kept across reset()
        self._playback = False
        self._playback_dbfs = SILENT_DBFS
        self._playback_linear = False
        self.reset()

    def _frames(self, ms: float) -> int:
        """Whole frames covering `ms` (at least one)."""
        return max(1, math.ceil(ms / self.cfg.frame_ms))

    def reset(self, origin: int = 0) -> None:
        """Back to quiet with positions counted from `origin` (keeps the playback setting and the noise floor)."""
        self._webrtc = webrtcvad.Vad(self.cfg.aggressiveness)
        self.state = State.QUIET
        self._pending = np.zeros(0, dtype=np.int16)
        self.position = origin  # samples consumed in whole frames
        self._onset = origin  # first voiced frame of the current (candidate) utterance
        self._start = origin  # onset less the pre-roll
        self._run = 0  # voiced frames in a row while starting
        self._silence_start = origin
        self._silent = 0  # silent frames in a row while stopping
        self._silence_reported = False
        self._resume_run = 0  # voiced frames in a row while stopping
        self._last_end = origin  # no pre-roll reaches back into the previous utterance
        self._voiced_levels: list[float] = []
        self._votes.clear()

    def set_playback(self, active: bool, level_dbfs: float = -120.0, linear: bool = False) -> None:
        """While the assistant speaks, a start needs barge_in_min_speech_ms and barge_in_energy_margin_db over
        `level_dbfs` (the echo the audio may hold: what plays, or what the canceller may leave of it in this room),
        so its own voice from the speakers does not count as the user. `linear`: `level_dbfs` is the echo
        canceller's linear path's bound, so LINEAR_SHARE of those frames over it in the last as many will do."""
        if not active:
            self._votes.clear()
        self._playback = active
        self._playback_dbfs = level_dbfs
        self._playback_linear = active and linear

    def feed(self, samples: np.ndarray) -> list[VadEvent]:
        """Consume int16 mono samples of any length; returns the events decided by the whole frames now complete."""
        if not isinstance(samples, np.ndarray) or samples.dtype != np.int16 or samples.ndim != 1:
            what = (
                f"{samples.dtype} array of shape {samples.shape}" if isinstance(samples, np.ndarray) else type(samples)
            )
            raise InputError(
                f"Vad.feed expects a 1-D int16 array (mono), got {what}; convert with audio.format.float32_to_int16"
            )
        buf = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        n = len(buf) // self.frame
        events: list[VadEvent] = []
        for i in range(n):
            events += self._step(buf[i * self.frame : (i + 1) * self.frame])
        self._pending = buf[n * self.frame :].copy()
        return events

    # ---- one frame ---------------------------------------------------------------------------------------

    def _is_speech(self, frame: np.ndarray, level: float) -> bool:
        gate = self.cfg.noise_gate_db
        if gate > 0 and self._levels and level < max(min(self._levels), FLOOR_DBFS) + gate:
            return False
        if level <= SILENT_DBFS:
            return False
        return bool(self._webrtc.is_speech(frame.tobytes(), self.sample_rate))

    def _step(self, frame: np.ndarray) -> list[VadEvent]:
        level = level_dbfs(frame)
        voiced = self._is_speech(frame, level)
        self._levels.append(level)
        at = self.position
        self.position += self.frame
        if self.state in (State.QUIET, State.STARTING):
            return self._step_quiet(at, voiced and self._loud_enough(level), level)
        return self._step_speaking(at, voiced, level)

    def _loud_enough(self, level: float) -> bool:
        return not self._playback or level >= self._playback_dbfs + self.cfg.barge_in_energy_margin_db

    def _step_quiet(self, at: int, voiced: bool, level: float) -> list[VadEvent]:
        if self._playback:
            self._votes.append(at if voiced and self._playback_linear else None)
        votes = [v for v in self._votes if v is not None]
        # (the whole window from the first vote: 7 in a row alone were seen from echo the path mispredicted; it is
        # judged on every frame, so a dip at its end does not hide the votes before it)
        full = len(self._votes) == self._votes.maxlen and self._votes[0] is not None
        linear = full and len(votes) >= self._linear_min
        if not voiced and not linear:
            self.state, self._run = State.QUIET, 0
            return []
        if self.state is State.QUIET:
            self.state, self._onset, self._run, self._voiced_levels = State.STARTING, at, 0, []
        if voiced:
            self._run += 1
            self._voiced_levels.append(level)
        if linear:
            self._onset = min(self._onset, votes[0])  # the user began with the first of them
        elif self._run < (self._barge_min_speech if self._playback else self._min_speech):
            return []
        self.state = State.SPEAKING
        self._votes.clear()
        self._start = max(self._onset - self._preroll, self._last_end)
        return [SpeechStarted(start_sample=self._start, onset_sample=self._onset, time=self._clock())]

    def _step_speaking(self, at: int, voiced: bool, level: float) -> list[VadEvent]:
        events: list[VadEvent] = []
        if voiced and self.state is State.SPEAKING:
            self._voiced_levels.append(level)
            if self.position - self._onset >= self._max_utterance:
                events.append(self._end(self.position, truncated=True))
            return events
        if self.state is State.SPEAKING:  # the first silent frame
            self.state, self._silence_start, self._silent, self._silence_reported = State.STOPPING, at, 0, False
            self._resume_run = 0
        self._silent += 1  # frames since the silence started, a voiced run that may resume speech included
        if voiced:
            self._resume_run += 1
            self._voiced_levels.append(level)
            # before the silence is reported, one voiced frame means the speaker is still talking: SilenceStarted
            # then promises early_silence_ms with no voice at all (espeak-ng's stops and fricatives left 2 voiced
            # frames in a 150 ms "silence", and Smart Turn, asked there, cut questions in two; issue 13 d)
            if self._resume_run >= self._min_resume or not self._silence_reported:
                self.state = State.SPEAKING
                resumed_at = self.position - self._resume_run * self.frame
                if self._silence_reported:
                    events.append(SpeechResumed(sample=resumed_at, time=self._clock()))
                return events
        else:
            self._resume_run = 0
        hangover = self._hangover_frames()
        if not self._silence_reported and self._silent == self._notice < min(self._early, hangover):
            events.append(PauseStarted(sample=self._silence_start, time=self._clock()))
        if not self._silence_reported and self._silent >= min(self._early, hangover):
            self._silence_reported = True
            events.append(SilenceStarted(sample=self._silence_start, time=self._clock()))
        if self._silent >= hangover:
            events.append(self._end(self._silence_start, truncated=False))
        return events

    def _hangover_frames(self) -> int:
        """The hangover for this pause: short after a phrase whose last frames fade out, when adaptive."""
        if not self.cfg.adaptive_hangover or len(self._voiced_levels) <= ENDING_FRAMES:
            return self._hangover
        ending = float(np.mean(self._voiced_levels[-ENDING_FRAMES:]))
        finished = ending <= float(np.median(self._voiced_levels)) - ENDING_DROP_DB
        return min(self._short_hangover, self._hangover) if finished else self._hangover

    def _end(self, end: int, truncated: bool) -> SpeechEnded:
        self.state, self._last_end = State.QUIET, end
        return SpeechEnded(start_sample=self._start, end_sample=end, time=self._clock(), truncated=truncated)
