"""End of turn: the policies (pure), Whisper features against the reference, and the real Smart Turn v3.2 model on
the espeak-ng clip set (tests/turn_clips.py) against a fixed 720 ms silence."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from assistant import hub
from assistant.audio.format import CAPTURE_RATE
from assistant.audio.ring import AudioRing
from assistant.config import EndOfTurnConfig, VadConfig
from assistant.endofturn import (
    FRAMES,
    N_MELS,
    SCORE_LEAD_IN,
    SMART_TURN_FILE,
    SMART_TURN_REPO,
    WINDOW_SAMPLES,
    BargeInRule,
    EndOfTurnPolicy,
    Endpointer,
    FixedSilence,
    SmartTurn,
    SmartTurnPolicy,
    TurnEvidence,
    bare_word,
    ends_mid_phrase,
    load_smart_turn,
    model_input,
    policy_from_config,
    turn_words,
    vad_settings,
)
from assistant.errors import InputError, ModelError
from assistant.events import PauseStarted, SilenceStarted, SpeechEnded, SpeechResumed, SpeechStarted
from tests.speech import needs_espeak, say
from tests.turn_clips import clip_set, end_after_ms, handled_right, smart_turn_file


def ev(silence_ms: int, score: float | None = None, text: str = "") -> TurnEvidence:
    return TurnEvidence(silence_ms=silence_ms, speech_ms=1500, score=score, partial_text=text)


def test_fixed_silence_ends_at_its_hangover() -> None:
    """The seeded fixed policy waits until the hangover and never asks for a score."""
    p = FixedSilence(720)
    assert p.score_after_ms is None
    assert p.decide(ev(690)) == "wait" and p.decide(ev(720)) == "end"


def test_smart_turn_policy_follows_the_score() -> None:
    """Without a score it waits; with one it ends at or above the threshold and waits below it."""
    p = SmartTurnPolicy(threshold=0.5, max_wait_ms=2000)
    assert p.decide(ev(180)) == "wait"
    assert p.decide(ev(180, 0.5)) == "end"
    assert p.decide(ev(180, 0.49)) == "wait"
    assert p.decide(ev(1990, 0.1)) == "wait"


def test_smart_turn_policy_gives_up_waiting_at_max_wait() -> None:
    """A pause of max_wait_ms ends the turn whatever the model or the transcript say."""
    p = SmartTurnPolicy(max_wait_ms=2000)
    assert p.decide(ev(2000, 0.0, "what time is it in")) == "end"
    assert p.decide(ev(2000)) == "end"


def test_smart_turn_policy_waits_out_the_resume_window_while_the_room_is_unknown() -> None:
    """Before the echo canceller has learned the room, a sure score ends no pause shorter than room_unknown_wait_ms
    (the user could not take that end back over the reply); at that pause, or once the room is known, it ends."""
    p = SmartTurnPolicy(max_wait_ms=2000, room_unknown_wait_ms=1200)
    unknown = dataclasses.replace(ev(600, 0.9), room_known=False)
    assert p.decide(unknown) == "wait"
    assert p.decide(dataclasses.replace(unknown, silence_ms=1200)) == "end"
    assert p.decide(dataclasses.replace(unknown, silence_ms=1200, score=0.1)) == "wait"  # the model still rules
    assert p.decide(dataclasses.replace(unknown, room_known=True)) == "end"
    assert SmartTurnPolicy().decide(unknown) == "end"  # endofturn.resume_ms 0: no early end is taken back


def test_trailing_filler_keeps_waiting() -> None:
    """A transcript ending on "and", "um" or a preposition keeps the turn open even when the model says done."""
    p = SmartTurnPolicy()
    for text in ("I want pasta and", "What time is it, um,", "Take me to the", "Play music by"):
        assert ends_mid_phrase(text), text
        assert p.decide(ev(200, 0.99, text)) == "wait", text
    assert not ends_mid_phrase("What time is it in London?")
    assert p.decide(ev(200, 0.99, "What time is it in London?")) == "end"
    assert not ends_mid_phrase("")


def test_backchannels_do_not_count_towards_taking_the_turn() -> None:
    """Listener words (matched bare: case and punctuation aside) are not words that take the turn; others are."""
    backchannels = frozenset(bare_word(w) for w in ("Mm-hm", "yeah", "OK."))
    assert turn_words("Yeah. Mm-hm, ok!", backchannels) == 0
    assert turn_words("yeah, wait a second", backchannels) == 3
    assert turn_words("yeah", frozenset()) == 1


# ---- the strategy at work: an Endpointer alone, driven as the turn core drives it ----------------------------

MS = CAPTURE_RATE // 1000  # samples per ms


class Pauses:
    """An Endpointer over a turn from sample 0 (voice 1000, silence 0): after every step the core's two questions
    are asked (`ask`, then `ends`), as TurnCore._check_end_of_turn does."""

    def __init__(self, policy: EndOfTurnPolicy) -> None:
        self.e = Endpointer(policy)
        self.e.begin(0)
        self.ring = AudioRing(CAPTURE_RATE * 30)
        self.asks: list[tuple[int, np.ndarray]] = []  # (request, clip)
        self.end: int | None = None
        self.pause = 0  # where the latest voice stopped

    def _step(self) -> Pauses:
        clip = self.e.ask(self.ring)
        if clip is not None:
            self.asks.append((self.e.asking, clip))
        self.end = self.e.ends(self.ring.end, "")
        return self

    def voice(self, ms: int) -> Pauses:
        self.ring.append(np.full(ms * MS, 1000, dtype=np.int16))
        self.pause = self.ring.end
        return self._step()

    def hear(self, ms: int) -> Pauses:
        self.ring.append(np.zeros(ms * MS, dtype=np.int16))
        return self._step()

    def notice(self) -> Pauses:
        self.e.vad(PauseStarted(self.pause, 0.0))
        return self._step()

    def silence(self) -> Pauses:
        self.e.vad(SilenceStarted(self.pause, 0.0))
        return self._step()

    def vad_end(self) -> Pauses:
        self.e.vad(SpeechEnded(0, self.pause, 0.0))
        return self._step()

    def resume(self, restart: bool = False) -> Pauses:
        """Voice again from here: SpeechResumed inside the pause, or (restart) the VAD's new SpeechStarted."""
        at = self.ring.end
        self.e.vad(SpeechStarted(at, at, 0.0) if restart else SpeechResumed(at, 0.0))
        return self._step()

    def score(self, p: float | None, ask: int = -1) -> Pauses:
        """The model answers ask number `ask` (the latest by default) with `p` (None: it failed)."""
        self.e.scored(self.asks[ask][0], p)
        return self._step()


SMART = SmartTurnPolicy(threshold=0.5, score_after_ms=150, max_wait_ms=2000)
AFTER = 150 * MS  # what a clip holds after its pause: the pause's first score_after_ms

# (what it proves, policy, timeline, the asks' clip lengths, where the turn ends: None = it goes on)
STRATEGY_CASES: list[tuple[str, EndOfTurnPolicy, Callable[[Pauses], Pauses], list[int], int | None]] = [
    (
        "a silence-only policy never asks and never ends a turn: the VAD's hangover is that silence",
        FixedSilence(700),
        lambda p: p.voice(500).silence().hear(3000).vad_end(),
        [],
        None,
    ),
    (
        "nothing is asked before the pause has lasted score_after_ms; then the speech and that silence are scored",
        SMART,
        lambda p: p.voice(500).silence().hear(140),
        [],
        None,
    ),
    (
        "a sure score ends the turn at the pause's first silent sample",
        SMART,
        lambda p: p.voice(500).silence().hear(160).score(0.9),
        [500 * MS + AFTER],
        500 * MS,
    ),
    (
        "a low score keeps the turn open past the VAD's own end; max_wait_ms of silence ends it",
        SMART,
        lambda p: p.voice(500).silence().hear(160).score(0.1).vad_end().hear(1840),
        [500 * MS + AFTER],
        500 * MS,
    ),
    (
        "a low score below max_wait_ms waits",
        SMART,
        lambda p: p.voice(500).silence().hear(160).score(0.1).hear(1800),
        [500 * MS + AFTER],
        None,
    ),
    (
        "a failed model ends the turn as the silence rule would (a broken model must not hold it open)",
        SMART,
        lambda p: p.voice(500).silence().hear(160).score(None),
        [500 * MS + AFTER],
        500 * MS,
    ),
    (
        "the VAD's early notice asks at once (silence not yet heard as zeros); the answer ends nothing until the "
        "same pause is confirmed, which then ends it with no second ask",
        SMART,
        lambda p: p.voice(500).hear(90).notice().score(0.9).hear(60).silence(),
        [500 * MS + AFTER],
        500 * MS,
    ),
    (
        "a notice whose pause voice ended before it was confirmed: its answer is dropped, the next pause asked anew",
        SMART,
        lambda p: p.voice(500).hear(90).notice().score(0.9).voice(100).hear(160).silence(),
        [500 * MS + AFTER, 690 * MS + AFTER],  # the whole turn: no pause was waited through
        None,
    ),
    (
        "a score that comes after speech resumed is of a pause that is over: it ends nothing and is asked again",
        SMART,
        lambda p: p.voice(500).silence().hear(160).resume().voice(300).score(0.9, ask=0).silence().hear(160),
        [500 * MS + AFTER, 300 * MS + SCORE_LEAD_IN + AFTER],
        None,
    ),
    (
        "after a pause the policy waited through, the model hears the new segment with a 200 ms lead-in",
        SMART,
        lambda p: p.voice(500).silence().hear(160).score(0.1).resume(restart=True).voice(300).silence().hear(160),
        [500 * MS + AFTER, 300 * MS + SCORE_LEAD_IN + AFTER],
        None,
    ),
]


@pytest.mark.parametrize(("proves", "policy", "timeline", "clips", "end"), STRATEGY_CASES, ids=range(10))
def test_endpointer_timeline(
    proves: str, policy: EndOfTurnPolicy, timeline: Callable[[Pauses], Pauses], clips: list[int], end: int | None
) -> None:
    """The end-of-turn strategy alone, over a scripted timeline, asks for exactly these clips and ends (or not)
    where its case says (`proves`)."""
    p = timeline(Pauses(policy))
    assert [len(clip) for _, clip in p.asks] == clips, proves
    assert len({request for request, _ in p.asks}) == len(p.asks), "every ask is a request of its own"
    assert p.end == end, proves


def test_which_vad_events_inside_a_turn_clients_hear_of() -> None:
    """Under a silence-only policy every VAD event is news; where the policy judges pauses, a new start inside the
    turn (the same turn goes on) and the VAD's untruncated end (the policy ends the turn) are not, a cut is."""
    events = [SpeechStarted(0, 0, 0.0), SilenceStarted(0, 0.0), SpeechResumed(0, 0.0), SpeechEnded(0, 1, 0.0)]
    events.append(SpeechEnded(0, 1, 0.0, truncated=True))
    assert [Endpointer(FixedSilence(700)).news(e) for e in events] == [True] * 5
    assert [Endpointer(SMART).news(e) for e in events] == [False, True, True, False, True]


def test_a_new_turn_forgets_the_last_turns_pause_and_its_score_in_flight() -> None:
    """`begin` starts afresh: a score still coming for the previous turn is refused, and nothing ends the new turn
    before a pause of its own."""
    p = Pauses(SMART).voice(500).silence().hear(160)
    p.e.begin(p.ring.end)
    assert not p.e.scored(p.asks[0][0], 0.9)
    assert p.e.ends(p.ring.end, "") is None and p.e.ask(p.ring) is None


BACKCHANNELS = frozenset({"mm-hm", "yeah"})
TRANSCRIPTS = ("", "Mm-hm, yeah.", "wait", "wait, what?")
# (rule, it interrupts at the VAD's start, whether each of TRANSCRIPTS takes the turn)
BARGE_IN_CASES = [
    (BargeInRule(), True, [False, True, True, True]),  # any word; the start alone already interrupted
    (BargeInRule(backchannels=BACKCHANNELS), False, [False, False, True, True]),
    (BargeInRule(min_words=2, backchannels=BACKCHANNELS), False, [False, False, False, True]),
    (BargeInRule(min_words=1), False, [False, True, True, True]),
    (BargeInRule(enabled=False, backchannels=BACKCHANNELS), False, [False, False, False, False]),
]


@pytest.mark.parametrize(("rule", "at_start", "takes"), BARGE_IN_CASES)
def test_barge_in_rule(rule: BargeInRule, at_start: bool, takes: list[bool]) -> None:
    """Speech over a reply interrupts it at the VAD's start only with no words to wait for; else once its
    transcript holds min_words (at least one) words that are not backchannels; never with barge-in off."""
    assert rule.at_start is at_start
    assert [rule.takes_turn(t) for t in TRANSCRIPTS] == takes


def test_features_match_the_whisper_feature_extractor() -> None:
    """Our log-mel window equals transformers' WhisperFeatureExtractor(chunk_length=8) on the left-padded window."""
    transformers = pytest.importorskip("transformers", reason="transformers comes with mlx-lm")
    rng = np.random.default_rng(3)
    audio = (rng.standard_normal(3 * 16_000) * 3000).astype(np.int16)
    ours = model_input(audio)
    assert ours.shape == (1, N_MELS, FRAMES) and ours.dtype == np.float32
    window = np.zeros(WINDOW_SAMPLES, np.float32)
    window[-len(audio) :] = audio / 32768.0
    fe = transformers.WhisperFeatureExtractor(chunk_length=8)
    ref = fe(
        window,
        sampling_rate=16_000,
        padding="max_length",
        max_length=WINDOW_SAMPLES,
        truncation=True,
        do_normalize=True,
        return_tensors="np",
    ).input_features
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_features_of_every_turn_length_equal_the_plain_whisper_formula() -> None:
    """The log-mel features (one spectrum for the zero-padded front's identical frames, the filters applied as a
    sparse sum) equal the plain formula, every frame's spectrum through the dense filter matrix, for turns from
    nothing to the whole window."""
    from assistant import endofturn as eot

    def plain(window: np.ndarray) -> np.ndarray:
        x = (window - window.mean()) / np.sqrt(window.var() + 1e-7)
        padded = np.pad(x.astype(np.float64), eot.N_FFT // 2, mode="reflect")
        frames = np.lib.stride_tricks.sliding_window_view(padded, eot.N_FFT)[:: eot.HOP][:FRAMES]
        power = np.abs(np.fft.rfft(frames * eot._HANN, axis=-1)) ** 2
        mel = np.log10(np.maximum(eot._FILTERS @ power.T, 1e-10))
        return (np.maximum(mel, mel.max() - 8.0) + 4.0) / 4.0

    rng = np.random.default_rng(5)
    for n in (0, 1, 399, 401, 16_000, WINDOW_SAMPLES - 1, WINDOW_SAMPLES):
        window = np.zeros(WINDOW_SAMPLES, np.float32)
        window[WINDOW_SAMPLES - n :] = rng.standard_normal(n).astype(np.float32) * 0.1
        np.testing.assert_allclose(eot.log_mel(window), plain(window), atol=1e-6, err_msg=f"{n} samples")


def test_model_input_keeps_the_last_8_seconds() -> None:
    """Audio longer than 8 s is cut at its start: only the last 8 s decide."""
    rng = np.random.default_rng(4)
    tail = (rng.standard_normal(WINDOW_SAMPLES) * 2000).astype(np.int16)
    long = np.concatenate([(rng.standard_normal(40_000) * 9000).astype(np.int16), tail])
    np.testing.assert_array_equal(model_input(long), model_input(tail))


def test_bad_audio_is_a_one_line_input_error() -> None:
    """Float or 2-D audio is refused with an InputError naming the expected format."""
    with pytest.raises(InputError, match="1-D int16"):
        model_input(np.zeros(100, np.float32))
    with pytest.raises(InputError, match="1-D int16"):
        model_input(np.zeros((2, 100), np.int16))


def test_missing_model_names_assistant_pull(tmp_path: Path, isolated_env: Path) -> None:
    """Loading from a folder without the model file, or a repo not in the cache, says to run `assistant pull`."""
    with pytest.raises(ModelError, match="assistant pull"):
        SmartTurn.load(tmp_path)
    with pytest.raises(ModelError, match="assistant pull"):
        load_smart_turn(EndOfTurnConfig())


@pytest.fixture(scope="module")
def smart_turn() -> SmartTurn:
    try:
        return SmartTurn.load(smart_turn_file())
    except RuntimeError as e:
        pytest.fail(str(e))


@needs_espeak
def test_real_model_hears_a_filler_pause(smart_turn: SmartTurn) -> None:
    """The real v3.2 weights call a complete question done and "..., um," followed by silence unfinished."""
    pause = np.zeros(2880, np.int16)  # the 180 ms of silence the policy scores after
    done = smart_turn.score(np.concatenate([say("Turn on the lights in the kitchen."), pause]))
    um = smart_turn.score(np.concatenate([say("Can you tell me, um,"), pause]))
    assert 0.0 <= um < 0.2 < 0.8 < done <= 1.0


@needs_espeak
def test_model_policy_is_far_better_than_a_fixed_timeout(smart_turn: SmartTurn) -> None:
    """On the 140 pause points of the clip set, Smart Turn + transcript decides right far more often than a fixed
    720 ms silence, cuts far fewer thinking pauses, and ends complete turns sooner (median <= 300 ms)."""
    policies = {"fixed": FixedSilence(720), "model": SmartTurnPolicy()}
    right: dict[str, list[bool]] = {k: [] for k in policies}
    cuts: dict[str, list[bool]] = {k: [] for k in policies}
    latency: list[int] = []
    for clip in clip_set():
        for point in clip.points:
            for name, policy in policies.items():
                ended = end_after_ms(policy, clip, point, smart_turn.score)
                right[name].append(handled_right(point, ended))
                if not point.complete:
                    cuts[name].append(ended is not None)
                elif name == "model":
                    latency.append(ended if ended is not None else 5000)
    acc = {k: float(np.mean(v)) for k, v in right.items()}
    cut = {k: float(np.mean(v)) for k, v in cuts.items()}
    assert len(right["model"]) == 140
    assert acc["model"] >= 0.85 and acc["model"] >= acc["fixed"] + 0.15, acc
    assert cut["model"] <= 0.15 and cut["fixed"] >= 0.5, cut
    assert float(np.median(latency)) <= 300


def test_config_builds_the_policy() -> None:
    """endofturn.detector picks Smart Turn's policy with the configured numbers, or the fixed hangover."""
    cfg = EndOfTurnConfig(threshold=0.6, score_after_ms=210, max_wait_ms=1500)
    assert policy_from_config(cfg, 720) == SmartTurnPolicy(0.6, 210, 1500, room_unknown_wait_ms=cfg.resume_ms)
    assert policy_from_config(EndOfTurnConfig(detector="silence"), 720) == FixedSilence(720)


def test_the_vad_reports_silence_by_the_time_the_model_is_asked() -> None:
    """With the model, vad.early_silence_ms is lowered to endofturn.score_after_ms (never raised) and the VAD
    notices a pause (PauseStarted) after endofturn.ask_after_ms; the silence detector leaves the VAD as
    configured."""
    vad = VadConfig(early_silence_ms=200)
    assert vad_settings(vad, EndOfTurnConfig(score_after_ms=120)).early_silence_ms == 120
    assert vad_settings(vad, EndOfTurnConfig(score_after_ms=300)).early_silence_ms == 200
    assert vad_settings(vad, EndOfTurnConfig(ask_after_ms=60)).pause_notice_ms == 60
    assert vad_settings(vad, EndOfTurnConfig(detector="silence", score_after_ms=120)) == vad


def test_the_model_is_pulled_from_its_repo_file(smart_turn: SmartTurn) -> None:
    """`assistant pull` fetches only the v3.2 CPU export from pipecat-ai/smart-turn-v3, the same bytes the
    pipecat-ai wheel ships (size and SHA-256 of the file in the Hugging Face repo)."""
    assert EndOfTurnConfig().model == SMART_TURN_REPO
    assert hub.ONLY_FILES[SMART_TURN_REPO] == [SMART_TURN_FILE]
    data = smart_turn_file().read_bytes()
    assert len(data) == 8_679_182
    assert hashlib.sha256(data).hexdigest() == "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"


def test_load_from_config_reads_a_local_folder(smart_turn: SmartTurn) -> None:
    """A local folder holding the .onnx file works as endofturn.model; a missing repo names `assistant pull`."""
    smart_turn_file()
    model = load_smart_turn(EndOfTurnConfig(model=str(smart_turn_file().parent)))
    assert model is not None and 0.0 <= model.score(np.zeros(16_000, np.int16)) <= 1.0
    assert load_smart_turn(EndOfTurnConfig(detector="silence")) is None
