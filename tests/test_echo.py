"""The echo canceller on synthetic rooms: the reference is placed by the speaker's clock, the echo (delay, gain,
reverb) drops by a measured echo-return-loss enhancement, and the user's voice comes through."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from assistant.audio.echo import ADAPT_FRAMES, AEC_DELAY, AEC_FRAME, ECHO_WINDOW_MS, RESIDUAL_DB, EchoCanceller
from assistant.audio.format import CAPTURE_RATE, SILENT_DBFS, TTS_RATE, AudioBlock, int16_to_float32, resample
from assistant.events import SpeechStarted
from tests.speech import needs_espeak, say

T_MIC = 1000.0  # capture time of the first microphone sample
BLOCK = 320  # 20 ms capture blocks


@dataclass
class SpeakerClock:
    """A speaker that starts the run's sample 0 at DAC time `start` and plays `written` samples at 24 kHz."""

    start: float
    written: int
    gap: tuple[float, float] | None = None  # an underrun: (from, to) in DAC time, nothing played

    def played_before(self, t: float) -> int:
        played = t - self.start
        if self.gap is not None and t > self.gap[0]:
            played -= min(t, self.gap[1]) - self.gap[0]
        return int(np.clip(round(played * TTS_RATE), 0, self.written))


def room_ir(delay_ms: float, gain_db: float, rt60_s: float = 0.3, drr_db: float = 6.0, seed: int = 0) -> np.ndarray:
    """A laptop-like echo path at 16 kHz: direct sound after `delay_ms` at `gain_db`, then a reverb tail that
    decays by 60 dB over `rt60_s` and carries `drr_db` less energy than the direct sound."""
    rng = np.random.default_rng(seed)
    d = round(delay_ms * CAPTURE_RATE / 1000)
    n = round(rt60_s * CAPTURE_RATE)
    tail = rng.standard_normal(n) * np.exp(-6.9 * np.arange(n) / n)
    tail[:16] = 0.0  # the first reflections arrive ~1 ms after the direct sound
    h = np.zeros(d + n)
    h[d:] = tail / np.linalg.norm(tail) * 10 ** (-drr_db / 20)
    h[d] = 1.0
    return h * 10 ** (gain_db / 20)


def tts_like(seconds: float) -> np.ndarray:
    """A long assistant reply: espeak-ng sentences at 24 kHz, float32 at about -20 dBFS RMS."""
    text = (
        "Sure, here is the weather for the next few days. Tomorrow will be sunny with a high of twenty degrees. "
        "On Wednesday clouds move in from the west, and by Thursday there is a good chance of rain."
    )
    x = int16_to_float32(say(text))
    x = np.tile(x, int(np.ceil(seconds * CAPTURE_RATE / len(x))))[: round(seconds * CAPTURE_RATE)]
    x = x / np.sqrt(np.mean(np.square(x))) * 0.1
    return resample(x, CAPTURE_RATE, TTS_RATE)


def run(canceller: EchoCanceller, mic: np.ndarray, block: int = BLOCK) -> np.ndarray:
    out = []
    for i in range(0, len(mic), block):
        got = canceller.process(AudioBlock(mic[i : i + block], T_MIC + i / CAPTURE_RATE))
        assert got.t == pytest.approx(T_MIC + (sum(len(o) for o in out) - AEC_DELAY) / CAPTURE_RATE)
        out.append(got.samples)
    return np.concatenate(out)[AEC_DELAY:]  # sample i is now the input's sample i


def power_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x.astype(np.float64))) + 1e-9))


def envelope_match(got: np.ndarray, want: np.ndarray, frame: int = 320) -> float:
    """Correlation of two signals' 20 ms level contours (dB): AEC3's filters shift phase, so waveforms differ."""
    n = min(len(got), len(want)) // frame

    def contour(x: np.ndarray) -> np.ndarray:
        return 10 * np.log10(np.mean(np.square(x[: n * frame].astype(np.float64).reshape(n, frame)), axis=1) + 1.0)

    return float(np.corrcoef(contour(got), contour(want))[0, 1])


def echo_room(
    ref24: np.ndarray, start_s: float, ir: np.ndarray, user: np.ndarray | None = None, user_at_s: float = 0.0
) -> np.ndarray:
    """The microphone: the speaker's audio (run started `start_s` after T_MIC) through `ir`, plus the user."""
    ref16 = resample(ref24, TTS_RATE, CAPTURE_RATE)
    lead = round(start_s * CAPTURE_RATE)
    at_speaker = np.concatenate([np.zeros(lead, np.float32), ref16])
    mic = np.convolve(at_speaker, ir)[: len(at_speaker)] * 32768.0
    if user is not None:
        k = round(user_at_s * CAPTURE_RATE)
        mic[k : k + len(user)] += user[: len(mic) - k]
    return np.clip(mic, -32768, 32767).astype(np.int16)


def test_reference_follows_the_speaker_clock() -> None:
    """The reference for a mic frame is what the DAC played then: zeros before the run and during an underrun."""
    ref = np.sin(np.arange(TTS_RATE) * 0.01).astype(np.float32)
    clock = SpeakerClock(start=T_MIC + 0.1, written=len(ref), gap=(T_MIC + 0.5, T_MIC + 0.6))
    ec = EchoCanceller(clock)
    ec.played(ref)
    ref16 = resample(ref, TTS_RATE, CAPTURE_RATE)
    assert not ec.reference_for(T_MIC).any()  # before the run
    # a frame 0.3 s into the run: run samples 0.2 s .. 0.21 s
    np.testing.assert_allclose(ec.reference_for(T_MIC + 0.3), ref16[3200:3360], atol=1e-6)
    assert not ec.reference_for(T_MIC + 0.55).any()  # the underrun
    np.testing.assert_allclose(ec.reference_for(T_MIC + 0.7), ref16[8000:8160], atol=1e-6)  # 0.1 s later
    # the run starts halfway through a frame: its first samples sit at the frame's end
    half = ec.reference_for(T_MIC + 0.1 - 0.005)
    assert not half[:80].any()
    np.testing.assert_allclose(half[80:], ref16[:80], atol=1e-6)


def test_new_run_forgets_the_old_reference() -> None:
    """After new_run() (a flush), sample positions refer to the new audio only."""
    clock = SpeakerClock(start=T_MIC, written=TTS_RATE)
    ec = EchoCanceller(clock)
    ec.played(np.full(TTS_RATE, 0.5, np.float32))
    ec.new_run()
    ec.played(np.full(TTS_RATE, -0.25, np.float32))
    assert ec.reference_for(T_MIC + 0.5) == pytest.approx(np.full(AEC_FRAME, -0.25), abs=1e-3)


def test_disabled_passes_blocks_through() -> None:
    """With echo cancellation off (headphones) blocks come back unchanged, with no frame hold-back."""
    ec = EchoCanceller(SpeakerClock(T_MIC, 0), enabled=False)
    block = AudioBlock(np.arange(333, dtype=np.int16), T_MIC)
    assert ec.process(block) is block


@needs_espeak
@pytest.mark.parametrize(("delay_ms", "gain_db"), [(30, 0.0), (120, 0.0), (60, -6.0)])
def test_echo_drops_and_the_user_survives(delay_ms: float, gain_db: float) -> None:
    """Echo through a reverberant path with delay and gain loses >= 20 dB once AEC3 has converged, and a user
    speaking at the echo's level during the reply keeps their level (within 6 dB) and their level contour
    stands out clearly better than in the microphone signal."""
    ref = tts_like(14.0)
    start = 0.2
    ir = room_ir(delay_ms, gain_db)
    echo_only = echo_room(ref, start, ir)
    user = say("Wait, stop, what about the weekend?").astype(np.float64)
    level = np.sqrt(np.mean(np.square(echo_only[CAPTURE_RATE:].astype(np.float64))))
    user = user / np.sqrt(np.mean(np.square(user))) * level  # as loud as the echo
    user_at = 10.0
    mic = echo_room(ref, start, ir, user, user_at)

    ec = EchoCanceller(SpeakerClock(start=T_MIC + start, written=len(ref)))
    for i in range(0, len(ref), 1920):  # the driver writes 80 ms chunks, ahead of playback
        ec.played(ref[i : i + 1920])
    out = run(ec, mic)

    settled = slice(5 * CAPTURE_RATE, round(user_at * CAPTURE_RATE))  # echo only, after 5 s of adaptation
    erle = power_db(mic[settled]) - power_db(out[settled])
    assert erle >= 20.0, f"ERLE {erle:.1f} dB"

    k = round(user_at * CAPTURE_RATE)
    talk = slice(k, k + len(user))
    got, want = out[talk].astype(np.float64), user[: len(out[talk])]
    loss, before, after = power_db(want) - power_db(got), envelope_match(mic[talk], want), envelope_match(got, want)
    assert loss <= 6.0 and after >= max(0.6, before + 0.15), (loss, before, after)


@needs_espeak
def test_any_block_size_keeps_every_sample_in_order() -> None:
    """Blocks of odd sizes come out as whole 10 ms frames, in order, each with its capture time (checked in run)."""
    x = say("Wait, stop, what about the weekend?")
    ec = EchoCanceller(SpeakerClock(T_MIC + 10, 0))  # nothing plays: the canceller only filters
    out = run(ec, x, block=333)
    assert len(out) == len(x) // AEC_FRAME * AEC_FRAME - AEC_DELAY
    assert envelope_match(out[1600:], x[1600 : len(out)]) > 0.9


def test_output_time_is_the_capture_time() -> None:
    """A noise burst captured at time T comes out in a block whose `t` places it at T (within 1 ms)."""
    x = np.zeros(CAPTURE_RATE, np.int16)
    x[8000:8400] = (np.random.default_rng(1).standard_normal(400) * 6000).astype(np.int16)
    ec = EchoCanceller(SpeakerClock(T_MIC + 10, 0))
    blocks = [ec.process(AudioBlock(x[i : i + BLOCK], T_MIC + i / CAPTURE_RATE)) for i in range(0, len(x), BLOCK)]
    first = next(b for b in blocks if (np.abs(b.samples) > 1000).any())
    loud = first.t + int(np.argmax(np.abs(first.samples) > 1000)) / CAPTURE_RATE
    assert loud == pytest.approx(T_MIC + 0.5, abs=0.001)


def test_echo_bound_follows_what_played_and_the_adaptation() -> None:
    """echo_dbfs is the loudest 10 ms played within the echo window before a block (silent: SILENT_DBFS), with
    no credit for cancelling until AEC3 has had ADAPT_FRAMES of reference, RESIDUAL_DB below it after, in a room
    that returns the speaker's sound (one that does not: test_no_echo_room_hears_a_user_over_the_reply)."""
    seconds = 5.0
    ref = np.zeros(round(seconds * TTS_RATE), np.float32)
    ref[: TTS_RATE // 2] = 0.1  # -20 dBFS for 0.5 s, then silence, then -20 dBFS from 1 s on
    ref[TTS_RATE:] = 0.1
    ec = EchoCanceller(SpeakerClock(start=T_MIC, written=len(ref)))
    ec.played(ref)
    assert ec.echo_return_db is None  # nothing learned yet: the echo may be as loud as what played
    assert ec.echo_dbfs(T_MIC - 1.0, BLOCK) == SILENT_DBFS  # before the run
    assert ec.echo_dbfs(T_MIC + 0.3, BLOCK) == pytest.approx(-20.0, abs=0.5)
    # within ECHO_WINDOW_MS after the speaker fell silent its echo may still come back; after it, not
    assert ec.echo_dbfs(T_MIC + 0.5 + ECHO_WINDOW_MS / 2000, BLOCK) == pytest.approx(-20.0, abs=0.5)
    assert ec.echo_dbfs(T_MIC + 0.52 + ECHO_WINDOW_MS / 1000, BLOCK) == SILENT_DBFS
    mic = echo_room(ref, 0.0, room_ir(30, 0.0))  # a room that returns what played
    run(ec, mic[: round(seconds * CAPTURE_RATE)])  # AEC3 sees 4 s of reference
    assert ec.echo_return_db is not None and not ec.no_echo
    assert ec.echo_dbfs(T_MIC + 2.0, BLOCK) == pytest.approx(-20.0 + RESIDUAL_DB, abs=0.5)
    assert ADAPT_FRAMES * AEC_FRAME < 4 * CAPTURE_RATE


def test_the_daemon_cancels_only_over_a_speaker_with_a_dac_clock() -> None:
    """The canceller is built for a speaker that tells what it played when, unless echo.enabled is off
    (headphones); a sink without that clock (no sound card, a Realtime client) gets none."""
    from assistant.audio.sinks import ClientSink, NullSink
    from assistant.config import Config
    from assistant.policies import make_canceller

    cfg = Config()
    speaker = SpeakerClock(start=T_MIC, written=0)
    assert isinstance(make_canceller(cfg, speaker, TTS_RATE), EchoCanceller)  # type: ignore[arg-type]
    assert make_canceller(cfg.replace({"echo.enabled": False}), speaker, TTS_RATE) is None  # type: ignore[arg-type]
    assert make_canceller(cfg, NullSink(), TTS_RATE) is None
    assert make_canceller(cfg, ClientSink(TTS_RATE), TTS_RATE) is None


# ---- the room-aware barge-in gate: the canceller, the gate and the real VAD over synthetic rooms ---------------

USER_TEXT = "Stop, wait a moment please, what about Saturday?"


@dataclass
class Heard:
    starts: list[float]  # seconds into the capture at which the VAD decided a SpeechStarted
    canceller: EchoCanceller
    out: np.ndarray  # what the VAD heard; sample i is the microphone's sample i


def listen(mic: np.ndarray, ref24: np.ndarray, start_s: float, clock: SpeakerClock | None = None) -> Heard:
    """The daemon's microphone path over a synthetic room: each 20 ms block cleaned by the canceller, then judged
    by the real VAD against the canceller's gate, as Conversation.on_audio and the turn core do it."""
    from assistant.config import VadConfig
    from assistant.vad import Vad

    ec = EchoCanceller(clock or SpeakerClock(start=T_MIC + start_s, written=len(ref24)))
    for i in range(0, len(ref24), 1920):  # the driver writes 80 ms chunks, ahead of playback
        ec.played(ref24[i : i + 1920])
    vad = Vad(VadConfig())
    starts, fed, heard = [], 0, []
    for i in range(0, len(mic), BLOCK):
        out = ec.process(AudioBlock(mic[i : i + BLOCK], T_MIC + i / CAPTURE_RATE))
        gate = ec.echo_dbfs(out.t, len(out.samples))
        vad.set_playback(gate > SILENT_DBFS, gate, ec.linear_at(out.t, len(out.samples)))
        fed += len(out.samples)
        starts += [(fed - AEC_DELAY) / CAPTURE_RATE for e in vad.feed(out.samples) if isinstance(e, SpeechStarted)]
        heard.append(out.samples)
    return Heard(starts, ec, np.concatenate(heard)[AEC_DELAY:])


def user_speech(level: float, text: str = USER_TEXT) -> np.ndarray:
    """An interrupting sentence as float64 int16-scale samples at RMS `level`."""
    user = say(text).astype(np.float64)
    return user / np.sqrt(np.mean(np.square(user))) * level


@needs_espeak
def test_no_echo_room_hears_a_user_over_the_reply() -> None:
    """A room with no echo path (headphones, a far speaker): the canceller learns that the microphone stays
    silent while the reply plays, passes the microphone through untouched (AEC3 would duck the user), and the
    VAD reports a user at a normal voice, 1 s into the reply, within 400 ms of their first sample."""
    from assistant.audio.echo import GATE_FLOOR_DBFS, NO_ECHO_DB

    ref = tts_like(6.0)
    start, user_at = 0.2, 1.2
    quiet = echo_room(ref, start, np.zeros(1))  # the speaker does not reach the microphone at all
    heard = listen(quiet, ref, start)
    assert heard.starts == [], "silence is nobody"
    learned = heard.canceller.echo_return_db
    assert learned is not None and learned <= NO_ECHO_DB, learned

    # about -21 dBFS; voiced from its first frame ("Stop," of USER_TEXT pauses in its 4th, restarting the VAD's run)
    mic = echo_room(ref, start, np.zeros(1), user_speech(3000.0, "Hold on, what about Saturday?"), user_at)
    heard = listen(mic, ref, start)
    assert heard.starts and user_at < heard.starts[0] <= user_at + 0.4, heard.starts
    assert heard.canceller.echo_dbfs(T_MIC + 2.0, BLOCK) == GATE_FLOOR_DBFS  # the reply plays, nothing returns
    k = round(user_at * CAPTURE_RATE)
    np.testing.assert_array_equal(heard.out[k:], mic[k : len(heard.out)])  # untouched (and as late as AEC3)


@needs_espeak
@pytest.mark.parametrize("gain_db", [0.0, -6.0])
def test_echo_room_never_reports_the_echo_alone(gain_db: float) -> None:
    """Over laptop speakers (60 ms, reverb) the canceller learns that the room returns the reply and keeps AEC3's
    output and the gate (the played peak less RESIDUAL_DB): 6 s of reply and its reverberation tail after the
    speaker stops are never reported as a user; nor after an underrun (100 ms of silence from the speaker 3 s
    in: the linear path's reference is placed anew). A user speaking well over the echo (+12 dB) 4 s in is
    reported while they speak."""
    ref = (tts_like(6.0) * 10 ** (-10 / 20)).astype(np.float32)  # -30 dBFS: the user 12 dB over its echo fits int16
    start = 0.2
    ir = room_ir(60, gain_db)
    echo = echo_room(np.concatenate([ref, np.zeros(TTS_RATE, np.float32)]), start, ir)  # + 1 s of tail
    heard = listen(echo, ref, start)
    assert heard.starts == [], f"the echo alone was reported at {heard.starts} s"
    learned = heard.canceller.echo_return_db
    assert learned is not None and not heard.canceller.no_echo, learned  # it returns the reply

    gap = round(3.0 * CAPTURE_RATE)
    ref16 = resample(np.concatenate([ref, np.zeros(TTS_RATE, np.float32)]), TTS_RATE, CAPTURE_RATE)
    played = np.concatenate([np.zeros(round(start * CAPTURE_RATE)), ref16[:gap], np.zeros(1600), ref16[gap:]])
    underrun = np.clip(np.convolve(played, ir)[: len(played)] * 32768.0, -32768, 32767).astype(np.int16)
    clock = SpeakerClock(T_MIC + start, len(ref), gap=(T_MIC + start + 3.0, T_MIC + start + 3.1))
    heard = listen(underrun, ref, start, clock)
    assert heard.starts == [], f"the echo alone was reported at {heard.starts} s after an underrun"

    level = np.sqrt(np.mean(np.square(echo[CAPTURE_RATE : 6 * CAPTURE_RATE].astype(np.float64))))
    user_at = 4.0
    mic = echo_room(ref, start, ir, user_speech(level * 10 ** (12 / 20)), user_at)
    heard = listen(mic, ref, start)
    assert heard.starts and user_at < heard.starts[0] <= user_at + len(say(USER_TEXT)) / CAPTURE_RATE, heard.starts


# ---- the linear echo path beside AEC3: a user as loud as the echo ---------------------------------------------


def test_echo_path_correlations_from_first_rows_equal_the_full_sums() -> None:
    """The per-bin correlation matrix the path assembles from its first rows (its Toeplitz shortcut) equals the
    forgotten sum of the reference's outer products, and its solve equals the ridge least-squares solution."""
    from assistant.audio import echo_path

    rng = np.random.default_rng(3)
    path = echo_path.EchoPath(partitions=4)
    full = np.zeros((echo_path.BINS, 4, 4), np.complex128)
    cross = np.zeros((echo_path.BINS, 4), np.complex128)
    for _ in range(echo_path.SOLVE_EVERY * 3):
        path.push(rng.standard_normal(echo_path.BLOCK), rng.standard_normal(echo_path.BLOCK))
        x = path._spectra
        full = echo_path.FORGET * full + x[:, :, None] * x[:, None, :].conj()
        cross = echo_path.FORGET * cross + x * path._mic_spectrum.conj()[:, None]
        path.learn(echo_alone=True)
    ridge = (echo_path.RIDGE * np.real(full[:, 0, 0]) + 1e-12)[:, None, None] * np.eye(4)
    want = np.linalg.solve(full + ridge, cross[:, :, None])[:, :, 0].conj()
    np.testing.assert_allclose(path._weights, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())


@needs_espeak
def test_echo_path_learns_the_room_within_a_second() -> None:
    """Fed the played reply and the microphone of a reverberant room (60 ms, 0 dB), the linear path takes >= 12 dB
    of echo off in the reply's second second: it has learned the room from the first."""
    from assistant.audio.echo_path import BLOCK, EchoPath

    ref = resample(tts_like(3.0), TTS_RATE, CAPTURE_RATE).astype(np.float64)
    mic = np.convolve(ref, room_ir(60, 0.0, rt60_s=0.12))[: len(ref)]
    path = EchoPath()
    out = []
    for i in range(0, len(ref) - BLOCK + 1, BLOCK):
        out.append(path.push(ref[i : i + BLOCK], mic[i : i + BLOCK]))
        path.learn(echo_alone=True)
    left = np.concatenate(out)[BLOCK:]  # the residual of block i comes back with block i + 1
    second = slice(CAPTURE_RATE, 2 * CAPTURE_RATE)
    erle = power_db(mic[second]) - power_db(left[second])
    assert erle >= 12.0, f"{erle:.1f} dB"


@needs_espeak
def test_echo_path_turns_down_what_it_cannot_predict_more_than_a_user() -> None:
    """Over a speaker that distorts (echo no linear model predicts) with a path that has heard 1 s of the reply,
    each bin of the residual turned down by the echo it is expected to keep takes >= 5 dB more of the echo alone
    off, and a user at the echo's level then stands >= 4 dB further above the echo alone than in the residual."""
    from assistant.audio.echo_path import BLOCK, EchoPath

    ref = resample(tts_like(3.0), TTS_RATE, CAPTURE_RATE).astype(np.float64)
    echo = np.convolve(np.tanh(4 * ref) / 4, room_ir(60, 0.0, rt60_s=0.2))[: len(ref)]
    at = CAPTURE_RATE  # the user begins 1 s into the reply; the path learns from echo alone until then
    user = say("No no, what about Saturday?").astype(np.float64)
    user *= np.sqrt(np.mean(np.square(echo[at : 2 * at])) / np.mean(np.square(user)))
    with_user = echo.copy()
    with_user[at : at + len(user)] += user[: len(echo) - at]

    def run(mic: np.ndarray) -> tuple[float, float]:
        path, residual, turned_down = EchoPath(), [], []
        for i in range(0, len(ref) - BLOCK + 1, BLOCK):
            residual.append(path.push(ref[i : i + BLOCK], mic[i : i + BLOCK]))
            turned_down.append(path.suppressed.copy())
            path.learn(echo_alone=i < at)
        span = slice(at + BLOCK, at + BLOCK + CAPTURE_RATE // 2)  # (each block comes back one block later)
        return power_db(np.concatenate(residual)[span]), power_db(np.concatenate(turned_down)[span])

    residual_alone, turned_alone = run(echo)
    residual_user, turned_user = run(with_user)
    assert turned_alone <= residual_alone - 5.0, (residual_alone, turned_alone)
    assert turned_user - turned_alone >= residual_user - residual_alone + 4.0, (residual_user, turned_user)


@needs_espeak
@pytest.mark.parametrize("gain_db", [0.0, -6.0])
@pytest.mark.parametrize("user_at", [1.0, 4.0])
def test_a_user_as_loud_as_the_echo_is_heard_over_the_reply(gain_db: float, user_at: float) -> None:
    """Over laptop speakers (60 ms, reverb), a user exactly as loud as the reply's echo, 1 s and 4 s into the
    reply, is reported within 400 ms of their first sample (AEC3 alone turns them down 30-70 dB): the linear path
    hands back their voice less the predicted echo and gates at what it leaves of echo alone, and the VAD starts
    on 7 of 10 frames over that gate (their dips under the echo broke 10 in a row 1 s in); nothing else is
    reported."""
    ref = (tts_like(8.0) * 10 ** (-10 / 20)).astype(np.float32)
    start = 0.2
    ir = room_ir(60, gain_db)
    echo = echo_room(ref, start, ir)
    level = np.sqrt(np.mean(np.square(echo[CAPTURE_RATE : 4 * CAPTURE_RATE].astype(np.float64))))
    user = user_speech(level, "No no, what about Saturday?")  # voiced from its first frame, like the room test's
    mic = echo_room(ref, start, ir, user, start + user_at)  # `user_at` after the reply's first sample, as in the room
    heard = listen(mic, ref, start)
    first = start + user_at + int(np.flatnonzero(np.abs(user) > 100)[0]) / CAPTURE_RATE
    assert heard.starts and first <= heard.starts[0] <= first + 0.4, (first, heard.starts)
    assert len(heard.starts) == 1, heard.starts
    assert heard.canceller.linear_return_db is not None


@needs_espeak
def test_a_user_as_loud_as_the_echo_is_heard_over_a_far_speaker() -> None:
    """Where the room delays the echo 110 ms past the speaker's DAC time (the room test's 120 ms loop), a user as
    loud as the echo, 1.5 s into the reply, is reported within 400 ms of their first sample and nothing else is:
    the linear path finds the room's delay from the signal instead of spending its 160 ms window on it."""
    ref = (tts_like(6.0) * 10 ** (-10 / 20)).astype(np.float32)
    start, user_at = 0.2, 1.7
    ir = room_ir(110.0, 0.0)
    echo = echo_room(ref, start, ir)
    level = np.sqrt(np.mean(np.square(echo[CAPTURE_RATE : 4 * CAPTURE_RATE].astype(np.float64))))
    user = user_speech(level, "No no, what about Saturday?")
    heard = listen(echo_room(ref, start, ir, user, user_at), ref, start)
    first = user_at + int(np.flatnonzero(np.abs(user) > 100)[0]) / CAPTURE_RATE
    assert heard.starts and first <= heard.starts[0] <= first + 0.4, (first, heard.starts)
    assert len(heard.starts) == 1, heard.starts
    assert listen(echo, ref, start).starts == [], "the echo alone is nobody"


@pytest.mark.parametrize(("user", "holds"), [(False, 0), (True, 1)])
def test_echo_the_path_took_most_of_is_no_user_over_a_low_bound(user: bool, holds: int) -> None:
    """With a bound learned where the path fit well (35 dB under the peak), frames of echo alone it takes only
    12 dB off start no hold, while a user as loud as the echo (3 dB taken at most) does."""
    ec = EchoCanceller(SpeakerClock(start=T_MIC, written=0))
    ec._aligning, ec._previous, ec._linear_db, ec._taken_db = None, (True, 0.1), -35.0, 30.0  # peak -10 dBFS
    rng = np.random.default_rng(0)
    for _ in range(10):
        echo = rng.normal(0.0, 0.1, AEC_FRAME)  # -20 dBFS
        left = echo * 10 ** (-12 / 20)  # what the path leaves of it
        voice = rng.normal(0.0, 0.1, AEC_FRAME) if user else np.zeros(AEC_FRAME)
        mic = np.round((echo + voice) * 32768.0).astype(np.int16)
        ec._path.suppressed = left + voice  # (turned down no further: the leftover expected there is not known)
        ec._linear(left + voice, mic)
    assert ec.holds == holds
