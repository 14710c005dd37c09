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

Not thread-safe: one driver feeds `played()` / `new_run()` and `process()` from one thread (the event loop).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol, runtime_checkable

import numpy as np

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
AEC_DELAY = 128  # AEC3 hands back each frame's audio 8 ms late (measured; pinned by tests/test_echo.py)
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
        self._raw_tail = np.zeros(AEC_DELAY, np.int16)  # the microphone delayed as AEC3 delays it
        self._pending = np.zeros(0, np.int16)  # mic samples waiting for a whole frame
        self._pending_t = 0.0  # capture time of _pending[0]
        self.new_run()

    def new_run(self) -> None:
        """The sink's played position restarted at 0 (flush, a new reply): forget the old reference."""
        self._resampler = StreamResampler(self.ref_rate, CAPTURE_RATE)
        self._ref = np.zeros(0, np.float32)  # the written audio at CAPTURE_RATE; index 0 = run sample _ref_first
        self._ref_first = 0

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

    def reference_for(self, t: float, n: int = AEC_FRAME) -> np.ndarray:
        """The `n` samples (float32, CAPTURE_RATE) the speaker played from monotonic time t on; zeros where it
        played nothing (before the run, gaps after underruns, after the end)."""
        out = np.zeros(n, np.float32)
        scale = CAPTURE_RATE / self.ref_rate
        p0 = round(self.clock.played_before(t) * scale)
        p1 = round(self.clock.played_before(t + n / CAPTURE_RATE) * scale)
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

    def echo_dbfs(self, t: float, n: int) -> float:
        """The level the echo in `n` cleaned samples from capture time `t` may still have: the loudest 10 ms the
        speaker played from ECHO_WINDOW_MS before `t` to the block's end, plus RESIDUAL_DB once AEC3 has adapted
        (ADAPT_FRAMES; before, the echo may be as loud as what played); GATE_FLOOR_DBFS in a room that returns
        nothing (`no_echo`); SILENT_DBFS when the speaker played nothing then."""
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
            played = self.reference_for(t)
            self._learn_return(played, self._pending[i : i + AEC_FRAME])
            ref = np.clip(played * 32768.0, -32768, 32767).astype(np.int16)
            self._adapted += bool(ref.any())
            self._apm.process_reverse_stream(self._frame_cls(ref.tobytes(), CAPTURE_RATE, 1, AEC_FRAME))
            frame = self._frame_cls(self._pending[i : i + AEC_FRAME].tobytes(), CAPTURE_RATE, 1, AEC_FRAME)
            self._apm.set_stream_delay_ms(0)  # the reference is already placed at its capture time
            self._apm.process_stream(frame)  # cleans the frame's buffer in place (AEC3 keeps adapting either way)
            raw = np.concatenate([self._raw_tail, self._pending[i : i + AEC_FRAME]])
            self._raw_tail = raw[AEC_FRAME:]
            out[i : i + AEC_FRAME] = raw[:AEC_FRAME] if self.no_echo else np.frombuffer(frame.data, dtype=np.int16)
        self._pending = self._pending[n:]
        self._pending_t = t0 + n / CAPTURE_RATE
        return AudioBlock(out, t0 - AEC_DELAY / CAPTURE_RATE)
