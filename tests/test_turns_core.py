"""The turn core over scripted timelines: no sleeps, devices, threads or models; time is a value on each input.

Each scenario runs against the daemon policy and the Realtime policy where both apply (the table at the end).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest

from assistant.audio.format import CAPTURE_RATE, level_dbfs
from assistant.config import Config
from assistant.endofturn import SCORE_LEAD_IN, Decision, FixedSilence, SmartTurnPolicy, TurnEvidence
from assistant.errors import InputError, ModelError
from assistant.events import (
    AttentionChanged,
    ErrorEvent,
    FalseStart,
    FinalTranscript,
    PauseStarted,
    PushToTalk,
    ResponseAudio,
    ResponseDone,
    SilenceStarted,
    SpeculationCancelled,
    SpeculationStarted,
    SpeechEnded,
    SpeechResumed,
    SpeechStarted,
    StateChanged,
    TurnState,
)
from assistant.policies import daemon_policy, realtime_policy
from assistant.turns import (
    APOLOGY,
    MAX_PENDING,
    Action,
    AudioIn,
    Command,
    ConfirmReply,
    CreateResponse,
    DropReply,
    Fed,
    Feed,
    Finalize,
    FlushAudio,
    Input,
    InterruptReply,
    Policy,
    Publish,
    ReplyDone,
    RunVad,
    Scored,
    ScoreTurn,
    SetPolicy,
    StartReply,
    Transcribed,
    TurnCore,
    UserText,
)

BLOCK = 320  # 20 ms
# resume_ms 0: the scenarios' next speech follows a turn's end within ms; test_resume_* turn the window on
CFG = Config().replace({"vad.preroll_ms": 0, "endofturn.resume_ms": 0})
DAEMON = daemon_policy(CFG.replace({"pipeline.mode": "both"}))
REALTIME = realtime_policy(CFG, server_vad=True, create_response=True, interrupt_response=True)


def barging(policy: Policy, **rule: object) -> Policy:
    """`policy` with these fields of its barge-in rule changed (enabled, min_words, backchannels)."""
    return dataclasses.replace(policy, barge_in=dataclasses.replace(policy.barge_in, **rule))  # type: ignore[arg-type]


class Timeline:
    """A turn core fed block by block on a synthetic capture clock, recording every action."""

    def __init__(self, policy: Policy) -> None:
        self.core = TurnCore(policy, FixedSilence(700), CAPTURE_RATE * 40)
        self.t = 100.0  # capture time of the next block
        self.actions: list[Action] = []

    def send(self, inp: Input) -> list[Action]:
        out = self.core.handle(inp)
        self.actions += out
        return out

    def audio(
        self,
        blocks: int = 1,
        value: int = 0,
        speaker_dbfs: float = -120.0,
        late_s: float = 0.0,
        room_known: bool = True,
        linear: bool = False,
    ) -> None:
        for _ in range(blocks):
            samples = np.full(BLOCK, value, dtype=np.int16)
            now = self.t + BLOCK / CAPTURE_RATE + late_s
            self.send(AudioIn(samples, self.t, now, speaker_dbfs, room_known=room_known, speaker_linear=linear))
            self.t += BLOCK / CAPTURE_RATE

    @property
    def now(self) -> float:
        return self.t

    def vad(self, ev: SpeechStarted | PauseStarted | SilenceStarted | SpeechResumed | SpeechEnded) -> None:
        self.send(ev)

    def started(self, at: int) -> None:
        self.vad(SpeechStarted(at, at, self.now))

    def ended(self, start: int, end: int) -> None:
        self.vad(SpeechEnded(start, end, self.now))

    def transcribe(self, text: str) -> None:
        """Answer the latest finalize job."""
        job = [a for a in self.actions if isinstance(a, Finalize)][-1].job
        self.send(Transcribed(job, text, "en", self.now))

    def reply_plays(self, turn: int) -> None:
        self.send(ResponseAudio(turn, np.full(240, 0.1, dtype=np.float32), self.now))

    def of(self, kind: type) -> list[object]:
        return [a for a in self.actions if isinstance(a, kind)]

    def events(self, kind: type) -> list[object]:
        return [a.event for a in self.actions if isinstance(a, Publish) and isinstance(a.event, kind)]

    def states(self) -> list[TurnState]:
        return [e.new for e in self.events(StateChanged)]  # type: ignore[attr-defined]

    def pos(self) -> int:
        return self.core.ring.end

    def confirmed(self, reply: object) -> bool:
        """Whether the core confirmed this started reply (a ConfirmReply of its turn came after it)."""
        assert isinstance(reply, StartReply)
        later = self.actions[self.actions.index(reply) :]
        return any(isinstance(a, ConfirmReply) and a.turn == reply.turn for a in later)


def spoken_turn(tl: Timeline, text: str = "hello") -> int:
    """The user says something and stops; returns the turn of the reply that answers it (confirmed)."""
    start = tl.pos()
    tl.audio(10, value=1000)
    tl.started(start)
    end = tl.pos()
    tl.audio(5)
    tl.ended(start, end)
    tl.transcribe(text)
    if not tl.core.policy.answer_turns:  # Realtime: the transcript queues and auto-respond creates the reply
        assert tl.events(FinalTranscript)[-1].text == text  # type: ignore[attr-defined]
    reply = tl.of(StartReply)[-1]
    assert isinstance(reply, StartReply) and tl.confirmed(reply) and reply.responder.user_text == text
    return reply.turn


def speculating(tl: Timeline, text: str = "hello") -> StartReply:
    """The user speaks and pauses: the transcript of the pause is `text`; returns its speculative reply."""
    tl.audio(10, value=1000)
    tl.started(0)
    tl.vad(SilenceStarted(tl.pos(), tl.now))
    assert tl.events(SpeculationStarted) and len(tl.of(Finalize)) == 1
    tl.transcribe(text)
    spec = tl.of(StartReply)[-1]
    assert isinstance(spec, StartReply) and not tl.confirmed(spec)
    return spec


# ---- scenarios --------------------------------------------------------------------------------------------------


def speculative_start_then_resume(policy: Policy) -> None:
    """Silence starts an unconfirmed reply; resumed speech drops it and the transcriber gets the whole turn again."""
    tl = Timeline(policy)
    spec = speculating(tl)
    tl.reply_plays(spec.turn)
    assert not tl.of(ResponseAudio), "nothing speculative plays"
    tl.vad(SpeechResumed(tl.pos(), tl.now))
    assert tl.of(DropReply) == [DropReply(spec.turn)] and tl.events(SpeculationCancelled)
    feeds = [a for a in tl.of(Feed) if isinstance(a, Feed)]
    assert len(feeds[-1].audio) == tl.pos()  # re-fed from the utterance's first sample
    tl.audio(10, value=1000)
    tl.ended(0, tl.pos())
    tl.transcribe("hello world")
    final = tl.of(StartReply)[-1]
    assert isinstance(final, StartReply) and tl.confirmed(final) and final.responder.user_text == "hello world"
    assert tl.core.state is TurnState.THINKING


def speculation_stops_feeding_the_transcriber(policy: Policy) -> None:
    """Once the speculative finalize has the turn so far, the pause is not fed to the transcriber (its partials
    would describe only the silence after that finalize, and its jobs would run ahead of the speculative reply's);
    resumed speech re-feeds the whole turn."""
    tl = Timeline(policy)
    speculating(tl)
    assert tl.core.user is not None
    tl.send(Fed(tl.core.user.id, None, tl.now))  # the feed in flight at the speculation returns
    fed = len(tl.of(Feed))
    tl.audio(5)  # the pause goes on
    assert len(tl.of(Feed)) == fed
    tl.vad(SpeechResumed(tl.pos(), tl.now))
    feeds = [a for a in tl.of(Feed) if isinstance(a, Feed)]
    assert len(feeds) == fed + 1 and len(feeds[-1].audio) == tl.pos()


def speculative_start_then_confirm(policy: Policy) -> None:
    """The speculative reply is the one used: confirmed at the end of turn (with the turn's speech end and
    decision time, which its latency counts from), its held audio plays in the same step as the confirmation."""
    tl = Timeline(policy)
    spec = speculating(tl)
    tl.reply_plays(spec.turn)
    tl.audio(5)
    end = tl.pos() - 5 * BLOCK
    decided = len(tl.actions)
    tl.ended(0, end)
    step = tl.actions[decided:]  # everything the end of turn did, in order
    confirm = ConfirmReply(spec.turn, tl.core.clock.time_of(end), tl.now)
    assert confirm in step and len(tl.of(StartReply)) == 1
    assert any(isinstance(a, ResponseAudio) and a.turn == spec.turn for a in step[step.index(confirm) :])
    assert [a.turn for a in tl.of(ResponseAudio)] == [spec.turn]  # type: ignore[attr-defined]
    assert tl.events(FinalTranscript)[-1].text == "hello"  # type: ignore[attr-defined]
    assert tl.states()[-1] is TurnState.ASSISTANT_SPEAKING


def test_vad_hears_which_gate_applies() -> None:
    """A block the echo canceller's linear path gated reaches the VAD marked so; the echo tail after the speaker
    stopped, gated at the last level heard, is not."""
    tl = Timeline(Policy())
    turn = spoken_turn(tl)
    tl.reply_plays(turn)
    tl.audio(1, speaker_dbfs=-30.0, linear=True)
    tl.audio(1, speaker_dbfs=-20.0)
    tl.audio(1, linear=True)  # the speaker is silent: the tail's gate is no linear bound
    runs = [a for a in tl.of(RunVad) if isinstance(a, RunVad)][-3:]
    assert [(r.echo_dbfs, r.linear) for r in runs] == [(-30.0, True), (-20.0, False), (-20.0, False)]


def barge_in(policy: Policy) -> None:
    """With no backchannel list, speech while the reply plays (by capture time) interrupts it at the VAD's start;
    the user's new turn starts at once."""
    tl = Timeline(barging(policy, backchannels=frozenset()))
    turn = spoken_turn(tl)
    tl.reply_plays(turn)
    start = tl.pos()
    tl.audio(10, value=3000, speaker_dbfs=-20.0)
    vad_runs = [a for a in tl.of(RunVad) if isinstance(a, RunVad)]
    assert vad_runs[-1].echo_dbfs == -20.0  # the VAD gates this block against what was playing
    tl.started(start)
    assert InterruptReply(turn) in tl.actions and tl.core.state is TurnState.USER_SPEAKING
    # the driver trims the history to what was heard and reports back
    tl.send(ReplyDone(turn, "One two", True, tl.now))
    done = tl.events(ResponseDone)[-1]
    assert done.interrupted and done.text == "One two"  # type: ignore[attr-defined]
    assert tl.core.state is TurnState.USER_SPEAKING


def false_start(policy: Policy) -> None:
    """With barge_in_min_words=1, speech during the reply that transcribes to no words leaves the reply alone."""
    tl = Timeline(barging(policy, min_words=1))
    turn = spoken_turn(tl)
    tl.reply_plays(turn)
    start = tl.pos()
    tl.audio(6, value=7, speaker_dbfs=-20.0)
    tl.started(start)
    tl.audio(5, speaker_dbfs=-20.0)
    tl.ended(start, start + 6 * BLOCK)
    tl.transcribe("")
    assert tl.events(FalseStart) and not tl.of(InterruptReply)
    assert tl.core.current is not None and tl.core.state is TurnState.ASSISTANT_SPEAKING


def ptt_overrides_vad(policy: Policy) -> None:
    """While the hotkey is held the VAD's end of speech is ignored; release ends the turn with all its audio."""
    tl = Timeline(policy)
    tl.send(Command("ptt_start", tl.now))
    tl.audio(10, value=1000)
    tl.started(0)
    tl.vad(SilenceStarted(tl.pos(), tl.now))
    tl.audio(10)
    tl.ended(0, tl.pos() - 10 * BLOCK)
    assert not tl.of(Finalize) and not tl.events(SpeculationStarted)
    tl.audio(10, value=2000)
    tl.send(Command("ptt_stop", tl.now))
    assert len(tl.of(Finalize)) == 1 and [e.pressed for e in tl.events(PushToTalk)] == [True, False]  # type: ignore[attr-defined]
    fed = np.concatenate([a.audio for a in tl.of(Feed) if isinstance(a, Feed)])
    assert len(fed) == 30 * BLOCK  # every sample from the press to the release
    tl.transcribe("what time is it")
    assert tl.of(StartReply)[-1].responder.user_text == "what time is it"  # type: ignore[attr-defined]


def manual_commit(policy: Policy) -> None:
    """Without turn detection audio waits for commit; the transcript queues with a text item; create answers both,
    in the order they were added."""
    tl = Timeline(policy)
    tl.send(SetPolicy(dataclasses.replace(policy, vad_turns=False), FixedSilence(700), tl.now))
    tl.audio(10, value=1000)
    assert not tl.of(RunVad) and tl.core.user is not None
    tl.send(UserText("first", tl.now))
    tl.send(Command("commit", tl.now))
    tl.send(CreateResponse(tl.now))
    assert not tl.of(StartReply), "the response waits for the transcript in flight"
    tl.transcribe("second")
    reply = tl.of(StartReply)[-1]
    assert reply.responder.user_text == "first\nsecond" and tl.confirmed(reply)  # type: ignore[attr-defined]
    # audio committed before a text item is answered before it, though its transcript comes later
    tl.send(ReplyDone(reply.turn, "", False, tl.now))  # type: ignore[attr-defined]
    tl.audio(10, value=1000)
    tl.send(Command("commit", tl.now))
    tl.send(UserText("in Paris?", tl.now))
    tl.send(CreateResponse(tl.now))
    assert tl.of(StartReply)[-1] is reply, "the response waits for the transcript in flight"
    tl.transcribe("what is the weather")
    assert tl.of(StartReply)[-1].responder.user_text == "what is the weather\nin Paris?"  # type: ignore[attr-defined]


def function_outputs_continue(policy: Policy) -> None:
    """Realtime function outputs make a response answerable with no user message: it continues the calling
    answer; a new user message instead starts a fresh answer; without either, nothing is answered."""
    tl = Timeline(policy)
    tl.send(SetPolicy(dataclasses.replace(policy, vad_turns=False), FixedSilence(700), tl.now))
    tl.send(Command("tool_output", tl.now))
    tl.send(CreateResponse(tl.now))
    first = tl.of(StartReply)[-1]
    assert first.responder.continues and first.responder.user_text is None  # type: ignore[attr-defined]
    tl.send(ReplyDone(first.turn, "It is sunny.", False, tl.now))  # type: ignore[attr-defined]
    tl.send(Command("tool_output", tl.now))
    tl.send(UserText("and tomorrow?", tl.now))
    tl.send(CreateResponse(tl.now))
    second = tl.of(StartReply)[-1]
    assert not second.responder.continues and second.responder.user_text == "and tomorrow?"  # type: ignore[attr-defined]
    tl.send(ReplyDone(second.turn, "Rain.", False, tl.now))  # type: ignore[attr-defined]
    tl.send(CreateResponse(tl.now))
    assert tl.of(StartReply)[-1] is second and "nothing to answer" in tl.events(ErrorEvent)[-1].message  # type: ignore[attr-defined]
    assert tl.events(ErrorEvent)[-1].client_fault  # type: ignore[attr-defined]


def cancel_mid_reply(policy: Policy) -> None:
    """Cancel (daemon interrupt, Realtime response.cancel) stops the reply and returns to listening."""
    tl = Timeline(policy)
    turn = spoken_turn(tl)
    tl.reply_plays(turn)
    tl.send(Command("interrupt", tl.now))
    assert InterruptReply(turn) in tl.actions
    tl.send(ReplyDone(turn, "One", True, tl.now))
    assert tl.events(ResponseDone)[-1].interrupted  # type: ignore[attr-defined]
    assert tl.core.state is TurnState.IDLE and tl.core.current is None


def engine_error(policy: Policy) -> None:
    """A reply that fails is reported, ends as interrupted, and the core listens again; the next turn works."""
    tl = Timeline(policy)
    turn = spoken_turn(tl)
    tl.send(ReplyDone(turn, "", True, tl.now, error=ValueError("scripted failure")))
    assert "scripted failure" in tl.events(ErrorEvent)[-1].message  # type: ignore[attr-defined]
    assert not tl.events(ErrorEvent)[-1].client_fault and tl.events(ErrorEvent)[-1].turn == turn  # type: ignore[attr-defined]
    assert tl.core.state is TurnState.IDLE
    assert spoken_turn(tl, "again") > turn
    tl.send(ReplyDone(turn + 1, "", True, tl.now, error=InputError("the user message is empty")))
    assert tl.events(ErrorEvent)[-1].client_fault  # type: ignore[attr-defined]


def model_failure(policy: Policy) -> None:
    """A confirmed answer the model failed is reported, and the daemon apologises aloud so the user asks again (a
    Realtime client is told by the error alone); the apology failing in turn gets no apology of its own."""
    tl = Timeline(policy)
    turn = spoken_turn(tl)
    tl.send(ReplyDone(turn, "", True, tl.now, error=ModelError("the LLM server is gone")))
    assert "server is gone" in tl.events(ErrorEvent)[-1].message  # type: ignore[attr-defined]
    apology = tl.of(StartReply)[-1]
    assert isinstance(apology, StartReply)
    if policy.answer_turns:
        assert apology.turn > turn and tl.confirmed(apology) and apology.responder.speak_text == APOLOGY
        tl.send(ReplyDone(apology.turn, "", True, tl.now, error=ModelError("the TTS broke")))
        assert tl.of(StartReply)[-1] is apology
    else:
        assert apology.turn == turn
    assert tl.core.state is TurnState.IDLE


def failed_speculation_is_silent(policy: Policy) -> None:
    """A speculative reply the model failed says nothing (no error, no apology): the utterance is transcribed
    afresh, and the turn's confirmed answer is a new reply."""
    tl = Timeline(policy)
    spec = speculating(tl)
    tl.send(ReplyDone(spec.turn, "", True, tl.now, error=ModelError("the LLM server is gone")))
    assert not tl.events(ErrorEvent) and tl.of(StartReply) == [spec]
    feeds = [a for a in tl.of(Feed) if isinstance(a, Feed)]
    assert len(feeds[-1].audio) == tl.pos()  # re-fed from the utterance's first sample
    tl.audio(5)
    tl.ended(0, tl.pos())
    tl.transcribe("hello")
    final = tl.of(StartReply)[-1]
    assert isinstance(final, StartReply) and tl.confirmed(final) and final.turn > spec.turn


def mute(policy: Policy) -> None:
    """Muted, speech feeds nothing and starts nothing; unmuted, positions still line up."""
    tl = Timeline(policy)
    tl.send(Command("mute", tl.now))
    tl.audio(10, value=1000)
    assert not tl.of(RunVad) and not tl.of(Feed) and tl.core.ring.slice(0, tl.pos()).max() == 0
    tl.send(Command("unmute", tl.now))
    assert spoken_turn(tl) >= 1


def echo_after_the_reply(policy: Policy) -> None:
    """Issue 22: blocks recorded while the reply played but processed after it ended are still gated as echo
    (and speech starting in them must prove itself), while a user starting 300 ms after the end starts a turn
    at once with none of their speech lost."""
    tl = Timeline(policy)
    turn = spoken_turn(tl)
    tl.reply_plays(turn)
    echo_from = tl.pos()
    # 1 s of the assistant's echo, recorded while the speaker played, delivered 1.5 s late (a busy machine)
    tl.audio(50, value=300, speaker_dbfs=-20.0, late_s=1.5)
    tl.send(ReplyDone(turn, "One two three", False, tl.now))  # the reply ended before those blocks were judged
    runs = [a for a in tl.of(RunVad) if isinstance(a, RunVad)]
    assert all(r.echo_dbfs == -20.0 for r in runs[-50:]), "judged by capture time, not by the state now"
    tl.started(echo_from + 10 * BLOCK)  # suppose the echo still fooled the VAD
    assert tl.core.state is TurnState.IDLE and tl.core.user is not None and tl.core.user.candidate
    tl.ended(echo_from + 10 * BLOCK, echo_from + 50 * BLOCK)
    tl.transcribe("")  # the echo gave no words of the user
    assert tl.events(FalseStart) and len(tl.of(StartReply)) == 1
    # 300 ms of silence after the speaker's last sample (beyond the 200 ms echo tail), then the user
    tl.audio(15)
    user_from = tl.pos()
    tl.audio(10, value=2000)
    runs = [a for a in tl.of(RunVad) if isinstance(a, RunVad)]
    assert all(r.echo_dbfs is None for r in runs[-10:])
    tl.started(user_from)
    assert tl.core.state is TurnState.USER_SPEAKING and not tl.core.user.candidate  # type: ignore[union-attr]
    fed = np.concatenate([a.audio for a in tl.of(Feed) if isinstance(a, Feed)][-1:])
    assert len(fed) == 10 * BLOCK and np.all(fed == 2000), "the user's turn holds every sample they said"


def speech_over_reply(tl: Timeline, turn: int, partial: str) -> int:
    """The user speaks over reply `turn` (loud enough for the VAD's playback gate); returns the speech's start."""
    tl.reply_plays(turn)
    start = tl.pos()
    tl.audio(10, value=3000, speaker_dbfs=-20.0)
    tl.started(start)
    assert not tl.of(InterruptReply), "a backchannel list makes the start wait for a word"
    utt = tl.core.user
    assert utt is not None and utt.candidate
    tl.send(Fed(utt.id, partial, tl.now))
    return start


def backchannel_leaves_the_reply(policy: Policy) -> None:
    """A backchannel over the reply ("Mm-hm.", "yeah") never interrupts it, and is still shown as a transcript."""
    tl = Timeline(policy)
    turn = spoken_turn(tl)
    start = speech_over_reply(tl, turn, "Mm-hm, yeah.")
    assert not tl.of(InterruptReply)
    tl.audio(5, speaker_dbfs=-20.0)
    tl.ended(start, start + 10 * BLOCK)
    tl.transcribe("Mm-hm, yeah.")
    assert tl.events(FinalTranscript)[-1].text == "Mm-hm, yeah."  # type: ignore[attr-defined]
    assert tl.events(FalseStart) and not tl.of(InterruptReply) and len(tl.of(StartReply)) == 1
    assert tl.core.current is not None and tl.core.state is TurnState.ASSISTANT_SPEAKING


def words_over_reply_take_the_turn(policy: Policy) -> None:
    """Over the reply, the first word that is not a backchannel interrupts it, and the whole utterance, from its
    first sample, becomes the user's next turn."""
    tl = Timeline(policy)
    turn = spoken_turn(tl)
    start = speech_over_reply(tl, turn, "yeah wait")
    utt = tl.core.user.id  # type: ignore[union-attr]
    assert InterruptReply(turn) in tl.actions and tl.core.state is TurnState.USER_SPEAKING
    tl.send(ReplyDone(turn, "One", True, tl.now))
    tl.audio(5)
    tl.ended(start, start + 10 * BLOCK)
    fed = np.concatenate([a.audio for a in tl.of(Feed) if isinstance(a, Feed) and a.utt == utt])
    assert np.count_nonzero(fed == 3000) == 10 * BLOCK, "every sample of the speech went to the transcriber"
    tl.transcribe("yeah wait, what about Saturday?")
    reply = tl.of(StartReply)[-1]
    assert isinstance(reply, StartReply) and tl.confirmed(reply)
    assert reply.responder.user_text == "yeah wait, what about Saturday?"


def short_words_wait_for_the_end(policy: Policy) -> None:
    """Words over the reply that are fewer than barge_in_min_words do not interrupt; they are kept and answered
    as the next turn once the reply is over."""
    tl = Timeline(barging(policy, min_words=3))
    turn = spoken_turn(tl)
    start = speech_over_reply(tl, turn, "Saturday")
    tl.audio(5, speaker_dbfs=-20.0)
    tl.ended(start, start + 10 * BLOCK)
    tl.transcribe("Saturday?")
    assert not tl.of(InterruptReply) and len(tl.of(StartReply)) == 1
    assert tl.events(FinalTranscript)[-1].text == "Saturday?"  # type: ignore[attr-defined]
    tl.send(ReplyDone(turn, "One two three", False, tl.now))
    reply = tl.of(StartReply)[-1]
    assert isinstance(reply, StartReply) and reply.turn > turn and reply.responder.user_text == "Saturday?"
    assert tl.confirmed(reply) and tl.core.state is TurnState.THINKING


def speech_over_reply_without_barge_in(policy: Policy) -> None:
    """With barge-in off, speech over the reply does not stop it, yet is transcribed and answered as the next
    turn when the reply is over."""
    tl = Timeline(barging(policy, enabled=False))
    turn = spoken_turn(tl)
    start = speech_over_reply(tl, turn, "what about Saturday")
    tl.audio(5, speaker_dbfs=-20.0)
    tl.ended(start, start + 10 * BLOCK)
    tl.transcribe("What about Saturday?")
    assert not tl.of(InterruptReply) and tl.events(FinalTranscript)[-1].text == "What about Saturday?"  # type: ignore[attr-defined]
    tl.send(ReplyDone(turn, "One two three", False, tl.now))
    reply = tl.of(StartReply)[-1]
    assert isinstance(reply, StartReply) and reply.turn > turn and reply.responder.user_text == "What about Saturday?"


def test_a_newer_answered_turn_drops_the_words_waiting_for_the_reply_even_when_speculated() -> None:
    """Words said over a reply and kept for its end are not answered after a newer turn of the user's, also when
    that turn's speculative reply is the one confirmed (as when it is answered afresh)."""
    tl = Timeline(barging(DAEMON, min_words=3))
    turn = spoken_turn(tl)
    start = speech_over_reply(tl, turn, "Saturday")
    tl.audio(5, speaker_dbfs=-20.0)
    tl.ended(start, start + 10 * BLOCK)
    tl.transcribe("Saturday?")  # fewer than 3 words: kept for the reply's end
    tl.send(Command("interrupt", tl.now))
    tl.send(ReplyDone(turn, "One", True, tl.now))
    tl.audio(20)  # past the speaker's echo tail
    begin = tl.pos()
    tl.audio(10, value=1000)
    tl.started(begin)
    tl.vad(SilenceStarted(tl.pos(), tl.now))
    tl.transcribe("what time is it")
    spec = tl.of(StartReply)[-1]
    tl.audio(5)
    tl.ended(begin, tl.pos() - 5 * BLOCK)
    assert isinstance(spec, StartReply) and spec.responder.user_text == "what time is it" and tl.confirmed(spec)
    tl.send(ReplyDone(spec.turn, "Noon.", False, tl.now))
    assert tl.of(StartReply)[-1] is spec, "the words from before the newer turn are not answered after it"


SCENARIOS: list[tuple[Callable[[Policy], None], tuple[Policy, ...]]] = [
    (speculative_start_then_resume, (DAEMON,)),  # a Realtime session never speculates
    (speculative_start_then_confirm, (DAEMON,)),
    (speculation_stops_feeding_the_transcriber, (DAEMON,)),
    (barge_in, (DAEMON, REALTIME)),
    (false_start, (DAEMON, REALTIME)),
    (ptt_overrides_vad, (DAEMON,)),  # Realtime has no hotkey
    (manual_commit, (REALTIME,)),  # the daemon has no commit
    (function_outputs_continue, (REALTIME,)),  # the daemon runs its tools inside the reply
    (cancel_mid_reply, (DAEMON, REALTIME)),
    (engine_error, (DAEMON, REALTIME)),
    (model_failure, (DAEMON, REALTIME)),
    (failed_speculation_is_silent, (DAEMON,)),  # a Realtime session never speculates
    (mute, (DAEMON, REALTIME)),
    (echo_after_the_reply, (DAEMON, REALTIME)),
    (backchannel_leaves_the_reply, (DAEMON,)),  # Realtime clients judge their own users' words
    (words_over_reply_take_the_turn, (DAEMON,)),
    (short_words_wait_for_the_end, (DAEMON,)),
    (speech_over_reply_without_barge_in, (DAEMON,)),
]
CASES = [
    pytest.param(scenario, policy, id=f"{scenario.__name__}-{'daemon' if policy is DAEMON else 'realtime'}")
    for scenario, policies in SCENARIOS
    for policy in policies
]


@pytest.mark.parametrize(("scenario", "policy"), CASES)
def test_scenario(scenario: Callable[[Policy], None], policy: Policy) -> None:
    """Each scripted timeline ends in the decisions its docstring states (see the scenario functions)."""
    scenario(policy)


def test_level_dbfs_is_one_formula_for_both_formats() -> None:
    """int16 and float32 of the same signal have the same level; full scale is 0 dB, silence the floor."""
    x = np.full(100, 0.1, dtype=np.float32)
    assert abs(level_dbfs(x) + 20.0) < 1e-4
    assert abs(level_dbfs((x * 32768).astype(np.int16)) - level_dbfs(x)) < 0.01
    assert level_dbfs(np.zeros(10, dtype=np.int16)) == -120.0


@dataclasses.dataclass(frozen=True)
class ScoredPolicy:
    """A model-backed end-of-turn policy (as SmartTurnPolicy): ask at 200 ms, wait up to 2 s."""

    score_after_ms: int | None = 200

    def decide(self, ev: TurnEvidence) -> Decision:
        if ev.score is not None and ev.score >= 0.5:
            return "end"
        return "end" if ev.silence_ms >= 2000 else "wait"


def test_a_model_backed_policy_scores_the_pause_and_holds_a_thinking_pause() -> None:
    """A second end-of-turn policy plugs in without touching the core: at 200 ms of silence the core asks for a
    score of the turn's audio and that silence; a low score keeps the turn open past the VAD's end, speech then
    resumes it, the next score hears that resumed segment (with a 200 ms lead-in), and a high score at that pause
    ends it at once."""
    tl = Timeline(dataclasses.replace(DAEMON, speculative=False))
    tl.core.endpointer.policy = ScoredPolicy()
    tl.audio(10, value=1000)
    tl.started(0)
    pause = tl.pos()
    tl.vad(SilenceStarted(pause, tl.now))
    tl.audio(12)  # 240 ms of silence
    asks = [a for a in tl.of(ScoreTurn) if isinstance(a, ScoreTurn)]
    trail = CAPTURE_RATE * 200 // 1000  # the score hears the pause's first score_after_ms of silence too
    assert len(asks) == 1 and len(asks[0].audio) == pause + trail
    assert np.all(asks[0].audio[:pause] == 1000) and np.all(asks[0].audio[pause:] == 0)
    tl.send(Scored(asks[0].job, 0.1, tl.now))  # "mid-thought"
    tl.ended(0, pause)  # the VAD's hangover passes: the policy still waits
    assert not tl.of(Finalize) and tl.core.state is TurnState.USER_SPEAKING
    resume = tl.pos()
    tl.audio(10, value=2000)
    tl.started(resume)  # the VAD starts anew; the core goes on with the same turn
    second = tl.pos()
    tl.vad(SilenceStarted(second, tl.now))
    tl.audio(12)
    asks = [a for a in tl.of(ScoreTurn) if isinstance(a, ScoreTurn)]
    lead = asks[1].audio[:SCORE_LEAD_IN]  # the second score hears the resumed segment with 200 ms before it
    assert len(asks) == 2 and len(asks[1].audio) == second - resume + SCORE_LEAD_IN + trail
    assert np.all(lead == 0) and np.all(asks[1].audio[SCORE_LEAD_IN:-trail] == 2000)
    tl.send(Scored(asks[1].job, 0.9, tl.now))
    assert len(tl.of(Finalize)) == 1 and tl.core.state is TurnState.THINKING
    fed = np.concatenate([a.audio for a in tl.of(Feed) if isinstance(a, Feed)])
    assert np.count_nonzero(fed == 1000) == 10 * BLOCK and np.count_nonzero(fed == 2000) == 10 * BLOCK


def paused_for_a_score(tl: Timeline) -> list[ScoreTurn]:
    """Under ScoredPolicy the user speaks and pauses 240 ms; returns the score requests so far."""
    tl.core.endpointer.policy = ScoredPolicy()
    tl.audio(10, value=1000)
    tl.started(0)
    tl.vad(SilenceStarted(tl.pos(), tl.now))
    tl.audio(12)
    return [a for a in tl.of(ScoreTurn) if isinstance(a, ScoreTurn)]


def test_a_failed_score_is_reported_and_ends_the_turn_as_the_silence_rule_would() -> None:
    """When the end-of-turn model fails, its error is published and the pause counts as complete (a broken model
    must not hold the turn open)."""
    tl = Timeline(dataclasses.replace(DAEMON, speculative=False))
    (ask,) = paused_for_a_score(tl)
    assert not tl.of(Finalize)
    tl.send(Scored(ask.job, 0.0, tl.now, RuntimeError("onnx session lost")))
    errors = tl.events(ErrorEvent)
    assert [e.message for e in errors] == ["scoring the end of turn: RuntimeError: onnx session lost"]  # type: ignore[attr-defined]
    assert len(tl.of(Finalize)) == 1 and tl.core.state is TurnState.THINKING


def test_the_score_is_asked_as_soon_as_the_vad_reports_enough_silence() -> None:
    """When the VAD reports a pause that has already lasted score_after_ms, the core asks for the score at that
    event, not one audio block later."""
    tl = Timeline(dataclasses.replace(DAEMON, speculative=False))
    tl.core.endpointer.policy = ScoredPolicy()
    tl.audio(10, value=1000)
    tl.started(0)
    pause = tl.pos()
    tl.audio(10)  # 200 ms of silence, then the VAD says so
    assert not tl.of(ScoreTurn)
    tl.vad(SilenceStarted(pause, tl.now))
    asks = [a for a in tl.of(ScoreTurn) if isinstance(a, ScoreTurn)]
    assert len(asks) == 1 and len(asks[0].audio) == pause + CAPTURE_RATE * 200 // 1000


def test_a_score_asked_at_the_pause_notice_ends_the_turn_when_the_silence_is_confirmed() -> None:
    """Issue 13 (d): at the VAD's early notice of a pause (PauseStarted) the core asks for the score of the speech
    plus score_after_ms of silence, the part not yet heard as zeros; the answer ends nothing until SilenceStarted
    confirms that same pause, which then ends the turn at once with no second ask. Voice before the confirmation
    starts a new pause: the old answer is dropped and the new pause is asked about afresh."""
    tl = Timeline(dataclasses.replace(DAEMON, speculative=False))
    tl.core.endpointer.policy = ScoredPolicy()
    tl.audio(10, value=1000)
    tl.started(0)
    first = tl.pos()
    tl.audio(4)  # 80 ms of the pause heard
    tl.vad(PauseStarted(first, tl.now))
    (early,) = [a for a in tl.of(ScoreTurn) if isinstance(a, ScoreTurn)]
    trail = CAPTURE_RATE * 200 // 1000
    assert len(early.audio) == first + trail and np.all(early.audio[:first] == 1000) and not early.audio[first:].any()
    tl.send(Scored(early.job, 0.9, tl.now))
    assert not tl.of(Finalize) and tl.core.state is TurnState.USER_SPEAKING  # not confirmed yet
    tl.audio(3, value=1000)  # voice before the confirmation: the VAD starts a new pause after it
    second = tl.pos()
    tl.audio(4)
    tl.vad(PauseStarted(second, tl.now))
    asks = [a for a in tl.of(ScoreTurn) if isinstance(a, ScoreTurn)]
    assert len(asks) == 2 and len(asks[1].audio) == second + trail
    tl.audio(6)
    tl.vad(SilenceStarted(second, tl.now))
    assert not tl.of(Finalize), "the first pause's answer is not this pause's"
    tl.send(Scored(asks[1].job, 0.9, tl.now))
    assert len(tl.of(Finalize)) == 1 and tl.core.state is TurnState.THINKING
    assert len(tl.of(ScoreTurn)) == 2

    tl = Timeline(dataclasses.replace(DAEMON, speculative=False))  # the answer came first: the end is at once
    tl.core.endpointer.policy = ScoredPolicy()
    tl.audio(10, value=1000)
    tl.started(0)
    pause = tl.pos()
    tl.audio(4)
    tl.vad(PauseStarted(pause, tl.now))
    tl.send(Scored(tl.of(ScoreTurn)[-1].job, 0.9, tl.now))  # type: ignore[attr-defined]
    tl.audio(6)
    tl.vad(SilenceStarted(pause, tl.now))
    assert len(tl.of(Finalize)) == 1 and len(tl.of(ScoreTurn)) == 1
    assert [e.new for e in tl.events(StateChanged)][-1] is TurnState.THINKING  # type: ignore[attr-defined]


def test_a_model_judged_turn_publishes_one_start_and_one_end() -> None:
    """With a model-backed policy the VAD's end and new start inside the open turn are not published: a Realtime
    client sees one speech start and one speech end, from the turn's start to where the model ended it."""
    tl = Timeline(REALTIME)
    tl.core.endpointer.policy = ScoredPolicy()
    tl.audio(10, value=1000)
    tl.started(0)
    pause = tl.pos()
    tl.vad(SilenceStarted(pause, tl.now))
    tl.audio(12)
    tl.send(Scored(tl.of(ScoreTurn)[-1].job, 0.1, tl.now))  # type: ignore[attr-defined]
    tl.ended(0, pause)
    resume = tl.pos()
    tl.audio(10, value=2000)
    tl.started(resume)
    second = tl.pos()
    tl.vad(SilenceStarted(second, tl.now))
    tl.audio(12)
    tl.send(Scored(tl.of(ScoreTurn)[-1].job, 0.9, tl.now))  # type: ignore[attr-defined]
    assert [e.start_sample for e in tl.events(SpeechStarted)] == [0]  # type: ignore[attr-defined]
    ended = [(e.start_sample, e.end_sample) for e in tl.events(SpeechEnded)]  # type: ignore[attr-defined]
    assert ended == [(0, second)] and len(tl.of(Finalize)) == 1


def test_a_score_that_arrives_after_speech_resumed_is_not_used_for_a_later_pause() -> None:
    """The model answers a pause after the user already spoke on (slow scoring on a busy machine): that score
    ends nothing, and the next pause is scored afresh instead of reusing it."""
    tl = Timeline(dataclasses.replace(DAEMON, speculative=False))
    (first,) = paused_for_a_score(tl)
    tl.audio(10, value=1000)
    tl.vad(SpeechResumed(tl.pos() - 10 * BLOCK, tl.now))
    tl.send(Scored(first.job, 0.9, tl.now))  # "complete", for the pause that is over
    assert not tl.of(Finalize) and tl.core.state is TurnState.USER_SPEAKING
    tl.vad(SilenceStarted(tl.pos(), tl.now))
    tl.audio(12)
    asks = [a for a in tl.of(ScoreTurn) if isinstance(a, ScoreTurn)]
    assert len(asks) == 2 and not tl.of(Finalize)
    tl.send(Scored(asks[1].job, 0.9, tl.now))
    assert len(tl.of(Finalize)) == 1


# ---- the wake phrase (a policy of the same core) ---------------------------------------------------------------

WAKE = dataclasses.replace(DAEMON, wake_phrase="hey nova", follow_up_s=8.0)


def test_wake_partial_without_the_phrase_starts_no_speculation() -> None:
    """A partial that cannot become the phrase gives no speculative answer; one that begins with it does, with
    the phrase stripped from the prompt."""
    for partial, speculates in (("what time is it", False), ("hey nova what", True)):
        tl = Timeline(WAKE)
        tl.audio(10, value=1000)
        tl.started(0)
        feed = [a for a in tl.of(Feed) if isinstance(a, Feed)][-1]
        tl.send(Fed(feed.utt, partial, tl.now))
        tl.vad(SilenceStarted(tl.pos(), tl.now))
        assert bool(tl.events(SpeculationStarted)) is speculates
        if speculates:
            tl.transcribe("Hey, Nova, what time is it?")
            spec = tl.of(StartReply)[-1]
            assert isinstance(spec, StartReply) and spec.responder.user_text == "what time is it?"


def test_wake_window_closes_on_a_tick() -> None:
    """After a reply the assistant is engaged for follow_up_s; a tick past it announces listening for the name."""
    tl = Timeline(WAKE)
    tl.audio(10, value=1000)
    tl.started(0)
    tl.ended(0, tl.pos())
    tl.transcribe("hey nova hello")
    reply = tl.of(StartReply)[-1]
    assert isinstance(reply, StartReply) and reply.responder.user_text == "hello"  # the phrase is stripped
    turn = reply.turn
    tl.send(ReplyDone(turn, "hi", False, tl.now))
    assert tl.core.follow_up_ends() == pytest.approx(tl.now + 8.0)
    tl.send(Command("tick", tl.now + 8.5))
    kinds = [e.attention for e in tl.events(AttentionChanged)]  # type: ignore[attr-defined]
    assert kinds == ["engaged", "listening_for_name"] and tl.core.follow_up_ends() is None
    start = tl.pos()
    tl.t += 9.0
    tl.audio(10, value=1000)
    tl.started(start)
    tl.ended(start, tl.pos())
    tl.transcribe("hello again")
    assert len(tl.of(StartReply)) == 1  # the unaddressed turn after the window got no reply


# ---- a turn the user goes on with (endofturn.resume_ms) -------------------------------------------------------

RESUMING = daemon_policy(CFG.replace({"pipeline.mode": "both", "endofturn.resume_ms": 1200}))


def last_feed(tl: Timeline) -> Feed:
    feed = tl.of(Feed)[-1]
    assert isinstance(feed, Feed)
    return feed


def test_resume_speech_soon_after_the_end_retracts_the_reply_and_makes_one_turn() -> None:
    """A thinking pause taken for the end ("What time is it ... in London?"): the user goes on 400 ms after the
    end while the answer plays; the answer stops and is retracted (never heard as an answer, nothing recorded), and
    the whole turn is transcribed again from its first word and answered once."""
    tl = Timeline(RESUMING)
    turn = spoken_turn(tl, "what time is it")  # speech from sample 0, answered (reply confirmed)
    tl.reply_plays(turn)
    assert tl.of(ResponseAudio)
    tl.audio(10)  # 200 ms more of the pause: 300 ms of silence after the speech in all
    resumed = tl.pos()
    tl.audio(10, value=1000)  # the speaker is silent at this capture time (no echo to judge)
    tl.started(resumed)
    assert tl.of(DropReply) == [DropReply(turn)] and InterruptReply(turn) not in tl.actions
    assert isinstance(tl.actions[tl.actions.index(DropReply(turn)) - 2], FlushAudio)  # the answer stops at once
    done = tl.events(ResponseDone)[-1]
    assert done.turn == turn and done.interrupted and done.text == ""  # type: ignore[attr-defined]
    assert len(last_feed(tl).audio) == tl.pos()  # re-fed from the turn's first sample (0)
    assert tl.core.state is TurnState.USER_SPEAKING
    tl.audio(5)
    tl.ended(resumed, tl.pos() - 5 * BLOCK)
    tl.transcribe("what time is it in london")
    final = tl.of(StartReply)[-1]
    assert isinstance(final, StartReply) and tl.confirmed(final) and final.turn == turn + 1
    assert final.responder.user_text == "what time is it in london"
    assert len(tl.of(StartReply)) == 2


def test_resume_before_the_first_transcript_is_back_answers_only_the_whole_turn() -> None:
    """The user goes on while the first half is still being transcribed: that transcript answers nothing, and the
    only reply is the whole turn's."""
    tl = Timeline(dataclasses.replace(RESUMING, speculative=False))
    tl.audio(10, value=1000)
    tl.started(0)
    end = tl.pos()
    tl.audio(5)
    tl.ended(0, end)
    first = tl.of(Finalize)[-1]
    assert isinstance(first, Finalize)
    resumed = tl.pos()
    tl.audio(10, value=1000)
    tl.started(resumed)
    tl.send(Transcribed(first.job, "what time is it", "en", tl.now))  # late: the turn was reopened
    assert not tl.of(StartReply)
    assert len(last_feed(tl).audio) == tl.pos()
    tl.audio(5)
    tl.ended(resumed, tl.pos() - 5 * BLOCK)
    tl.transcribe("what time is it in london")
    assert [a.responder.user_text for a in tl.of(StartReply)] == ["what time is it in london"]  # type: ignore[attr-defined]


def test_resume_over_the_playing_answer_must_prove_it_is_the_user_first() -> None:
    """Speech that starts while the answer is at the speaker could be its echo: it is a candidate until its words
    arrive, then it reopens the turn (from the first word of the turn, not of the candidate)."""
    tl = Timeline(RESUMING)
    turn = spoken_turn(tl, "what time is it")
    tl.reply_plays(turn)
    resumed = tl.pos()
    tl.audio(10, value=3000, speaker_dbfs=-20.0)
    tl.started(resumed)
    assert not tl.of(DropReply) and not tl.of(InterruptReply), "not yet: it may be the echo"
    user = tl.core.user
    assert user is not None and user.candidate and user.resumes is not None
    tl.send(Fed(user.id, "in london", tl.now))
    assert tl.of(DropReply) == [DropReply(turn)] and InterruptReply(turn) not in tl.actions
    assert len(last_feed(tl).audio) == tl.pos()  # the whole turn again, from sample 0
    assert tl.core.user is not None and not tl.core.user.candidate


def test_speech_after_the_resume_window_is_a_new_turn() -> None:
    """Past `resume_ms` after the end, speech over the reply is an interruption or a new turn, never a reopen."""
    tl = Timeline(barging(RESUMING, backchannels=frozenset()))
    turn = spoken_turn(tl)
    tl.reply_plays(turn)
    tl.audio(70)  # 1.4 s
    start = tl.pos()
    tl.audio(10, value=3000, speaker_dbfs=-20.0)
    tl.started(start)
    assert InterruptReply(turn) in tl.actions and not tl.of(DropReply)
    assert len(last_feed(tl).audio) == tl.pos() - start  # only the new speech


# ---- an early end the user could not take back (issue 13 c on a fresh daemon) ----------------------------------

UNKNOWN_ROOM = SmartTurnPolicy(room_unknown_wait_ms=1200)  # as endofturn.policy_from_config with resume_ms 1200


def paused_question(tl: Timeline) -> None:
    """ "What time is it" in a room the echo canceller has not heard yet, 240 ms of silence, and a sure score."""
    tl.core.endpointer.policy = UNKNOWN_ROOM
    tl.audio(10, value=1000, room_known=False)
    tl.started(0)
    tl.vad(SilenceStarted(tl.pos(), tl.now))
    tl.audio(12, room_known=False)
    ask = tl.of(ScoreTurn)[-1]
    assert isinstance(ask, ScoreTurn)
    tl.send(Scored(ask.job, 0.9, tl.now))


def test_a_sure_score_in_an_unknown_room_waits_and_the_user_goes_on_in_the_same_turn() -> None:
    """Before the echo canceller knows the room (it would turn the user down over the reply, so an early end could
    not be taken back), a pause the model calls the end ends nothing within endofturn.resume_ms: the user going on
    after 600 ms continues the same turn, and once the room is known a sure score ends the next pause at once, one
    transcript and one answer for the whole question."""
    tl = Timeline(dataclasses.replace(RESUMING, speculative=False))
    paused_question(tl)
    tl.audio(18, room_known=False)  # 600 ms of silence in all
    assert not tl.of(Finalize) and tl.core.state is TurnState.USER_SPEAKING
    resumed = tl.pos()
    tl.audio(10, value=2000, room_known=False)
    tl.started(resumed)
    tl.vad(SilenceStarted(tl.pos(), tl.now))
    tl.audio(12)  # the canceller has learned the room meanwhile
    ask = tl.of(ScoreTurn)[-1]
    assert isinstance(ask, ScoreTurn)
    tl.send(Scored(ask.job, 0.9, tl.now))
    assert len(tl.of(Finalize)) == 1 and tl.core.state is TurnState.THINKING
    tl.transcribe("what time is it in london")
    assert [a.responder.user_text for a in tl.of(StartReply)] == ["what time is it in london"]  # type: ignore[attr-defined]


def test_a_sure_score_in_an_unknown_room_ends_the_turn_when_the_resume_window_is_over() -> None:
    """With the room unknown and the user silent, the turn the model called complete ends at resume_ms of silence,
    not a block earlier."""
    tl = Timeline(dataclasses.replace(RESUMING, speculative=False))
    paused_question(tl)
    tl.audio(47, room_known=False)  # 1180 ms of silence
    assert not tl.of(Finalize)
    tl.audio(1, room_known=False)
    assert len(tl.of(Finalize)) == 1 and tl.core.state is TurnState.THINKING


def test_a_session_that_never_asks_for_a_response_holds_a_bounded_number_of_messages() -> None:
    """A Realtime client that only adds user messages (transcription only) for weeks holds the newest MAX_PENDING
    of them, not all: the response it finally asks for answers those."""
    tl = Timeline(REALTIME)
    tl.send(SetPolicy(dataclasses.replace(REALTIME, vad_turns=False), FixedSilence(700), tl.now))
    for i in range(MAX_PENDING + 100):
        tl.send(UserText(f"message {i}", tl.now))
    assert len(tl.core.pending) == MAX_PENDING
    tl.send(CreateResponse(tl.now))
    text = tl.of(StartReply)[-1].responder.user_text  # type: ignore[attr-defined]
    assert text.split("\n") == [f"message {i}" for i in range(100, MAX_PENDING + 100)]
