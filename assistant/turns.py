"""The turn core: every turn-taking decision, sans I/O (in the spirit of python-websockets' `protocol.py`).

`TurnCore.handle(input) -> list[Action]`: the typed `Input`s below in, the `Action`s the driver executes out. Time
enters only as values on the inputs, so a scripted timeline of inputs is a complete test. `Policy` holds what
differs between the daemon and a Realtime session; the end-of-turn strategy, an `Endpointer` over an
`EndOfTurnPolicy` (assistant/endofturn.py), weighs the user's pauses.

Echo: a block is judged by the time it was recorded. Recorded while the speaker played (`AudioIn.speaker_dbfs`)
or within `echo_tail_ms` after its last sample left (`speaker_end`; the capture clock's rule, audio/ring.py), it runs
through the VAD's stricter playback gate, and speech whose onset falls there starts a turn only once its
transcript has words.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from assistant.audio.format import CAPTURE_RATE, SILENT_DBFS
from assistant.audio.ring import AudioRing, CaptureClock
from assistant.endofturn import BargeInRule, EndOfTurnPolicy, Endpointer
from assistant.errors import InputError, ModelError
from assistant.events import (
    AttentionChanged,
    ErrorEvent,
    Event,
    FalseStart,
    FinalTranscript,
    LatencyTrace,
    MuteChanged,
    PartialTranscript,
    PauseStarted,
    PushToTalk,
    ResponseAudio,
    ResponseDone,
    ResponseStarted,
    ResponseTextDelta,
    SessionEvent,
    SilenceStarted,
    SpeculationCancelled,
    SpeculationStarted,
    SpeechEnded,
    SpeechResumed,
    SpeechStarted,
    StateChanged,
    TurnState,
    VadEvent,
)
from assistant.wake import TurnSource, WakeGate

APOLOGY = "Sorry, I could not get an answer just now. Please ask again."
MAX_PENDING = 256  # user messages held for a Realtime response: a transcription-only session runs for weeks


@dataclass(frozen=True)
class Policy:
    """What differs between the daemon (hands-free and/or push-to-talk) and a Realtime session."""

    vad_turns: bool = True  # the VAD starts and ends turns (hands-free, server VAD); else PTT or commit only
    ptt: bool = True  # the hotkey may start and end turns
    speculative: bool = True  # answer at the first silence, play only once the turn is confirmed
    answer_turns: bool = True  # a finished spoken turn is answered (daemon); else it queues a user message
    auto_respond: bool = True  # Realtime server VAD: a queued transcript creates a response by itself
    barge_in: BargeInRule = field(default_factory=BargeInRule)  # when speech during a reply interrupts it
    preroll_samples: int = 0
    echo_tail_ms: int = 200  # after the speaker's last sample, echo may still arrive (path delay + reverberation)
    wake_phrase: str = ""  # hands-free turns are answered only when addressed (see assistant/wake.py); "" = all
    follow_up_s: float = 8.0  # after the assistant spoke, turns without the phrase are answered for this long
    resume_ms: int = 0  # speech this soon after an answered turn's end continues that turn (its reply is retracted)


@dataclass(frozen=True)
class Responder:
    """What a reply answers: the user's words, or exactly this text to speak (no LLM)."""

    user_text: str | None = None
    speak_text: str | None = None
    instructions: str | None = None  # a system prompt for this reply only (Realtime response.create)
    continues: bool = False  # Realtime: go on with the answer that called the client's functions (their outputs)


# ---- inputs --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioIn:
    """A captured block: int16 16 kHz mono recorded from capture time `t`, processed at `now`."""

    samples: np.ndarray = field(compare=False)
    t: float
    now: float
    speaker_dbfs: float = SILENT_DBFS  # what the speaker played around `t` (the sink's level_at(t))
    speaker_end: float | None = None  # when the speaker's last queued sample left it (None: still playing/none)
    room_known: bool = True  # the echo canceller has learned how the room returns the speaker (TurnEvidence)
    speaker_linear: bool = False  # speaker_dbfs is the linear echo path's bound (EchoCanceller.linear_at)


@dataclass(frozen=True)
class Fed:
    """A transcriber feed job ended: `partial` is the new partial transcript (None: unchanged or failed)."""

    utt: int
    partial: str | None
    now: float
    error: BaseException | None = None


@dataclass(frozen=True)
class Transcribed:
    """The transcriber's final for finalize job `job` ("" and `error` when it failed)."""

    job: int
    text: str
    language: str
    now: float
    error: BaseException | None = None


@dataclass(frozen=True)
class Scored:
    """The end-of-turn model's P(turn complete) for score request `job` (one pause of one utterance), or its
    `error`."""

    job: int
    score: float
    now: float
    error: BaseException | None = None


@dataclass(frozen=True)
class ReplyDone:
    """The reply ended: played out, interrupted (text = the heard part), or failed with `error` (a ModelError:
    asking again may work; an InputError: the client must send something else)."""

    turn: int
    text: str
    interrupted: bool
    now: float
    error: BaseException | None = None
    trace: LatencyTrace | None = None  # its latency milestones, published after ResponseDone


CommandKind = Literal["ptt_start", "ptt_stop", "interrupt", "mute", "unmute", "commit", "clear", "tool_output", "tick"]


@dataclass(frozen=True)
class Command:
    """A command without data: push-to-talk down/up; stop the reply now (the daemon's interrupt, Realtime
    response.cancel); mute/unmute; Realtime manual mode's commit (the user's audio so far is one message) and clear;
    a Realtime function output (the next response continues the answer that made the call); tick (time passed:
    the driver's timer at the end of the wake phrase's follow-up window)."""

    kind: CommandKind
    now: float


@dataclass(frozen=True)
class UserText:
    text: str
    now: float


@dataclass(frozen=True)
class CreateResponse:
    """Answer the pending user messages (Realtime: `responder` gives only its instructions), or the daemon's `ask`
    (`responder.user_text`) / `say` (`speak_text`) now."""

    now: float
    responder: Responder = Responder()
    speech_end: float = 0.0  # a spoken turn answered by server VAD: when its speech ended (0: a client's request)
    endpoint: float = 0.0  # and when its end was decided (for the latency trace)


@dataclass(frozen=True)
class SetPolicy:
    policy: Policy
    end_of_turn: EndOfTurnPolicy
    now: float
    new_vad: bool = False  # the driver replaced its VAD: positions restart from here


# VAD events (positions on the capture clock: see ResetVad) and a reply's text and audio are inputs as they are
Input = (
    AudioIn
    | VadEvent
    | Fed
    | Transcribed
    | Scored
    | ResponseTextDelta
    | ResponseAudio
    | ReplyDone
    | Command
    | UserText
    | CreateResponse
    | SetPolicy
)

# ---- actions -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunVad:
    """Feed the block to the VAD; `echo_dbfs` is the playback level to gate against (None: no playback)."""

    samples: np.ndarray = field(compare=False)
    echo_dbfs: float | None = None
    linear: bool = False  # echo_dbfs is the linear echo path's bound (Vad.set_playback)


@dataclass(frozen=True)
class ResetVad:
    """Reset the VAD: the positions of its events count from `origin` (the capture position now)."""

    origin: int


@dataclass(frozen=True)
class ResetTranscriber:
    pass


@dataclass(frozen=True)
class Feed:
    """Feed this audio of utterance `utt` to the transcriber (one job in flight; answer with `Fed`)."""

    utt: int
    audio: np.ndarray = field(compare=False)


@dataclass(frozen=True)
class Finalize:
    """Finalize the transcriber after the feeds before it (answer with `Transcribed(job)`)."""

    job: int


@dataclass(frozen=True)
class ScoreTurn:
    """Run the end-of-turn model over the turn's audio (answer with `Scored(job)`)."""

    job: int
    audio: np.ndarray = field(compare=False)


@dataclass(frozen=True)
class StartReply:
    """Start reply `turn` (LLM -> TTS); it plays nothing until confirmed (a `ConfirmReply` may follow at once)."""

    turn: int
    responder: Responder
    speech_end: float  # the true end of the user's speech (capture time), for the latency trace
    endpoint: float  # when the turn was decided
    backlog_ms: float = 0.0  # how far capture processing lagged behind the microphone during the turn


@dataclass(frozen=True)
class ConfirmReply:
    """The turn is real: a speculative reply plays from now on; its latency counts from these times."""

    turn: int
    speech_end: float  # the true end of the user's speech (capture time)
    endpoint: float  # when the turn was decided


@dataclass(frozen=True)
class DropReply:
    """A speculative reply that is not needed: stop it, nothing of it goes into the history."""

    turn: int


@dataclass(frozen=True)
class InterruptReply:
    """Cut the reply short: flush the speaker, stop it, keep what was heard (answer with `ReplyDone`)."""

    turn: int


@dataclass(frozen=True)
class FlushAudio:
    """Drop queued speaker audio; the sink's played position restarts (a reply's first chunk follows)."""


@dataclass(frozen=True)
class Publish:
    event: Event | SessionEvent


# a reply's audio, once the reply may play, is the action to play it (ResponseAudio as it came)
Action = (
    RunVad
    | ResetVad
    | ResetTranscriber
    | Feed
    | Finalize
    | ScoreTurn
    | StartReply
    | ConfirmReply
    | DropReply
    | InterruptReply
    | ResponseAudio
    | FlushAudio
    | Publish
)

# ---- state ---------------------------------------------------------------------------------------------------


@dataclass
class Utterance:
    """The user's turn in progress: audio from `start` goes to the transcriber."""

    id: int
    start: int
    fed_to: int
    ptt: bool = False
    candidate: bool = False  # during (or in the echo of) a reply: not a turn until it earns one
    feeding: bool = False
    partial: str = ""
    spec_job: int | None = None  # the speculative finalize in flight or done
    spec_turn: int | None = None  # the speculative reply's turn number
    spec_text: str | None = None  # the speculative transcript, once known
    spec_language: str = ""
    started_at: float = 0.0  # when the speech began (the wake phrase's follow-up window counts from here)
    resumes: Closed | None = None  # speech over the reply that continues this turn once it proves it is the user

    @property
    def source(self) -> TurnSource:
        return "push_to_talk" if self.ptt else "hands_free"  # the hotkey's turns bypass the wake phrase


@dataclass(frozen=True)
class Closed:
    """The user's latest answered turn: reopened when they go on within `Policy.resume_ms` of its end (a thinking
    pause the end-of-turn policy took for the end), so the second half is never answered on its own or lost."""

    turn: int
    user: Utterance  # its speech, from `user.start`
    speech_end: float  # capture time of its last speech


@dataclass
class ReplyState:
    turn: int
    confirmed: bool
    asked: bool  # it answers the user's words (not a given text to speak)
    held: list[Action] = field(default_factory=list)  # what plays/publishes once confirmed
    audio_started: bool = False


@dataclass
class Finalizing:
    """A finalize job in flight and what its transcript is for."""

    purpose: Literal["answer", "judge", "queue", "speculate"]  # answer it; judge a barge-in; queue it (Realtime)
    turn: int
    speech_end: float
    endpoint: float
    user: Utterance  # the speech it transcribes
    respond: bool = False


class TurnCore:
    """Turn-taking for one conversation. `handle(input)` returns the actions to execute, in order."""

    def __init__(self, policy: Policy, end_of_turn: EndOfTurnPolicy, ring_samples: int) -> None:
        self.policy = policy
        self.endpointer = Endpointer(end_of_turn)  # the end-of-turn strategy: it weighs the user's pauses
        self.state = TurnState.IDLE
        self.muted = False
        self.ptt = False
        self.turn = 0  # the latest reply's number (speculative ones count)
        self.ring = AudioRing(ring_samples)
        self.clock = CaptureClock()
        self.user: Utterance | None = None
        self.current: ReplyState | None = None  # the confirmed reply in flight
        self.replies: dict[int, ReplyState] = {}  # every reply not yet done
        # Realtime: user messages not answered yet, in the order added (int: a queued transcript's job, coming)
        self.pending: list[str | int] = []
        self.tool_output = False  # Realtime: function outputs arrived since the last reply began
        self.backlog_ms = 0.0  # the largest capture lag during the current user turn
        self._ids = 0
        self._jobs: dict[int, Finalizing] = {}
        self._creating: tuple[int, CreateResponse] | None = None  # a response (its turn) waiting for transcripts
        self._next: tuple[str, float] | None = None  # words said over the reply, answered when it ends (speech end)
        self._closed: Closed | None = None  # the latest answered turn, while it may still be resumed
        self._out: list[Action] = []
        self._now = 0.0  # the latest input's time (for the events it causes)
        self.wake = WakeGate(policy.wake_phrase, policy.follow_up_s)

    # ---- the one entry point --------------------------------------------------------------------------------

    def handle(self, inp: Input) -> list[Action]:
        """Apply one input; returns the actions it causes (the driver executes them in order)."""
        self._out = []
        self._now = inp.time if isinstance(inp, VadEvent | ResponseTextDelta | ResponseAudio) else inp.now
        match inp:
            case AudioIn():
                self._on_audio(inp)
            case SpeechStarted() | PauseStarted() | SilenceStarted() | SpeechResumed() | SpeechEnded():
                self._on_vad(inp)
            case Fed():
                self._on_fed(inp)
            case Transcribed():
                self._on_transcribed(inp)
            case Scored():
                self._on_scored(inp)
            case ResponseTextDelta():
                self._reply_out(inp.turn, Publish(inp))
            case ResponseAudio():
                self._reply_out(inp.turn, inp)
            case ReplyDone():
                self._on_reply_done(inp)
            case Command(kind="ptt_start" | "ptt_stop"):
                self._on_ptt(inp.kind == "ptt_start")
            case Command(kind="interrupt"):
                self._on_interrupt()
            case Command(kind="mute" | "unmute"):
                self._on_mute(inp.kind == "mute")
            case Command(kind="commit"):
                self._on_commit()
            case Command(kind="clear"):
                self._drop_user()
                self._reset_vad()
            case Command(kind="tool_output"):
                self.tool_output = True
            case UserText():
                self._on_user_text(inp)
            case CreateResponse():
                self._on_create(inp)
            case SetPolicy():
                self._on_set_policy(inp)
        if (attention := self.wake.announce(self._now)) is not None:
            self._emit(Publish(AttentionChanged(attention.value, self._now)))
        return self._out

    @property
    def speculating(self) -> bool:
        return self.user is not None and self.user.spec_job is not None

    @property
    def transcribing(self) -> bool:
        """A finalize job whose transcript a response waits for is in flight."""
        return any(f.purpose == "queue" for f in self._jobs.values())

    # ---- audio ----------------------------------------------------------------------------------------------

    def _on_audio(self, a: AudioIn) -> None:
        start = self.ring.end
        n = len(a.samples)
        echo = self.clock.add(start, a.t, a.speaker_dbfs, a.speaker_end, self.policy.echo_tail_ms)
        self.endpointer.room_known = a.room_known
        if self.muted:
            self.ring.append(np.zeros(n, dtype=np.int16))  # positions stay aligned; no audio kept
            return
        self.ring.append(a.samples)
        if self.user is not None:
            self.backlog_ms = max(self.backlog_ms, (a.now - (a.t + n / CAPTURE_RATE)) * 1000.0)
        if not self.policy.vad_turns and not self.policy.ptt and self.user is None:
            self._begin(start)  # Realtime manual mode: all audio is the user's until commit or clear
        if self.user is not None:
            self._feed()
        self._check_end_of_turn(a.now)  # before the VAD sees the block: its events then follow this decision
        if self.policy.vad_turns or self.policy.ptt:
            self._emit(RunVad(a.samples, echo, a.speaker_linear and echo == a.speaker_dbfs))

    def _on_vad(self, ev: VadEvent) -> None:
        if not self.policy.vad_turns:
            return  # push-to-talk alone: the VAD's events are no news
        user = self.user
        if not isinstance(ev, PauseStarted) and (user is None or self.ptt or self.endpointer.news(ev)):
            self._emit(Publish(ev))  # (a pause notice is the core's own cue)
        if self.ptt:
            return  # the hotkey overrides endpointing while held
        if user is None:
            if isinstance(ev, SpeechStarted):
                self._speech_started(ev)
            return
        if isinstance(ev, SpeechEnded) and (ev.truncated or not self.endpointer.judges):
            # the VAD's hangover (adaptive or not) is the silence rule; a policy that judges pauses may wait longer
            self._end_turn(user, ev.end_sample, ev.time)
            return
        self.endpointer.vad(ev)  # a new start here is inside a pause the end-of-turn policy kept open
        if isinstance(ev, SpeechStarted | SpeechResumed):
            self._cancel_speculation(ev.time)
        elif isinstance(ev, SilenceStarted) and self.policy.speculative and not user.candidate:
            if user.spec_job is None and self.wake.may_speculate(user.partial, user.started_at, user.source):
                self._speculate(user, ev.time)
        self._check_end_of_turn(ev.time, vad_ended=isinstance(ev, SpeechEnded))  # a score may be due now

    def _speech_started(self, ev: SpeechStarted) -> None:
        """Speech by capture time: during a reply (or its echo) it must qualify before it takes the turn."""
        closed = self._resumable(ev.onset_sample)
        if closed is not None:
            if self.current is not None and self.clock.echo_at(ev.onset_sample):
                self._begin(ev.start_sample, candidate=True).resumes = closed  # over the reply's own voice: words first
            else:
                self._reopen(closed)
            return
        if self.current is not None and not self.policy.barge_in.enabled:
            # transcribed, the reply goes on: the daemon answers it once the reply is over (nothing said is lost)
            self._begin(ev.start_sample, candidate=self.policy.answer_turns)
            return
        if self.current is not None and self.policy.barge_in.at_start:
            self._interrupt_current()
        elif self.current is not None or self.clock.echo_at(ev.onset_sample):
            self._begin(ev.start_sample, candidate=True)  # it must prove it is the user
            return
        self._begin(ev.start_sample)

    # ---- the user's turn ------------------------------------------------------------------------------------

    def _begin(self, start: int, ptt: bool = False, candidate: bool = False) -> Utterance:
        self._ids += 1
        self.user = Utterance(self._ids, start, start, ptt, candidate, started_at=self.clock.time_of(start))
        self.endpointer.begin(start)
        self.backlog_ms = 0.0
        self._emit(ResetTranscriber())
        self._feed()
        if not candidate:
            self._set_state(TurnState.USER_SPEAKING)
        return self.user

    def _feed(self, force: bool = False) -> None:
        user = self.user
        # (not while a speculative finalize has the turn so far: resumed speech re-feeds it all, _refeed)
        if user is None or user.fed_to >= self.ring.end or (not force and (user.feeding or user.spec_job is not None)):
            return
        audio = self.ring.slice(user.fed_to, self.ring.end)
        user.fed_to, user.feeding = self.ring.end, True
        self._emit(Feed(user.id, audio))

    def _on_fed(self, f: Fed) -> None:
        user = self.user
        if user is None or f.utt != user.id:
            return
        user.feeding = False
        if f.error is not None:
            self._error("transcribing", f.error, f.now)
            self._drop_user()
            return
        if f.partial is not None:
            user.partial = f.partial
            self._emit(Publish(PartialTranscript(f.partial, f.now)))
            if user.candidate and self.policy.barge_in.takes_turn(f.partial):
                self._promote(user)
        self._feed()
        self._check_end_of_turn(f.now)

    def _promote(self, user: Utterance) -> None:
        if user.resumes is not None and self._answering(user.resumes.turn):
            self._reopen(user.resumes)
            return
        user.candidate = False
        self._interrupt_current()
        self._set_state(TurnState.USER_SPEAKING)

    def _check_end_of_turn(self, now: float, vad_ended: bool = False) -> None:
        """Ask the end-of-turn strategy whether a score is due and whether the user's turn is over."""
        user = self.user
        if user is None or user.ptt or not self.policy.vad_turns or self.ptt:
            return
        clip = self.endpointer.ask(self.ring)
        if clip is not None:
            self._emit(ScoreTurn(self.endpointer.asking, clip))
        end = self.endpointer.ends(self.ring.end, user.partial)
        if end is not None:
            self._emit(Publish(SpeechEnded(user.start, end, now)))  # the VAD's own end was not published (_on_vad)
            if not vad_ended:
                self._reset_vad()  # its pause in progress is over: the next speech must be a new start
            self._end_turn(user, end, now)

    def _on_scored(self, s: Scored) -> None:
        if s.error is not None:
            self._error("scoring the end of turn", s.error, s.now)
        # (the turn ended, or speech resumed before the model answered: a score of a past pause changes nothing)
        if self.user is not None and self.endpointer.scored(s.job, None if s.error is not None else s.score):
            self._check_end_of_turn(s.now)

    def _speculate(self, user: Utterance, now: float) -> None:
        """Silence started: transcribe and answer now, play nothing until the turn is confirmed."""
        self._feed(force=True)
        self.turn += 1
        user.spec_turn = self.turn
        user.spec_job = self._finalize(Finalizing("speculate", self.turn, 0.0, now, user))
        self._emit(Publish(SpeculationStarted(self.turn, now)))

    def _cancel_speculation(self, now: float) -> None:
        """Drop the speculative answer, if any (speech resumed, or a reply of its own takes the turn) and give the
        transcriber the whole turn again."""
        user = self.user
        if user is None or user.spec_job is None or user.spec_turn is None:
            return
        self._jobs.pop(user.spec_job, None)
        self._drop_reply(user.spec_turn)
        self._emit(Publish(SpeculationCancelled(user.spec_turn, now)))
        self._refeed(user)

    def _refeed(self, user: Utterance) -> None:
        """The speculation is over and its finalize reset the transcriber: feed it the whole utterance again."""
        user.spec_job, user.spec_turn, user.spec_text = None, None, None
        self._emit(ResetTranscriber())
        user.fed_to = user.start
        self._feed(force=True)

    def _end_turn(self, user: Utterance, end_sample: int, now: float) -> None:
        """The user (the utterance in progress) finished: end-of-turn policy, hotkey release or commit."""
        speech_end = self.clock.time_of(end_sample)
        self._feed(force=True)
        self.user = None
        if user.candidate:
            self._finalize(Finalizing("judge", 0, speech_end, now, user))
            return
        if not self.policy.answer_turns:
            job = Finalizing("queue", 0, speech_end, now, user, self.policy.auto_respond and self.policy.vad_turns)
            self._hold(self._finalize(job))  # its place among the user's messages, filled by its text
            self._set_state(TurnState.THINKING if job.respond else TurnState.IDLE)
            return
        self._set_state(TurnState.THINKING)
        if user.spec_turn is None:
            self.turn += 1
        turn = self.turn if user.spec_turn is None else user.spec_turn
        job = Finalizing("answer", turn, speech_end, now, user)
        if self.policy.resume_ms and not user.ptt:
            self._closed = Closed(turn, user, speech_end)
        if user.spec_job is None:
            self._finalize(job)
        elif user.spec_job in self._jobs:  # the speculation's transcript is still coming: it answers the turn
            self._jobs[user.spec_job] = job
        else:  # its transcript is known (spec_text), its reply may be running already
            self._answer(job, user.spec_text or "", user.spec_language, now)

    def _finalize(self, job: Finalizing) -> int:
        self._ids += 1
        self._jobs[self._ids] = job
        self._emit(Finalize(self._ids))
        return self._ids

    def _on_transcribed(self, tr: Transcribed) -> None:
        job = self._jobs.pop(tr.job, None)
        if job is None:
            return  # a speculation that was cancelled
        if tr.error is not None:
            self._error("transcribing", tr.error, tr.now)
        text = tr.text.strip()
        if job.purpose == "speculate":
            user = job.user
            user.spec_text, user.spec_language = text, tr.language
            decision = self.wake.decide(text, user.started_at, user.source)
            if text and tr.error is None and decision.answer:
                self._start_reply(job.turn, Responder(decision.text), False, 0.0, job.endpoint)
            return
        if job.purpose == "answer":
            self._answer(job, text, tr.language, tr.now)
        elif job.purpose == "judge":
            self._judge(job, text, tr.language, tr.now)
        else:  # queue
            self._emit(Publish(FinalTranscript(text, tr.language, tr.now)))
            self.pending = [text if p == tr.job else p for p in self.pending if p != tr.job or text]
            if job.respond and text and self._creating is None:
                self._create(CreateResponse(tr.now, speech_end=job.speech_end, endpoint=job.endpoint))
            elif self._creating is not None and not self.transcribing:
                self._respond(*self._creating)
            elif self.state is TurnState.THINKING and self.current is None and self.user is None:
                self._set_state(TurnState.IDLE)

    def _judge(self, job: Finalizing, text: str, language: str, now: float) -> None:
        """Speech over the reply (or in its echo) ended before it took the turn: its transcript is shown, never
        lost. Words for the assistant take the turn: now, or once the reply is over when they are fewer than
        barge_in_min_words or barge-in is off. Backchannels, no words, or words not addressed to the assistant
        (wake phrase) leave the reply alone."""
        if text:
            self._emit(Publish(FinalTranscript(text, language, now)))
        decision = self.wake.decide(text, job.user.started_at, job.user.source)
        if self.policy.barge_in.words(text) == 0 or not decision.answer:
            self._emit(Publish(FalseStart(now)))  # a backchannel (or echo): the reply goes on
            return
        later = not self.policy.barge_in.takes_turn(text)
        if later and self.current is not None and self.policy.answer_turns:
            self._next = (decision.text, job.speech_end)  # answered once the reply is over
            return
        self._interrupt_current()  # its BargeIn comes before the new turn's state change
        self._reply_now(Responder(decision.text), job.speech_end, job.endpoint)

    def _answer(self, job: Finalizing, text: str, language: str, now: float) -> None:
        """A confirmed spoken turn: publish its transcript and answer it (nothing said, or not addressed by the
        wake phrase: back to listening, no reply and nothing in the history). A speculative reply of its turn that
        runs already is confirmed."""
        self._emit(Publish(FinalTranscript(text, language, now)))
        decision = self.wake.decide(text, job.user.started_at, job.user.source)
        if not text or not decision.answer:
            self._drop_reply(job.turn)
            self._set_state(TurnState.IDLE if self.user is None else self.state)
            return
        if job.turn in self.replies:
            self._confirm(job.turn, job.speech_end or job.endpoint, job.endpoint)
        else:
            self._start_reply(job.turn, Responder(decision.text), True, job.speech_end, job.endpoint)

    def follow_up_ends(self) -> float | None:
        """When the follow-up window closes (the driver sends `Command("tick")` then); None: nothing to wait for."""
        return self.wake.follow_up_ends(self._now)

    def _drop_user(self) -> None:
        user, self.user = self.user, None
        if user is None:
            return
        if user.spec_job is not None and user.spec_turn is not None:
            self._jobs.pop(user.spec_job, None)
            self._drop_reply(user.spec_turn)
        self._emit(ResetTranscriber())
        if not user.candidate and self.current is None:
            self._set_state(TurnState.IDLE)

    # ---- replies --------------------------------------------------------------------------------------------

    def _start_reply(self, turn: int, responder: Responder, confirmed: bool, speech_end: float, now: float) -> None:
        self.replies[turn] = ReplyState(turn, False, responder.user_text is not None)
        self._emit(StartReply(turn, responder, speech_end or now, now, round(self.backlog_ms, 1)))
        if confirmed:
            self._confirm(turn, speech_end or now, now)

    def _confirm(self, turn: int, speech_end: float, endpoint: float) -> None:
        reply = self.replies[turn]  # both callers know it runs: _start_reply added it, _answer checked
        self._interrupt_current()
        self._next = None  # a newer turn supersedes words waiting for the reply's end (shown as a transcript)
        reply.confirmed, self.current = True, reply
        self.wake.replying()
        self._emit(ConfirmReply(turn, speech_end, endpoint))
        held, reply.held = reply.held, []
        for action in held:
            self._emit_reply(reply, action)

    def _reply_out(self, turn: int, action: ResponseAudio | Publish) -> None:
        reply = self.replies.get(turn)
        if reply is not None and not reply.confirmed:
            reply.held.append(action)
        elif reply is not None:
            self._emit_reply(reply, action)

    def _emit_reply(self, reply: ReplyState, action: Action) -> None:
        if isinstance(action, ResponseAudio) and not reply.audio_started:
            reply.audio_started = True
            self._emit(FlushAudio())  # the sink's played position now counts this reply
            self._set_state(TurnState.ASSISTANT_SPEAKING)
        self._emit(action)

    def _on_reply_done(self, r: ReplyDone) -> None:
        """A failed speculation is silent (the confirmed answer reports its own error); a confirmed answer the
        model failed is followed by an apology in the daemon, so the user knows to ask again."""
        reply = self.replies.pop(r.turn, None)
        if r.error is not None and (reply is None or reply.confirmed):
            self._error(f"turn {r.turn}", r.error, r.now, isinstance(r.error, InputError), r.turn)
        user = self.user
        if reply is None or not reply.confirmed:  # a speculative reply failed: the turn starts afresh
            if user is not None and user.spec_turn == r.turn:  # (its transcript came: the job is done)
                self._refeed(user)
            return
        if r.trace is not None:  # first: a Realtime response.done carries the trace's token counts
            self._emit(Publish(r.trace))
        self._emit(Publish(ResponseDone(r.turn, r.text, r.interrupted, r.now)))
        if self.current is reply:
            self.current = None
            self.wake.stopped(r.now)
            if self._next is not None and user is None:
                (text, speech_end), self._next = self._next, None
                self._reply_now(Responder(text), speech_end, r.now)
                return
            if isinstance(r.error, ModelError) and reply.asked and self.policy.answer_turns:
                self._cancel_speculation(r.now)
                self._reply_now(Responder(speak_text=APOLOGY), r.now, r.now)
                return
            # speech that began over the reply stays a candidate: it proves itself by its words (issue 22)
            if user is None or user.candidate:
                self._set_state(TurnState.IDLE)

    def _interrupt_current(self) -> None:
        reply, self.current = self.current, None
        if reply is not None:
            self.wake.stopped(self._now)  # the follow-up window runs from the interruption
            self._emit(InterruptReply(reply.turn))

    def _drop_reply(self, turn: int) -> None:
        if self.replies.pop(turn, None) is not None:
            self._emit(DropReply(turn))

    # ---- a turn the user goes on with -------------------------------------------------------------------------

    def _resumable(self, onset: int) -> Closed | None:
        """The answered turn that speech with this onset continues, if any (see `Closed`)."""
        c = self._closed
        if c is None or self.ptt or self.user is not None or self.ring.start > c.user.start:
            return None
        if self.clock.time_of(onset) - c.speech_end > self.policy.resume_ms / 1000:
            return None
        return c if self._answering(c.turn) else None

    def _answering(self, turn: int) -> bool:
        """Whether the answer to `turn` is still on its way: its transcript, or its reply not yet done."""
        return turn in self.replies or any(j.purpose == "answer" and j.turn == turn for j in self._jobs.values())

    def _reopen(self, c: Closed) -> None:
        """The user goes on with turn `c`: retract its answer (nothing of it stays in the history) and transcribe
        the whole turn again from its first word, as one turn."""
        self._closed = None
        for job_id in [j for j, job in self._jobs.items() if job.purpose == "answer" and job.turn == c.turn]:
            del self._jobs[job_id]  # its transcript, still coming, answers nothing now
        reply = self.replies.get(c.turn)
        if reply is not None and self.current is reply:
            self.current = None
            self.wake.stopped(self._now)
            if reply.audio_started:
                self._emit(FlushAudio())
            self._emit(Publish(ResponseDone(c.turn, "", True, self._now)))
        self._drop_reply(c.turn)
        self.user = None
        self._begin(c.user.start).started_at = c.user.started_at

    # ---- commands -------------------------------------------------------------------------------------------

    def _on_ptt(self, down: bool) -> None:
        if not self.policy.ptt or down == self.ptt:
            return
        self.ptt = down
        self._emit(Publish(PushToTalk(down, self._now)))
        if down:
            self._cancel_speculation(self._now)
            self._interrupt_current()
            if self.user is None:
                self._begin(max(0, self.ring.end - self.policy.preroll_samples), ptt=True)
            else:
                self.user.ptt, self.user.candidate = True, False
                self._set_state(TurnState.USER_SPEAKING)
            return
        self._reset_vad()  # its utterance in progress is ours; it must not end a second turn
        if self.user is not None:
            self._end_turn(self.user, self.ring.end, self._now)

    def _on_interrupt(self) -> None:
        if self._creating is not None:  # a response still waiting for its transcripts: it never starts
            (turn, _), self._creating = self._creating, None
            self._emit(Publish(ResponseStarted(turn, self._now)))
            self._emit(Publish(ResponseDone(turn, "", True, self._now)))
            return
        self._cancel_speculation(self._now)
        if self.current is not None:
            self._interrupt_current()
            if self.user is None:
                self._set_state(TurnState.IDLE)

    def _on_mute(self, muted: bool) -> None:
        if muted:
            self._drop_user()
        elif self.muted:
            self._reset_vad()
        self.muted = muted
        self._emit(Publish(MuteChanged(muted, self._now)))

    def _on_commit(self) -> None:
        if self.user is None:
            self._emit(Publish(FinalTranscript("", "", self._now)))
            return
        self._reset_vad()
        self._end_turn(self.user, self.ring.end, self._now)

    def _on_user_text(self, u: UserText) -> None:
        if not u.text.strip():
            raise InputError("the user message is empty; put the text in item.content[0].text")
        self._hold(u.text.strip())

    def _hold(self, entry: str | int) -> None:
        self.pending.append(entry)
        texts = [i for i, p in enumerate(self.pending) if isinstance(p, str)]
        if len(self.pending) > MAX_PENDING and texts:  # the oldest text goes; a transcript still coming stays
            del self.pending[texts[0]]

    def _on_create(self, c: CreateResponse) -> None:
        if c.responder.user_text is not None or c.responder.speak_text is not None:  # in place of any speculation
            self._cancel_speculation(c.now)
            self._reply_now(c.responder, c.now, c.now)
            return
        if self._creating is not None:
            raise InputError("a response is already being prepared; wait for response.done or cancel it")
        self._create(c)

    def _reply_now(self, responder: Responder, speech_end: float, now: float) -> None:
        """A confirmed reply of its own right now (ask/say, an apology, words said over the last reply)."""
        self.turn += 1
        self._set_state(TurnState.THINKING)
        self._start_reply(self.turn, responder, True, speech_end, now)

    def _create(self, c: CreateResponse) -> None:
        self.turn += 1  # the reply's number, known now so a cancel before it starts can name it
        self._creating = (self.turn, c)
        if not self.transcribing:
            self._respond(self.turn, c)

    def _respond(self, turn: int, c: CreateResponse) -> None:
        """Answer every pending user message as reply `turn` (Realtime)."""
        self._creating = None
        text = "\n".join(p for p in self.pending if isinstance(p, str))
        self.pending = [p for p in self.pending if isinstance(p, int) and p in self._jobs]  # still coming
        continues, self.tool_output = self.tool_output and not text, False  # a new user message starts afresh
        self._emit(Publish(ResponseStarted(turn, c.now)))
        if not text and not continues:
            why = "no words were heard in the user audio and no user message was added"
            self._error("nothing to answer", f"{why}; send speech or a user message item", c.now, True, turn)
            self._emit(Publish(ResponseDone(turn, "", False, c.now)))
            return
        self._set_state(TurnState.THINKING)
        speech_end, endpoint = (c.speech_end, c.endpoint) if c.speech_end else (c.now, c.now)
        responder = dataclasses.replace(c.responder, user_text=text or None, continues=continues)
        self._start_reply(turn, responder, True, speech_end, endpoint)

    def _on_set_policy(self, s: SetPolicy) -> None:
        vad_changed = s.policy.vad_turns != self.policy.vad_turns
        self.wake.retune(s.policy.wake_phrase, s.policy.follow_up_s)
        self.policy, self.endpointer.policy = s.policy, s.end_of_turn
        if vad_changed:
            self._drop_user()
        if vad_changed or s.new_vad:
            self._reset_vad()

    # ---- plumbing -------------------------------------------------------------------------------------------

    def _reset_vad(self) -> None:
        self._emit(ResetVad(self.ring.end))

    def _set_state(self, new: TurnState) -> None:
        if new is not self.state:
            old, self.state = self.state, new
            self._emit(Publish(StateChanged(old, new, self._now)))

    def _error(
        self, what: str, e: BaseException | str, now: float, client_fault: bool = False, turn: int | None = None
    ) -> None:
        why = e if isinstance(e, str) else f"{type(e).__name__}: {e}"
        self._emit(Publish(ErrorEvent(f"{what}: {why}", now, client_fault, turn)))

    def _emit(self, action: Action) -> None:
        self._out.append(action)
