"""Echo cancellation: the assistant's own voice removed from the microphone before VAD and STT.

WebRTC's AEC3 (through livekit's AudioProcessingModule) does the cancelling; this module gives it the right
reference. The reference is the exact audio written to the speaker, placed on the capture timeline by the sink's
DAC clock: for a microphone frame captured at monotonic time t, the speaker was playing sample
`played_before(t)` of the current run. AEC3 then only has to model the acoustic path (tens of ms, reverb), not
buffering delays that vary from device to device and from run to run.

The barge-in gate knows the room: the canceller learns how loud the raw microphone is while only the speaker
plays (`echo_return_db`). Where the room returns the reply (laptop speakers) the gate stays at the played peak
less what AEC3 takes off; where nothing comes back (headphones, no echo path) the gate drops to the floor and
the microphone passes untouched, so a user at a normal voice is heard over the reply.

AEC3 turns a user who talks over the reply down by 30-70 dB within ~300 ms, so beside it a linear model of the
echo path (assistant/audio/echo_path.py) predicts the echo from the same reference, placed once per run as one
unbroken stream, after the room's own delay (found once from the signal: a looped-back speaker adds ~50-110 ms
to the DAC time). Where that model has learned the room, the frames handed back while the speaker plays are the
microphone less its prediction (the user's voice untouched) and the gate is what the model leaves of echo alone:
a user about as loud as the echo is heard once the model has heard ~1 s of the first reply. The model is kept
across replies and underruns (a new placement is aligned by the signal and its reference refilled), and a user
once heard is held for a moment, so the dips of their voice under the echo are neither learned as echo nor
gated as it.

Not thread-safe: one driver feeds `played()` / `new_run()` and `process()` from one thread (the event loop).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol, runtime_checkable

import numpy as np

from assistant.audio.echo_path import PARTITIONS, EchoPath
from assistant.audio.format import (
    CAPTURE_RATE,
    SILENT_DBFS,
    TTS_RATE,
    AudioBlock,
    StreamResampler,
    frame_samples,
    level_dbfs,
)
from assistant.errors import AudioDeviceError, InputError

AEC_FRAME = frame_samples(CAPTURE_RATE, 10)  # 160: AEC3 works on 10 ms frames
AEC3_DELAY = 128  # AEC3 hands back each frame's audio 8 ms late (measured; pinned by tests/test_echo.py)
# The canceller hands back each frame one whole frame late: the echo path's residual of a frame is whole only
# once the next frame is in (its windows overlap), and AEC3's output is held 2 ms more to match.
AEC_DELAY = AEC_FRAME
# What is left of the echo in the cleaned signal, relative to the loudest 10 ms the speaker played within
# ECHO_WINDOW_MS before a frame: the base of the barge-in gate (which adds vad.barge_in_energy_margin_db, 6 dB).
# Measured in the laptop room (`python -m benchmarks.echo --barge`: 60 ms, 0 and -6 dB, reverb), voiced 30 ms
# frames of echo alone at 14 dB under the peak ran at most 5-8 in a row, short of the 10 (300 ms) a start needs;
# but with one core busy (tests/pipeline/test_echo_turns_room.py) 300 ms runs came through at that level, so the
# gate sits at 8 dB under the peak: a user interrupts by being about as loud as the reply's echo plus 8 dB.
RESIDUAL_DB = -14.0
ADAPT_FRAMES = 300  # AEC3 learns the room over its first 3 s of reference: until then, no credit for cancelling
# echo path delay + the room's reverberation (~200 ms), and the speaker clock's error under load
ECHO_WINDOW_MS = 300
WINDOW_FRAMES = ECHO_WINDOW_MS // 10  # 30 AEC frames of 10 ms
KEEP_S = 20.0  # reference history kept: covers capture blocks that arrive late on a busy machine
# The room's echo return (raw microphone vs the played peak) is learned from frames recorded while the speaker has
# played for at least this long, the last 150 ms of it steadily (mean power within 10 dB of the window's peak):
# longer than the echo path delay left after DAC-time alignment (laptop ~5-20 ms, the test room's loop 45-110
# ms) and than the speaker clock's error at a run's start (in the room, learning from 150 ms on let a first reply
# interrupt itself 0.3 s in; PulseAudio's DAC times were seen ~250 ms off), so each learned frame holds the echo
# if the room has one, and no pause of the reply passes for an echo-free room.
RETURN_AFTER_FRAMES = 40  # 400 ms
STEADY_FRAMES = 15  # 150 ms of steady playing before a frame: its echo has arrived
RETURN_FRAMES = 500  # the last 5 s of such frames (kept across replies: the room does not change between them)
RETURN_MIN_FRAMES = 10  # fewer learned frames than this: the room is not known yet
# The room's echo return is the lower quartile of the learned frames: a user talking over up to 3/4 of them does
# not hide an echo-free room, and the speaker's underruns (silence the reference may place ~250 ms off) would have
# to fill 1/4 of them to pass for one. In the laptop room (60-120 ms, 0 and -6 dB, reverb) it is -15..-8 dB.
RETURN_QUANTILE = 25.0
# A room that returns the speaker this far under what played has no echo path to speak of (headphones, a far
# speaker): the gate drops to its floor and the microphone passes untouched, because AEC3 still ducks a user who
# talks over the reply there. Anywhere else the gate is the played peak, less RESIDUAL_DB once AEC3 has adapted.
NO_ECHO_DB = -50.0
GATE_FLOOR_DBFS = -90.0  # the gate in such a room while the speaker plays: under any microphone's self-noise
# The linear echo path (assistant/audio/echo_path.py) sees the reference as one unbroken stream, placed once per
# run of steady playing: the DAC and ADC times wander by ~1-2 ms within a reply and single readings jump by ~5 ms
# (seen in the room), which a linear model cannot follow, while the sound cards' sample clocks do not drift
# apart. The placement is taken again when the median of the clock's last PLACE_READINGS readings moves away from
# it by more than RELOCK_SAMPLES (an underrun, a new reply after a pause), once those readings agree within a
# third of that (after underruns they were seen jumping about by 5-20 ms for a while).
PLACE_READINGS = 5
# A new placement is off by ~2-10 ms from where the old one had the echo (after underruns the clock's readings
# were seen 100-150 samples from where the signal put the echo): the first 300 ms the kept model predicts after
# it are cross-correlated with the microphone, and the placement moves by the lag (up to ALIGN_SAMPLES either
# way) where they match best, so the model fits again at once instead of refitting.
ALIGN_FRAMES = 30
ALIGN_SAMPLES = 320  # 20 ms
ALIGN_MIN_CORRELATION = 0.3  # the room's reverberation lowers it: 0.3-0.97 seen for a true lag
# Where the aligned prediction matches this well, what the model leaves of echo alone is as before the move
# (its statistics are kept): under load the speaker ran dry every ~0.5 s, and learning them again each time
# left the path silent for the whole reply.
ALIGN_KEEP_CORRELATION = 0.8
RELOCK_SAMPLES = 48  # 3 ms
# The model hears the reference this far ahead of the placement, so an echo a little earlier than the clock says
# (its readings wander) is still in its reach.
LOOK_AHEAD = frame_samples(CAPTURE_RATE, 10)  # 160
# The clock places the reference where the speaker's DAC played it; the room's own delay comes on top (a laptop
# ~5-20 ms; the test room's loop 45-105 ms at 60-120 ms, seen by cross-correlation), and the path's PARTITIONS
# windows (160 ms) spent on it would leave too little for the reverberation after it. The first placement's
# first BULK_FRAMES (300 ms) of steady playing are cross-correlated with the reference up to BULK_MAX_SAMPLES
# later, and the path then hears the reference the found delay less BULK_MARGIN later, for the whole process (the
# room does not change; re-placements after underruns follow the clock as before). Speech over the allpass room
# correlates 0.5-0.6 at the true delay in 0.5 s windows; under BULK_MIN_CORRELATION the search goes on.
BULK_FRAMES = 30
BULK_KEEP = 100  # frames kept for the search (1 s) while nothing clear was found
BULK_MAX_SAMPLES = frame_samples(CAPTURE_RATE, 250)  # 4000
BULK_MARGIN = frame_samples(CAPTURE_RATE, 10)  # 160: earlier reflections and the clock's wobble stay in reach
BULK_MIN_CORRELATION = 0.3
# Without an underrun the stream has played on unbroken and its echo has not moved, while the clock's readings
# drift by up to ~10 ms over seconds (seen in the room: 160 samples in 3 s, the echo fixed to the sample): such a
# drift moves the placement only beyond DRIFT_SAMPLES. An underrun shows as a reading that played under half a
# frame, or (a short one) as the readings' median stepping by over STEP_SAMPLES within STEP_READINGS (a drift
# moves them ~10 samples in that time; an underrun of 6 ms was seen as a step of 65).
DRIFT_SAMPLES = frame_samples(CAPTURE_RATE, 20)  # 320
STEP_READINGS = 20  # 200 ms of steady readings: the median of the first 5 against that of the last 5
STEP_SAMPLES = 24
# What the linear path leaves of echo alone, learned from frames played steadily from 300 ms after each
# placement (the model has heard the path by then) while the reply is not in a pause (see _learn_return), the
# last 0.5 s of them (the model improves fast at first): the high quantile of the residual's level less the
# played peak bounds the echo left (the gate then is the played peak plus it, as AEC3's is the peak plus
# RESIDUAL_DB), and the median of the microphone's level less the residual's is how much the model takes off.
# A frame holds a user (double talk: not learned, by the model or the statistics) when its residual is
# DOUBLE_TALK_DB over the bound: loud enough for the VAD to count it (it adds vad.barge_in_energy_margin_db, 6 dB,
# to the gate). The path speaks for frames only once it takes off at least LINEAR_TAKEN_DB and its bound is under
# AEC3's gate: a model still learning would call the echo it cannot predict yet a user. In the room (60 ms, 0
# and -6 dB) it takes off 8-11 dB and leaves 13-16 dB under the peak 1 s into the first reply (10 dB was asked
# before: a user 1 s in was then learned as echo), 14-20 dB and 20-27 dB from 2 s on.
LINEAR_AFTER_FRAMES = 30  # 300 ms
LINEAR_FRAMES = 50  # 0.5 s
LINEAR_MIN_FRAMES = 10  # learned frames before the bound counts
LINEAR_QUANTILE = 90.0
DOUBLE_TALK_DB = 6.0
LINEAR_TAKEN_DB = 6.0
# A frame of echo alone joins those statistics only LINEAR_PENDING frames later, unless a user was found in
# between: a user's first syllables under the echo's level are not over the bound yet, and learned as echo
# alone they raised it by ~8 dB within 200 ms (seen 9 s into a reply), so the user was never heard.
LINEAR_PENDING = 20  # 200 ms
# A user's voice dips between syllables and under the louder echo: once DOUBLE_TALK_ENTRY frames in a row hold
# a user (one alone was often an echo the path mispredicted: it cost ~50 dB of ERLE at a 120 ms delay), the
# next DOUBLE_TALK_HOLD frames are taken as theirs too (not learned where louder than echo alone may leave, their
# residual handed back). Learning those dips as echo raised the bound and took the path's credit away within
# ~150 ms of a user 1 s into a reply. Two in a row held echo alone 25 times in 8 room recordings (a mature path
# mispredicting the same sounds of the reply), four 10, each user found as fast (`benchmarks.echo --replay`).
DOUBLE_TALK_HOLD = 50  # 500 ms
DOUBLE_TALK_ENTRY = 4
# While a user is held the gate is the bound less this: the VAD's margin over it (vad.barge_in_energy_margin_db,
# 6 dB) was already asked of the frames that began the hold, and the residual of a held frame is the user's voice
# as it came (it dips under the echo between syllables: at 6 dB over the bound a 300 ms span broke there). Half
# of the margin: the VAD starts on 7 of 10 frames over this gate, and with all 6 dB off, echo the path
# mispredicted (2 frames 6 dB over, a false hold) passed that in a room recording (`benchmarks.echo --replay`).
HELD_EASE_DB = 3.0
# A residual this much louder than the microphone is no user (who adds to both alike) but a model that predicts
# echo where none came (its reference placement or the room changed): the frame is learned and not judged.
MISPREDICTED_DB = 1.5
# A user adds to the microphone and the residual alike, so where they speak the subtraction takes at most
# 10*log10(1 + echo/user) off the microphone: 3 dB for a user as loud as the echo, 7 for one 6 dB under it
# (seen: <= 6.8 dB on every frame over the bound while a user spoke, 15 live room recordings). A frame the
# subtraction took more off is echo the path predicted, however far over the bound its leftover is: a bound
# learned from the 10 frames after a new placement where the path fit well (30 dB taken) met frames it fit
# less well (11-15 dB taken), 4 in a row held a user, held frames are not learned, and a reply of a -6 dB x10
# room run interrupted itself (`benchmarks.echo --trace`, 140.99 s).
FIT_MAX_DB = 8.0
QUIET_POWER = 10 ** (-80 / 10)  # a played peak under -80 dBFS (a resampler's tail) is silence: nothing to judge


def _best_lag(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[int, float]:
    """(microphone, predicted echo) frames in order: the lag (within ALIGN_SAMPLES) at which the microphone
    matches the prediction best, and the normalized correlation there."""
    heard, predicted = (np.concatenate(x) for x in zip(*pairs, strict=True))
    n = 2 * len(heard)
    xc = np.fft.irfft(np.fft.rfft(heard, n) * np.conj(np.fft.rfft(predicted, n)), n)
    lags = np.arange(-ALIGN_SAMPLES, ALIGN_SAMPLES + 1)
    values = xc[lags % n]
    norm = float(np.sqrt(np.dot(heard, heard) * np.dot(predicted, predicted)))
    if norm <= 0:
        return 0, 0.0
    best = int(np.argmax(values))
    return int(lags[best]), float(values[best]) / norm


@runtime_checkable
class PlayedClock(Protocol):
    """The speaker's clock (Playback, or a headless client's sink on its own clock)."""

    def played_before(self, t: float) -> int: ...  # samples of the current run at the DAC by monotonic time t


class EchoCanceller:
    """Mic blocks in, the same blocks with the speaker's echo removed out (`process`).

    Feed it every chunk written to the speaker, in order (`played`), and call `new_run()` whenever the sink's
    played position restarts (flush). `enabled=False` (headphones) passes blocks through untouched.
    Samples are held until a whole 10 ms frame is in, and AEC3 delays its output by AEC_DELAY samples; the
    returned blocks' `t` is the capture time of their own first sample, so callers still judge by capture time.
    """

    def __init__(self, clock: PlayedClock, ref_rate: int = TTS_RATE, enabled: bool = True):
        self.clock = clock
        self.ref_rate = ref_rate
        self.enabled = enabled
        self._apm: Any = None
        self._frame_cls: Any = None
        if enabled:
            try:
                from livekit.rtc import AudioFrame, AudioProcessingModule
            except ImportError as e:
                raise AudioDeviceError(
                    f"echo cancellation needs the livekit package ({e}); pip install livekit, "
                    "or set echo.enabled = false when using headphones"
                ) from e
            self._apm = AudioProcessingModule(
                echo_cancellation=True, noise_suppression=False, high_pass_filter=True, auto_gain_control=False
            )
            self._frame_cls = AudioFrame
        self._adapted = 0  # 10 ms frames processed while the speaker played (AEC3 adapts on those)
        self._window: deque[float] = deque(maxlen=WINDOW_FRAMES)  # reference power of the last 300 ms of frames
        self._recent: deque[float] = deque(maxlen=STEADY_FRAMES)  # ... of the last 150 ms, and their sum:
        self._steady = 0.0
        self._playing = 0  # frames since the speaker last started after a whole window of silence
        self._returns = np.zeros(RETURN_FRAMES)  # a ring of learned frames: raw frame dB less the played peak dB
        self._learned = 0  # frames learned in all
        self._return_db: float | None = None  # RETURN_QUANTILE of _returns (None: not learned yet)
        self._raw_tail = np.zeros(AEC_DELAY, np.int16)  # the microphone delayed as the output is
        self._aec_hold = np.zeros(AEC_DELAY - AEC3_DELAY, np.int16)  # AEC3's output, held to the same delay
        self._pending = np.zeros(0, np.int16)  # mic samples waiting for a whole frame
        self._pending_t = 0.0  # capture time of _pending[0]
        # the linear echo path: the reference as one stream, mic sample m <-> run sample m - _offset
        self._path = EchoPath()
        self._mic_at = 0  # microphone samples processed
        self._offset: int | None = None
        self._clock_offset: int | None = None  # ... as the clock's readings placed it (before aligning it)
        self._bulk: int | None = None  # the room's delay after the placement, less BULK_MARGIN (None: not found)
        self._finding: deque[np.ndarray] = deque(maxlen=BULK_KEEP)  # microphone frames since the placement
        lags = BULK_MAX_SAMPLES + LOOK_AHEAD + 1
        self._bulk_xc = np.zeros(lags)  # per delay (BULK_MAX_SAMPLES - index): sum of microphone x reference
        self._bulk_power = np.zeros(lags)  # ... sum of the reference's power at that delay
        self._bulk_heard = 0.0  # ... sum of the microphone's power
        self._bulk_frames = 0  # steady frames summed (across placements: each with the reference placed then)
        self._gap = False  # the speaker ran dry since the placement
        self._since_lock = 0  # steady frames since the placement
        self._readings: deque[int] = deque(maxlen=PLACE_READINGS)  # the clock's last readings of the offset
        self._history: deque[int] = deque(maxlen=STEP_READINGS)  # ... and more of them, to see a step
        self._aligning: list[tuple[np.ndarray, np.ndarray]] | None = None  # after a new placement: (microphone,
        # prediction) frames to align it by
        self._linear_returns: deque[float] = deque(maxlen=LINEAR_FRAMES)  # residual dB less the played peak dB
        self._linear_taken: deque[float] = deque(maxlen=LINEAR_FRAMES)  # microphone dB less residual dB
        self._unsure: deque[tuple[float, float]] = deque()  # (returned, taken) of the last LINEAR_PENDING frames
        self._stash: tuple[list[float], list[float], list[tuple[float, float]]] | None = None  # the statistics
        # before a new placement (learned, and still pending)
        self._linear_db: float | None = None  # LINEAR_QUANTILE of _linear_returns (None: not learned yet)
        self._taken_db = 0.0  # median of _linear_taken (0: not learned)
        self._raw_tail_previous = np.zeros(AEC_FRAME, np.int16)  # the frame the path's residual is of
        self._previous: tuple[bool, float] = (False, 0.0)  # the last frame: played steadily, its played peak
        self._previous_loud = False  # ... and the reply was not in a pause then
        self._double_talk = False  # the last frame judged held a user's voice
        self._talk_hold = 0  # frames left that are taken as the user's (DOUBLE_TALK_HOLD after the last one heard)
        self._overs = 0  # frames in a row over the double-talk threshold
        self.holds = 0  # holds begun (a user found in the echo; `benchmarks.echo` counts them on echo alone)
        self._gates: deque[tuple[float, float | None]] = deque(maxlen=WINDOW_FRAMES)  # per frame handed back:
        # its capture time, and the bound on the linear residual's echo (None: AEC3's output was handed back)
        self.new_run()

    def new_run(self) -> None:
        """The sink's played position restarted at 0 (flush, a new reply): forget the old reference."""
        self._resampler = StreamResampler(self.ref_rate, CAPTURE_RATE)
        self._ref = np.zeros(0, np.float32)  # the written audio at CAPTURE_RATE; index 0 = run sample _ref_first
        self._ref_first = 0
        self._place(None)

    def _place(self, offset: int | None, keep: bool = False) -> None:
        """Place the linear path's reference stream anew (None: not playing), its recent past as the stream lies
        there. The path keeps its model of the room, which aligns the placement (`_align`), but what it leaves
        of echo alone is learned again before it speaks for a frame, unless `keep` (the placement only moved to
        where the signal says the echo is): kept across replies, it let 10 long replies interrupt themselves."""
        self._offset = self._clock_offset = offset
        self._since_lock = 0
        self._gap = False
        self._finding.clear()
        self._readings.clear()
        self._path.clear_reference()
        if offset is not None and self._path.solved:  # (a young path's statistics have no past to match)
            at = self._mic_at - self._lead(offset)
            self._path.refill(np.stack([self._stream(at - k * AEC_FRAME) for k in range(PARTITIONS, 0, -1)]))
        self._aligning = [] if self._path.solved else None
        self._talk_hold = 0
        if not keep:
            self._path.forget_leftover()
            kept = (list(self._linear_returns), list(self._linear_taken), list(self._unsure))
            self._forget_linear()
            self._stash = kept if self._aligning is not None else None

    def _lead(self, offset: int) -> int:
        """Microphone sample m hears the path's reference from run sample m - this on."""
        return offset + (self._bulk or 0) - LOOK_AHEAD

    def _forget_linear(self) -> None:
        """What the path leaves of echo alone is learned again (its placement could not be aligned)."""
        self._linear_returns.clear()
        self._linear_taken.clear()
        self._unsure.clear()
        self._linear_db = None
        self._taken_db = 0.0

    def played(self, chunk: np.ndarray) -> None:
        """The float32 mono chunk at `ref_rate` that was just written to the speaker."""
        if not isinstance(chunk, np.ndarray) or chunk.ndim != 1:
            raise InputError(f"EchoCanceller.played expects 1-D float32 audio at {self.ref_rate} Hz")
        if not self.enabled:
            return
        self._ref = np.concatenate([self._ref, self._resampler.push(chunk.astype(np.float32, copy=False))])
        excess = len(self._ref) - round(KEEP_S * CAPTURE_RATE)
        if excess > 0:
            self._ref = self._ref[excess:]
            self._ref_first += excess

    def _positions(self, t: float, n: int) -> tuple[int, int]:
        """Run samples (at CAPTURE_RATE) played by monotonic time t and by `n` samples later."""
        scale = CAPTURE_RATE / self.ref_rate
        p0 = round(self.clock.played_before(t) * scale)
        return p0, round(self.clock.played_before(t + n / CAPTURE_RATE) * scale)

    def reference_for(self, t: float, n: int = AEC_FRAME) -> np.ndarray:
        """The `n` samples (float32, CAPTURE_RATE) the speaker played from monotonic time t on; zeros where it
        played nothing (before the run, gaps after underruns, after the end)."""
        return self._played_between(*self._positions(t, n), n)

    def _played_between(self, p0: int, p1: int, n: int) -> np.ndarray:
        out = np.zeros(n, np.float32)
        k = min(n, p1 - p0)
        if k <= 0:
            return out
        # a run that starts inside the frame played its first samples at the frame's end; any other shortfall
        # (the run ended, an underrun began) is silence after them
        at = n - k if p0 == 0 else 0
        lo = p0 - self._ref_first
        src = self._ref[max(0, lo) : max(0, lo + k)]
        if lo >= 0:
            out[at : at + len(src)] = src
        return out

    def _stream(self, at: int, n: int = AEC_FRAME) -> np.ndarray:
        """`n` samples of the run's reference from run sample `at` on (zeros outside what was written)."""
        out = np.zeros(n, np.float32)
        lo, hi = max(at, self._ref_first), min(at + n, self._ref_first + len(self._ref))
        if hi > lo:
            out[lo - at : hi - at] = self._ref[lo - self._ref_first : hi - self._ref_first]
        return out

    def echo_dbfs(self, t: float, n: int) -> float:
        """The level the echo in `n` cleaned samples from capture time `t` may still have. Where every frame of
        them is the linear path's residual (the speaker playing steadily, the path learned): the played peak
        plus what the path leaves of echo alone (`linear_return_db`). Elsewhere: the loudest 10 ms the speaker
        played from ECHO_WINDOW_MS before `t` to the block's end, plus RESIDUAL_DB once AEC3 has adapted
        (ADAPT_FRAMES; before, the echo may be as loud as what played); GATE_FLOOR_DBFS in a room that returns
        nothing (`no_echo`); SILENT_DBFS when the speaker played nothing then."""
        gates = self._linear_gates(t, n)
        if gates:
            return max(gates)
        lead = frame_samples(CAPTURE_RATE, ECHO_WINDOW_MS)
        ref = self.reference_for(t - lead / CAPTURE_RATE, lead + n)
        usable = len(ref) // AEC_FRAME * AEC_FRAME
        if not usable or not np.any(ref[:usable]):
            return SILENT_DBFS
        frames = ref[:usable].reshape(-1, AEC_FRAME).astype(np.float64)
        peak = float(np.max(np.mean(np.square(frames), axis=1)))
        if peak <= 0:
            return SILENT_DBFS
        if self.no_echo:
            return GATE_FLOOR_DBFS  # the speaker played, nothing of it comes back
        return 10.0 * float(np.log10(peak)) + (RESIDUAL_DB if self._adapted >= ADAPT_FRAMES else 0.0)

    def _linear_gates(self, t: float, n: int) -> list[float]:
        """The linear path's gates of the frames handed back for `n` samples from capture time `t`; empty unless
        the path spoke for every one of them."""
        gates = [g for at, g in self._gates if t - 1e-4 <= at < t + n / CAPTURE_RATE - 1e-4]
        if not gates or self.no_echo or any(g is None for g in gates):
            return []
        return [g for g in gates if g is not None]

    def linear_at(self, t: float, n: int) -> bool:
        """`echo_dbfs(t, n)` is the linear path's bound: a frame over it (plus the VAD's margin) is a user the
        path has told from the echo, not a frame that only passed AEC3's gate."""
        return bool(self._linear_gates(t, n))

    def _learn_return(self, ref: np.ndarray, raw: np.ndarray) -> None:
        """One 10 ms frame (float32 reference, int16 microphone): how loud the raw microphone is relative to the
        loudest 10 ms played in the window before it, once the speaker has played long enough for its echo to
        have arrived."""
        power = float(np.dot(ref, ref)) / len(ref)
        self._window.append(power)
        self._steady += power - (self._recent[0] if len(self._recent) == STEADY_FRAMES else 0.0)
        self._recent.append(power)
        peak = max(self._window)
        if peak <= 0.0:
            self._playing = 0  # a whole window of silence: the next sound starts a new run of the echo path
            return
        self._playing += 1
        if self._playing <= RETURN_AFTER_FRAMES or self._steady / STEADY_FRAMES < peak / 10:
            return
        self._returns[self._learned % RETURN_FRAMES] = level_dbfs(raw) - 10.0 * float(np.log10(peak))
        self._learned += 1
        if self._learned >= RETURN_MIN_FRAMES and self._learned % 5 == 0:  # every 50 ms: cheap enough
            kept = self._returns[: min(self._learned, RETURN_FRAMES)]
            k = int(RETURN_QUANTILE / 100 * (len(kept) - 1))
            self._return_db = float(np.partition(kept, k)[k])

    def _linear(self, residual: np.ndarray, mic: np.ndarray) -> tuple[np.ndarray | None, float | None]:
        """Judge the previous frame (`mic`, int16) by its linear residual: (the residual as int16, the bound on
        the echo it may hold), or (None, None) where the path cannot speak for it (not playing steadily, not
        learned yet, or no better than AEC3's gate). The path learns from the frame unless a user spoke in it."""
        steady, peak = self._previous
        self._double_talk = False
        if self._aligning is not None:  # the placement may be off: nothing to learn or say until it is aligned
            self._path.learn(echo_alone=False)
            return None, None
        if not steady or peak <= QUIET_POWER:
            self._path.learn(echo_alone=peak <= QUIET_POWER)  # an underrun: the placed reference did not play then
            return None, None
        out = np.clip(np.round(residual * 32768.0), -32768, 32767).astype(np.int16)
        peak_db = 10.0 * float(np.log10(peak))
        level, heard = level_dbfs(out), level_dbfs(mic)
        mispredicted = level > heard + MISPREDICTED_DB  # predicted echo that did not come: wrong here
        if mispredicted and not self._talk_hold:
            # (a user held on such frames was the model's error: seen after underruns, held for seconds; so a
            # held one neither ends the hold, since a user as loud as the echo can cancel some of it, nor renews it)
            self._overs = 0
            self._path.learn(echo_alone=True)
            return None, None
        # the subtraction itself took some echo off (turning down always takes some), and no more than a user's
        # voice lets it (see FIT_MAX_DB)
        fits = 0.0 < heard - level <= FIT_MAX_DB
        out = np.clip(np.round(self._path.suppressed * 32768.0), -32768, 32767).astype(np.int16)
        level = level_dbfs(out)
        if level > heard:
            out, level = mic, heard
        returned, taken = level - peak_db, heard - level
        bound = self._linear_db if self._taken_db >= LINEAR_TAKEN_DB else None  # None: the path is not known
        # (a residual no quieter than the microphone is a model that does not fit as often as a user)
        over = bound is not None and returned > bound + DOUBLE_TALK_DB and fits
        self._overs = self._overs + 1 if over else 0
        if self._overs >= DOUBLE_TALK_ENTRY:
            self.holds += self._talk_hold == 0
            self._talk_hold = DOUBLE_TALK_HOLD
            self._unsure.clear()  # (their first syllables, not over the bound yet)
            self._path.forget_pending()
        elif self._talk_hold:
            self._talk_hold -= 1
        if bound is not None and (over or self._talk_hold):
            # the user's voice is no echo to learn; a held frame no louder than echo alone leaves is (a dip of
            # theirs under it adds little), so a false hold does not stop a young path from learning
            self._path.learn(echo_alone=not over and not mispredicted and returned <= bound, leftover=False)
            # a held user's voice as the path leaves it, dips included: AEC3 turns those down 10-30 dB (seen 1 s
            # into a reply, the VAD's run of voice broke there)
            self._double_talk = True
            ease = HELD_EASE_DB if self._talk_hold else 0.0
            return out, max(GATE_FLOOR_DBFS, peak_db + bound - ease)
        self._path.learn(echo_alone=True)
        if self._since_lock > LINEAR_AFTER_FRAMES and self._previous_loud:
            self._unsure.append((returned, taken))
            if len(self._unsure) > LINEAR_PENDING:
                self._learn_linear(*self._unsure.popleft())
        old = RESIDUAL_DB if self._adapted >= ADAPT_FRAMES else 0.0  # AEC3's gate, relative to the peak
        if bound is None or bound >= old:
            return None, None
        return out, max(GATE_FLOOR_DBFS, peak_db + bound)

    def _learn_linear(self, returned: float, taken: float) -> None:
        self._linear_returns.append(returned)
        self._linear_taken.append(taken)
        if len(self._linear_returns) >= LINEAR_MIN_FRAMES:
            self._linear_db = float(np.percentile(self._linear_returns, LINEAR_QUANTILE))
            self._taken_db = float(np.median(self._linear_taken))

    @property
    def linear_return_db(self) -> float | None:
        """What the linear path leaves of echo alone, dB relative to the loudest 10 ms played in the preceding
        ECHO_WINDOW_MS (LINEAR_QUANTILE of the last LINEAR_FRAMES learned), None until learned (again, where a
        new placement of the reference could not be aligned)."""
        return self._linear_db

    @property
    def echo_return_db(self) -> float | None:
        """How loud the room returns the speaker's voice to the raw microphone, dB relative to the loudest 10 ms
        played in the preceding ECHO_WINDOW_MS (RETURN_QUANTILE of the recent learned frames), None until learned:
        about -10 over laptop speakers, far below NO_ECHO_DB where nothing comes back."""
        return self._return_db

    @property
    def no_echo(self) -> bool:
        """The room returns nothing of what the speaker plays (`echo_return_db` <= NO_ECHO_DB)."""
        return self._return_db is not None and self._return_db <= NO_ECHO_DB

    def _step_linear(self, mic: np.ndarray, p0: int, p1: int) -> tuple[np.ndarray | None, float | None]:
        """Feed one microphone frame to the linear path, placing the reference anew where the speaker's clock
        has moved away from the placement; returns the previous frame's verdict (`_linear`)."""
        # the speaker played through the frame (a reading may place part of it ~5 ms off)
        steady = p0 > 0 and p1 - p0 >= AEC_FRAME // 2
        self._gap |= p0 > 0 and not steady
        if p0 > 0 and abs(p1 - p0 - AEC_FRAME) <= 1:  # a reading of steady playing: it places the reference
            self._readings.append(self._mic_at - p0)
            self._history.append(self._mic_at - p0)
            if len(self._history) == STEP_READINGS:
                old = list(self._history)
                self._gap |= abs(float(np.median(old[-5:]) - np.median(old[:5]))) > STEP_SAMPLES
            seen = int(np.median(self._readings))
            # a move back to where the placement was aligned is the clock's wobble: no new placement
            moved = self._offset is None or abs(seen - self._offset) > RELOCK_SAMPLES
            drift = RELOCK_SAMPLES if self._gap else DRIFT_SAMPLES
            if self._clock_offset is None or (moved and abs(seen - self._clock_offset) > drift):
                readings = list(self._readings)
                agree = len(readings) == PLACE_READINGS and max(readings) - min(readings) <= RELOCK_SAMPLES // 3
                if agree:  # after an underrun the readings jump about for a while: place once they agree
                    self._place(seen)
                    self._readings.extend(readings)
                steady = agree
            self._since_lock += 1
        self._mic_at += AEC_FRAME
        if self._offset is None:
            return None, None
        verdict: tuple[np.ndarray | None, float | None] = (None, None)
        if self._bulk is not None or self._found(mic, steady):
            ref = self._stream(self._mic_at - AEC_FRAME - self._lead(self._offset))
            residual = self._path.push(ref, mic.astype(np.float64) / 32768.0)
            if self._aligning is not None and steady:
                self._align(self._raw_tail_previous / 32768.0, residual)
            verdict = self._linear(residual, self._raw_tail_previous)
        self._raw_tail_previous = mic.copy()
        self._previous = (steady, max(self._window, default=0.0))
        self._previous_loud = self._steady / STEADY_FRAMES >= self._previous[1] / 10
        return verdict

    def _found(self, mic: np.ndarray, steady: bool) -> bool:
        """Add the frame to the search for the room's delay (see BULK_FRAMES), and search every 50 ms once
        enough are in; where it is found, the path learns the frames since the placement with its reference
        placed after it."""
        assert self._offset is not None
        self._finding.append(mic.copy())
        if self.no_echo or not steady:
            return False
        heard = mic.astype(np.float64)
        # ref[j] is run sample (the frame's first) - offset - BULK_MAX_SAMPLES + j: heard[i] matches ref[i + k]
        # at the delay BULK_MAX_SAMPLES - k (LOOK_AHEAD earlier at the least)
        ref = self._stream(
            self._mic_at - AEC_FRAME - self._offset - BULK_MAX_SAMPLES, len(self._bulk_xc) + AEC_FRAME - 1
        )
        ref64 = ref.astype(np.float64)
        self._bulk_xc += np.correlate(ref64, heard, mode="valid")
        power = np.concatenate([[0.0], np.cumsum(np.square(ref64))])
        self._bulk_power += power[AEC_FRAME:] - power[:-AEC_FRAME]
        self._bulk_heard += float(np.dot(heard, heard))
        self._bulk_frames += 1
        if self._bulk_frames < BULK_FRAMES or self._bulk_frames % 5:
            return False
        played = self._bulk_power
        # (a delay whose reference was nearly silent has no say: its correlation is noise over nothing)
        norm = np.sqrt(np.maximum(played, 0.1 * float(np.max(played))) * self._bulk_heard + 1e-30)
        correlation = np.abs(self._bulk_xc) / norm
        shift = int(np.argmax(correlation))
        if correlation[shift] < BULK_MIN_CORRELATION:
            return False
        self._bulk = max(0, BULK_MAX_SAMPLES - shift - BULK_MARGIN)
        self._path.reset()
        self._forget_linear()
        lead = self._lead(self._offset)
        first = self._mic_at - len(self._finding) * AEC_FRAME  # the microphone sample of the first kept frame
        for k, frame in enumerate(list(self._finding)[:-1]):
            self._path.push(self._stream(first + k * AEC_FRAME - lead), frame / 32768.0)
            self._path.learn(echo_alone=True)
        self._finding.clear()
        return True

    def _align(self, mic: np.ndarray, residual: np.ndarray) -> None:
        """Collect what the kept model predicts after a new placement; after ALIGN_FRAMES, move the placement to
        where its prediction matches the microphone best."""
        assert self._aligning is not None and self._offset is not None
        self._aligning.append((mic, mic - residual))
        if len(self._aligning) < ALIGN_FRAMES:
            return
        lag, best = _best_lag(self._aligning)
        self._aligning = None
        stash, self._stash = self._stash, None
        if best < ALIGN_MIN_CORRELATION:
            self._forget_linear()  # the kept model does not fit here: what it leaves is not known
            return
        if lag:
            self._shift(lag)
        if best >= ALIGN_KEEP_CORRELATION and stash is not None and not self._linear_returns:
            # the model fits as well as before the move: what it learned still holds
            returns, taken, pending = stash
            for r, k in zip(returns, taken, strict=True):
                self._learn_linear(r, k)
            self._unsure.extend(pending)

    def _shift(self, lag: int) -> None:
        """The echo comes `lag` samples later than the placement has it: move the placement (the clock's
        readings still agree with where they were)."""
        assert self._offset is not None
        clock = self._clock_offset
        self._place(self._offset + lag, keep=True)
        self._clock_offset, self._aligning = clock, None

    def process(self, block: AudioBlock) -> AudioBlock:
        """The cleaned microphone audio: every whole 10 ms frame received so far, with the capture time of its
        first sample (AEC_DELAY samples before the first frame's own: the canceller's output is that late). In a
        room with no echo path (`no_echo`) the microphone comes out as it went in, as late."""
        if not self.enabled:
            return block
        if block.samples.dtype != np.int16 or block.samples.ndim != 1:
            raise InputError("EchoCanceller.process expects an AudioBlock of 1-D int16 samples")
        if not len(self._pending):
            self._pending_t = block.t
        self._pending = np.concatenate([self._pending, block.samples])
        n = len(self._pending) // AEC_FRAME * AEC_FRAME
        t0 = self._pending_t
        out = np.empty(n, np.int16)
        for i in range(0, n, AEC_FRAME):
            t = t0 + i / CAPTURE_RATE
            mic = self._pending[i : i + AEC_FRAME]
            p0, p1 = self._positions(t, AEC_FRAME)
            played = self._played_between(p0, p1, AEC_FRAME)
            self._learn_return(played, mic)
            ref = np.clip(played * 32768.0, -32768, 32767).astype(np.int16)
            self._adapted += bool(ref.any())
            self._apm.process_reverse_stream(self._frame_cls(ref.tobytes(), CAPTURE_RATE, 1, AEC_FRAME))
            frame = self._frame_cls(mic.tobytes(), CAPTURE_RATE, 1, AEC_FRAME)
            self._apm.set_stream_delay_ms(0)  # the reference is already placed at its capture time
            self._apm.process_stream(frame)  # cleans the frame's buffer in place (AEC3 keeps adapting either way)
            cleaned = np.concatenate([self._aec_hold, np.frombuffer(frame.data, dtype=np.int16)])
            self._aec_hold = cleaned[AEC_FRAME:]
            raw, self._raw_tail = self._raw_tail, mic.copy()
            linear, gate = self._step_linear(mic, p0, p1)
            if self.no_echo:
                out[i : i + AEC_FRAME] = raw
            elif linear is None or (not self._double_talk and level_dbfs(cleaned[:AEC_FRAME]) < level_dbfs(linear)):
                out[i : i + AEC_FRAME] = cleaned[:AEC_FRAME]  # echo alone: whichever took more of it off
            else:
                out[i : i + AEC_FRAME] = linear  # a user: their voice as it came, less the predicted echo
            self._gates.append((t - AEC_DELAY / CAPTURE_RATE, gate))
        self._pending = self._pending[n:]
        self._pending_t = t0 + n / CAPTURE_RATE
        return AudioBlock(out, t0 - AEC_DELAY / CAPTURE_RATE)
