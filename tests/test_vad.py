"""The VAD state machine: exact event positions on synthetic frames, then espeak-ng speech with pauses and noise.

Synthetic audio is built from 30 ms frames of a vowel-like buzz ('1') and digital silence ('0'), which webrtcvad
plus the noise gate classify exactly, so every expected position follows from the config by arithmetic:
F = 480 samples per frame; min_speech 150 ms = 5 frames; early silence 200 ms = 7 frames; hangover 700 ms =
24 frames; resume after a pause: half of min_speech = 3 frames; short hangover 400 ms = 14 frames; barge-in
min speech 300 ms = 10 frames; pre-roll 300 ms = 4800 samples.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from assistant.audio.format import level_dbfs
from assistant.config import VadConfig
from assistant.errors import ConfigError, InputError
from assistant.events import PauseStarted, SilenceStarted, SpeechEnded, SpeechResumed, SpeechStarted
from assistant.vad import State, Vad, VadEvent
from tests.speech import brown_noise, needs_espeak, pattern, say, silence, speech_span, trimmed

F = 480
CFG = VadConfig()  # the defaults the arithmetic above uses
T = 7.5  # the fake clock's reading: events carry whatever the clock says


def vad(**changes: object) -> Vad:
    return Vad(dataclasses.replace(CFG, **changes), clock=lambda: T)


def feed_frames(v: Vad, audio: np.ndarray) -> list[tuple[int, VadEvent]]:
    """Feed one frame at a time; each event with the index of the frame whose feed returned it."""
    return [(i, e) for i in range(len(audio) // F) for e in v.feed(audio[i * F : (i + 1) * F])]


def test_config_arithmetic_matches_docstring() -> None:
    """The defaults are the ones the expected positions below are derived from."""
    assert (CFG.frame_ms, CFG.min_speech_ms, CFG.early_silence_ms, CFG.hangover_ms) == (30, 150, 200, 700)
    assert (CFG.preroll_ms, CFG.short_hangover_ms, CFG.barge_in_min_speech_ms) == (300, 400, 300)


def test_utterance_with_short_pause_exact_events() -> None:
    """Speech, a 300 ms pause (< hangover), more speech, silence: one utterance with exact positions and timing."""
    audio = pattern("0" * 10 + "1" * 20 + "0" * 10 + "1" * 10 + "0" * 30)
    got = feed_frames(vad(), audio)
    assert got == [
        (14, SpeechStarted(start_sample=0, onset_sample=10 * F, time=T)),  # 5th voiced frame
        (36, SilenceStarted(sample=30 * F, time=T)),  # 7th silent frame
        (42, SpeechResumed(sample=40 * F, time=T)),  # 3rd voiced frame after the pause
        (56, SilenceStarted(sample=50 * F, time=T)),
        (73, SpeechEnded(start_sample=0, end_sample=50 * F, time=T)),  # 24th silent frame
    ]


def test_positions_do_not_depend_on_block_sizes() -> None:
    """Feeding the same audio in random block sizes (1 sample up to 2 s) gives identical events."""
    audio = pattern("0" * 15 + "1" * 20 + "0" * 10 + "1" * 10 + "0" * 30 + "1" * 8 + "0" * 30)
    whole = vad().feed(audio)
    rng = np.random.default_rng(0)
    for _ in range(5):
        v, got, i = vad(), [], 0
        while i < len(audio):
            n = int(rng.choice([1, 7, 479, 480, 481, 1000, 32000]))
            got += v.feed(audio[i : i + n])
            i += n
        assert got == whole
    assert [type(e) for e in whole] == [
        SpeechStarted,
        SilenceStarted,
        SpeechResumed,
        SilenceStarted,
        SpeechEnded,
        SpeechStarted,
        SilenceStarted,
        SpeechEnded,
    ]
    assert whole[5] == SpeechStarted(start_sample=85 * F - 4800, onset_sample=85 * F, time=T)


def test_shorter_than_min_speech_is_ignored() -> None:
    """4 voiced frames (120 ms < 150 ms) start nothing; 5 do."""
    assert vad().feed(pattern("0" * 10 + "1" * 4 + "0" * 40)) == []
    events = vad().feed(pattern("0" * 10 + "1" * 5 + "0" * 40))
    assert events[0] == SpeechStarted(start_sample=0, onset_sample=10 * F, time=T)
    assert events[-1] == SpeechEnded(start_sample=0, end_sample=15 * F, time=T)


def test_blip_inside_a_pause_does_not_resume() -> None:
    """A 60 ms burst inside a pause neither resumes speech nor restarts the hangover count."""
    got = feed_frames(vad(), pattern("0" * 10 + "1" * 20 + "0" * 10 + "11" + "0" * 30))
    assert got[-1] == (30 + 24 - 1, SpeechEnded(start_sample=0, end_sample=30 * F, time=T))
    assert not any(isinstance(e, SpeechResumed) for _, e in got)


def test_voice_before_the_silence_is_reported_restarts_it() -> None:
    """Issue 13 (d): a 60 ms voiced run 90 ms into a pause, before early_silence_ms, restarts the silence:
    SilenceStarted comes after early_silence_ms with no voiced frame at all and places the silence after the run
    (a stop and a syllable inside a word had passed for 150 ms of silence, where Smart Turn was then asked)."""
    got = feed_frames(vad(early_silence_ms=150), pattern("0" * 10 + "1" * 20 + "000" + "11" + "0" * 30))
    assert got == [
        (14, SpeechStarted(start_sample=0, onset_sample=10 * F, time=T)),
        (39, SilenceStarted(sample=35 * F, time=T)),  # the 5th silent frame after the run
        (58, SpeechEnded(start_sample=0, end_sample=35 * F, time=T)),  # the hangover counts from there too
    ]


def test_pause_notice_comes_before_the_silence_and_again_after_voice() -> None:
    """With pause_notice_ms 90 < early_silence_ms 150, PauseStarted comes at the 3rd silent frame with the pause's
    first sample, and again for the new pause after a voiced run; SilenceStarted then confirms that same sample.
    With the notice off (0) or not earlier than the silence report there is none."""
    audio = pattern("0" * 10 + "1" * 20 + "000" + "11" + "0" * 30)
    got = feed_frames(vad(early_silence_ms=150, pause_notice_ms=90), audio)
    assert got == [
        (14, SpeechStarted(start_sample=0, onset_sample=10 * F, time=T)),
        (32, PauseStarted(sample=30 * F, time=T)),
        (37, PauseStarted(sample=35 * F, time=T)),
        (39, SilenceStarted(sample=35 * F, time=T)),
        (58, SpeechEnded(start_sample=0, end_sample=35 * F, time=T)),
    ]
    for notice in (0, 150, 180):
        events = vad(early_silence_ms=150, pause_notice_ms=notice).feed(audio)
        assert not any(isinstance(e, PauseStarted) for e in events), notice


def test_preroll_is_clamped_to_previous_utterance_and_stream_start() -> None:
    """The pre-roll reaches back 300 ms, never before sample 0 and never into the previous utterance."""
    audio = pattern("0" * 3 + "1" * 10 + "0" * 25 + "1" * 10 + "0" * 30)
    events = vad().feed(audio)
    starts = [e for e in events if isinstance(e, SpeechStarted)]
    ends = [e for e in events if isinstance(e, SpeechEnded)]
    assert starts[0] == SpeechStarted(start_sample=0, onset_sample=3 * F, time=T)
    assert ends[0].end_sample == 13 * F
    assert starts[1] == SpeechStarted(start_sample=38 * F - 4800, onset_sample=38 * F, time=T)
    with_long_preroll = vad(preroll_ms=3000).feed(audio)
    assert [e for e in with_long_preroll if isinstance(e, SpeechStarted)][1].start_sample == 13 * F


def test_max_utterance_truncates_then_continues() -> None:
    """Speech longer than max_utterance_s is cut (truncated=True) and what follows is a new utterance."""
    got = feed_frames(vad(max_utterance_s=1.0), pattern("0" * 10 + "1" * 60 + "0" * 30))
    # 1 s = 16000 samples after the onset at 4800: the first frame end at or past 20800 is 44 * F = 21120
    assert got == [
        (14, SpeechStarted(start_sample=0, onset_sample=10 * F, time=T)),
        (43, SpeechEnded(start_sample=0, end_sample=44 * F, time=T, truncated=True)),
        (48, SpeechStarted(start_sample=44 * F, onset_sample=44 * F, time=T)),
        (76, SilenceStarted(sample=70 * F, time=T)),
        (93, SpeechEnded(start_sample=44 * F, end_sample=70 * F, time=T)),
    ]


def test_playback_needs_longer_and_louder_speech() -> None:
    """While the assistant speaks, a start needs 300 ms and 6 dB over the playback level."""
    audio = pattern("0" * 10 + "1" * 20 + "0" * 30)
    level = level_dbfs(audio[10 * F : 11 * F])
    v = vad()
    v.set_playback(True, level - 5.0)  # only 5 dB over the playback: its own echo, not the user
    assert v.feed(audio) == []
    v = vad()
    v.set_playback(True, level - 7.0)
    got = feed_frames(v, audio)
    assert got[0] == (19, SpeechStarted(start_sample=0, onset_sample=10 * F, time=T))  # 10th voiced frame
    v.set_playback(False)
    v.reset()
    assert feed_frames(v, audio)[0][0] == 14


def test_playback_linear_gate_starts_on_7_of_10_frames() -> None:
    """Over the echo canceller's linear gate, a user whose voice dips for 2 frames starts once 7 of the 10 frames
    from their first are voiced, from that first; over AEC3's gate alone the same audio needs 10 in a row and
    never starts."""
    audio = pattern("0" * 10 + "1" * 5 + "00" + "1" * 3 + "0" * 20)
    level = level_dbfs(audio[10 * F : 11 * F])
    v = vad()
    v.set_playback(True, level - 7.0, linear=True)
    assert feed_frames(v, audio)[0] == (19, SpeechStarted(start_sample=0, onset_sample=10 * F, time=T))
    v = vad()
    v.set_playback(True, level - 7.0)
    assert v.feed(audio) == []


def test_playback_linear_window_is_judged_on_a_voiceless_frame_too() -> None:
    """7 frames over the linear gate, then a pause (a user's dip between words): the user starts on the frame that
    fills the 10-frame window from their first, though that frame is silent, from that first."""
    audio = pattern("0" * 10 + "1" * 7 + "0" * 20)
    level = level_dbfs(audio[10 * F : 11 * F])
    v = vad()
    v.set_playback(True, level - 7.0, linear=True)
    assert feed_frames(v, audio)[0] == (19, SpeechStarted(start_sample=0, onset_sample=10 * F, time=T))


def test_playback_linear_votes_are_the_last_10_frames_only() -> None:
    """Linear-gate frames older than the last 10, or from before the playback stopped, do not count towards 7."""
    audio = pattern("0" * 10 + "1" * 5 + "0" * 6 + "1" * 3 + "0" * 20)
    level = level_dbfs(audio[10 * F : 11 * F])
    v = vad()
    v.set_playback(True, level - 7.0, linear=True)
    assert v.feed(audio) == []  # 5 + 3 voiced frames, never 7 within 10
    v = vad()
    v.set_playback(True, level - 7.0, linear=True)
    assert v.feed(audio[: 15 * F]) == []
    v.set_playback(False)
    v.set_playback(True, level - 7.0, linear=True)
    assert v.feed(pattern("11")) == []  # 5 + 2 in a window of 7 frames, but the playback stopped in between


def test_adaptive_hangover_short_after_fading_phrase() -> None:
    """With adaptive_hangover, a phrase whose last frames fade by 12 dB ends after 400 ms; an abrupt stop after 700."""
    fading = pattern("0" * 10 + "1" * 20 + "qqq" + "0" * 40, amplitudes={"q": 0.075})
    abrupt = pattern("0" * 10 + "1" * 23 + "0" * 40)
    end = SpeechEnded(start_sample=0, end_sample=33 * F, time=T)
    assert feed_frames(vad(adaptive_hangover=True), fading)[-1] == (33 + 14 - 1, end)
    assert feed_frames(vad(adaptive_hangover=True), abrupt)[-1] == (33 + 24 - 1, end)
    assert feed_frames(vad(adaptive_hangover=False), fading)[-1] == (33 + 24 - 1, end)


def test_states_and_reset() -> None:
    """The machine passes quiet -> starting -> speaking -> stopping, and reset() returns to quiet at position 0."""
    v = vad()
    seen = []
    for frame in pattern("0" * 2 + "1" * 6 + "0" * 3).reshape(-1, F):
        v.feed(frame)
        seen.append(v.state)
    assert seen == [State.QUIET] * 2 + [State.STARTING] * 4 + [State.SPEAKING] * 2 + [State.STOPPING] * 3
    v.feed(np.zeros(100, np.int16))
    v.reset()
    assert (v.state, v.position) == (State.QUIET, 0)
    assert v.feed(pattern("0" * 2 + "1" * 5))[0].onset_sample == 2 * F


def test_reset_to_an_origin_counts_positions_from_it() -> None:
    """After reset(origin) every position is the origin plus the samples since, the pre-roll never reaching back
    past the origin (the turn core resets its VAD to the capture position and takes events as they come)."""
    v = vad()
    v.reset(100_000)
    events = v.feed(pattern("0" * 3 + "1" * 10 + "0" * 30))
    assert events[0] == SpeechStarted(start_sample=100_000, onset_sample=100_000 + 3 * F, time=T)
    assert events[-1] == SpeechEnded(start_sample=100_000, end_sample=100_000 + 13 * F, time=T)


def test_bad_input_is_named() -> None:
    """float32, stereo and non-arrays are refused with a message naming the conversion; bad rates too."""
    v = vad()
    for bad in (np.zeros(480, np.float32), np.zeros((480, 2), np.int16), [0] * 480):
        with pytest.raises(InputError, match="expects a 1-D int16 array"):
            v.feed(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="VAD sample rate 22050 Hz is not supported"):
        Vad(CFG, sample_rate=22050)


# ---- espeak-ng speech -------------------------------------------------------------------------------------

SENTENCES = ("Hello there, what is the weather like today?", "Please turn on the lights in the kitchen.")
MS100 = 1600  # 100 ms at 16 kHz


def two_sentences(lead: float = 0.5, gap: float = 1.5) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Two sentences with silence around them, and each one's true (onset, end) in the result."""
    parts, spans, pos = [silence(lead)], [], len(silence(lead))
    for text in SENTENCES:
        s = say(text)
        on, off = speech_span(s)
        spans.append((pos + on, pos + off))
        parts += [s, silence(gap)]
        pos += len(s) + len(silence(gap))
    return np.concatenate(parts), spans


def assert_one_pair_per_sentence(events: list[VadEvent], spans: list[tuple[int, int]]) -> None:
    pairs = [e for e in events if isinstance(e, SpeechStarted | SpeechEnded)]
    assert [type(e) for e in pairs] == [SpeechStarted, SpeechEnded] * len(spans), pairs
    for started, ended, (onset, end) in zip(pairs[::2], pairs[1::2], spans, strict=True):
        assert isinstance(started, SpeechStarted) and isinstance(ended, SpeechEnded)
        assert onset - F <= started.onset_sample <= onset + MS100  # detected within 100 ms of the true onset
        assert started.start_sample <= onset  # the pre-roll holds the first syllable
        assert end - MS100 <= ended.end_sample <= end + 2 * MS100
        assert not ended.truncated


@needs_espeak
@pytest.mark.parametrize("frame_ms", [10, 20, 30])
@pytest.mark.parametrize("aggressiveness", [0, 3])
def test_espeak_sentences_one_pair_each(frame_ms: int, aggressiveness: int) -> None:
    """Two spoken sentences separated by silence give exactly two start/end pairs at the true onsets and ends,
    for every frame length and at both ends of the aggressiveness range."""
    audio, spans = two_sentences()
    cfg = dataclasses.replace(CFG, frame_ms=frame_ms, aggressiveness=aggressiveness)
    assert_one_pair_per_sentence(Vad(cfg).feed(audio), spans)


@needs_espeak
def test_espeak_speech_from_the_first_sample() -> None:
    """Speech that begins with the stream (no silence to learn the noise floor from) is still caught in time."""
    audio, spans = two_sentences(lead=0.0)
    assert_one_pair_per_sentence(Vad(CFG).feed(audio), spans)


@needs_espeak
def test_espeak_mid_sentence_pause_is_one_utterance() -> None:
    """A 450 ms pause between words (< 700 ms hangover) is one utterance, with SilenceStarted/SpeechResumed."""
    first, second = trimmed(say("Turn on the lights")), trimmed(say("in the kitchen please."))
    audio = np.concatenate([silence(0.5), first, silence(0.45), second, silence(1.5)])
    events = Vad(CFG).feed(audio)
    second_onset = len(silence(0.5)) + len(first) + len(silence(0.45))
    assert_one_pair_per_sentence(events, [(len(silence(0.5)), second_onset + len(second))])
    resumed = [e.sample for e in events if isinstance(e, SpeechResumed)]
    assert any(second_onset - F <= r <= second_onset + MS100 for r in resumed), (resumed, second_onset)


@needs_espeak
@pytest.mark.parametrize("snr_db", [20.0, 10.0])
def test_espeak_in_background_noise(snr_db: float) -> None:
    """Under continuous background rumble at 20 and 10 dB SNR the two sentences still give exactly two pairs."""
    audio, spans = two_sentences()
    speech_rms = float(np.sqrt(np.mean(np.square(say(SENTENCES[0]).astype(np.float64)))))
    noisy = audio + brown_noise(len(audio), speech_rms / 10 ** (snr_db / 20))
    events = Vad(CFG).feed(np.clip(noisy, -32768, 32767).astype(np.int16))
    assert_one_pair_per_sentence(events, spans)


@needs_espeak
def test_webrtcvad_alone_calls_the_noise_speech() -> None:
    """Why the noise gate exists: with it off, the 10 dB SNR rumble keeps webrtcvad 'speaking' (not two pairs)."""
    audio, _ = two_sentences()
    speech_rms = float(np.sqrt(np.mean(np.square(say(SENTENCES[0]).astype(np.float64)))))
    noisy = np.clip(audio + brown_noise(len(audio), speech_rms / 10**0.5), -32768, 32767).astype(np.int16)
    events = Vad(dataclasses.replace(CFG, noise_gate_db=0.0)).feed(noisy)
    assert sum(isinstance(e, SpeechEnded) for e in events) != 2


@given(
    frames=st.text(alphabet="01", min_size=1, max_size=120),
    cut=st.lists(st.integers(1, 3000), min_size=1, max_size=20),
)
@settings(max_examples=60, deadline=None)
def test_event_grammar_on_any_pattern(frames: str, cut: list[int]) -> None:
    """For any speech/silence pattern and block sizes: starts and ends alternate, silence/resume events only occur
    inside an utterance and alternate, each silence is first noticed at its own sample (PauseStarted), positions
    never go backwards, and the events equal whole-buffer feeding."""
    audio = pattern("0" * 5 + frames + "0" * 30)
    v, got, i = vad(pause_notice_ms=90), [], 0
    for n in cut * (len(audio) // sum(cut) + 1):
        if i >= len(audio):
            break
        got += v.feed(audio[i : i + n])
        i += n
    assert got == vad(pause_notice_ms=90).feed(audio)
    inside, silent, last, notice = False, False, 0, None
    for e in got:
        if isinstance(e, SpeechStarted):
            assert not inside and e.start_sample <= e.onset_sample
            assert e.start_sample >= last
            inside, silent, last = True, False, e.onset_sample
        elif isinstance(e, PauseStarted):  # the notice comes first, and SilenceStarted confirms its sample
            assert inside and not silent and e.sample >= last
            notice = e.sample
        elif isinstance(e, SilenceStarted):
            assert inside and not silent and e.sample >= last and e.sample == notice
            silent, last = True, e.sample
        elif isinstance(e, SpeechResumed):
            assert inside and silent and e.sample >= last
            silent, last = False, e.sample
        else:
            assert inside and e.end_sample >= last
            inside, last = False, e.end_sample
    assert not inside  # 900 ms of trailing silence ends every utterance


def test_a_faint_tail_in_clean_audio_is_silence() -> None:
    """Issue 13 (d): after speech in digitally clean audio (the echo canceller's output in a quiet room), a tail
    fading from -70 to -90 dBFS (what the canceller leaves after speech stops) is silence: it starts at the tail's
    first frame, where before the gate (set on digital silence) passed it and webrtcvad's hangover called it
    speech; a louder quiet frame (-60 dBFS) still counts."""
    amp = {"a": 10 ** (-67 / 20), "b": 10 ** (-75 / 20), "c": 10 ** (-82 / 20), "d": 10 ** (-90 / 20)}
    tail = pattern("0" * 10 + "1" * 20 + "abcd" + "0" * 10, amplitudes=amp)
    got = [e for _, e in feed_frames(vad(early_silence_ms=150), tail) if isinstance(e, SilenceStarted)]
    assert got == [SilenceStarted(sample=30 * F, time=T)]
    quiet = pattern("0" * 10 + "1" * 20 + "q" + "0" * 10, amplitudes={"q": 10 ** (-57 / 20)})
    got = [e for _, e in feed_frames(vad(early_silence_ms=150), quiet) if isinstance(e, SilenceStarted)]
    assert got == [SilenceStarted(sample=31 * F, time=T)], "the -60 dBFS frame is still speech"
