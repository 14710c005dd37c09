"""One `/v1/realtime` connection as a state machine: client events -> session calls, session events -> server events.

No sockets here: `RealtimeConversation.handle` and `.on_event` return typed server events (realtime_protocol),
so the websocket layer only encodes and moves them. Item and response ids are minted here and mapped to the
session's turn numbers. Time enters as a value (`now`) for the audio budget.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from assistant import events
from assistant.audio.format import CAPTURE_RATE, StreamResampler, float32_to_int16
from assistant.audio.tempo import TimeStretch
from assistant.endofturn import eagerness_policy
from assistant.errors import AssistantError
from assistant.server import realtime_protocol as rp
from assistant.server.controller import RealtimeSession
from assistant.server.protocol import Limits, TokenBucket, WireError, clip
from assistant.tools.calls import ToolChoice

DEFAULT_DETECTION = rp.TurnDetection()  # OpenAI sessions start with server_vad on
RESAMPLE_PIECE = rp.RATE // 2  # 12,000 samples = 0.5 s at 24 kHz


@dataclass
class _Response:
    response_id: str
    item_id: str
    turn: int
    samples_sent: int = 0  # samples of reply audio sent to the client, at 24 kHz (after any speed change)
    transcript: str = ""
    text_deltas: int = 0
    stretch: TimeStretch | None = None  # session.audio.output.speed != 1
    down: StreamResampler | None = None  # 24 kHz -> 8 kHz for G.711 output
    fmt: rp.AudioFormat = "pcm16"  # the output format when it began (a session.update applies to the next one)
    speed: float = 1.0  # the output speed when it began (its audio_end_ms are at this speed)
    cleared: bool = False  # output_audio_buffer.clear: the rest of the audio is not sent
    opened: bool = False  # the message item was announced (its first text or audio came, or the response ended)
    message: dict[str, object] | None = None  # the finished message item
    calls: list[dict[str, object]] = field(default_factory=list)  # the function_call items, in output order
    error: dict[str, object] | None = None  # why it failed (status "failed"), from the session's error event
    audio: bool = True  # its output is audio (and its transcript), else text: the session's, or response.create's
    truncate_ms: int | None = None  # conversation.item.truncate arrived while it was made: applied at its end
    own_temperature: bool = False  # response.create gave it a temperature: the session's is set back at its end


@dataclass
class _UserAudio:
    """A committed stretch of user audio awaiting its transcript."""

    item_id: str
    start_ms: int
    end_ms: int
    failed: bool = False  # its transcription.failed went out; the empty transcript the core sends after is its own


Out = list[rp.ServerEvent]
AUDIO_TOKENS_PER_S = 12.5  # usage "audio tokens": 80 ms STT encoder frames in, 12.5 Hz codec frames out


class RealtimeConversation:
    """The protocol state of one session; every method returns the server events to send, in order.

    Time enters as values: `now` for budgets, and `tick(now)` once `deadline()` passes (the idle timeout).
    """

    def __init__(
        self,
        session: RealtimeSession,
        voice: str,
        instructions: str,
        beta: bool = False,
        n: int = 1,
        limits: Limits | None = None,
        now: float = 0.0,
        resolve_voice: Callable[[str], str] | None = None,
        commands_per_s: float = 20.0,
        max_output_tokens: int | None = None,
        temperature: float = 0.8,
        vad: tuple[int, int] = (2, 300),
    ) -> None:
        self.session = session
        self.out = rp.ServerEvents(beta=beta)
        self.limits = limits or Limits()
        self.session_id = f"sess_{n}"
        # the session VAD's aggressiveness (vad.aggressiveness until a threshold sets it) and pre-roll, as reported
        self.vad_level, self.preroll_ms = vad
        self.settings = rp.Settings(
            instructions,
            voice,
            self._effective(DEFAULT_DETECTION),
            max_output_tokens=max_output_tokens,
            temperature=temperature,
        )
        self.resolve_voice = resolve_voice
        self.expires_at = 0
        self.resampler = StreamResampler(rp.RATE, CAPTURE_RATE)
        # appends beyond a few times real time are refused: each costs resampling and transcription
        # Frames are paid for by size before they are parsed, so a flood costs neither CPU nor memory: a second of
        # audio is 64,000 bytes of base64 (48,000 bytes of pcm16 at 24 kHz, 4/3 for base64).
        second = rp.RATE * rp.SAMPLE_BYTES * 4 / 3
        self.inbound = TokenBucket(self.limits.audio_realtime_factor * second, self.limits.audio_burst_s * second, now)
        self.commands = TokenBucket(commands_per_s, max(1.0, commands_per_s), now)
        self.uncommitted = 0  # samples (at the input format's rate) appended since the last commit or clear
        self.appended_ms = 0.0  # audio appended so far, in ms (input_audio_buffer positions)
        self.ids = itertools.count(1)
        self.user_item: str | None = None  # the item the user is speaking now (server VAD)
        self.user_start_ms = 0
        self.last_item: str | None = None
        self.items: dict[str, dict[str, object]] = {}  # the conversation's items, in order, for retrieve/delete
        self.awaiting_transcript: deque[_UserAudio] = deque()  # committed user audio, oldest first
        self.partial_sent = ""
        self.response: _Response | None = None
        self.last_response: str | None = None
        self.requested = False  # response.create sent, ResponseStarted not yet seen
        self.next_audio: bool | None = None  # the requested response's output_modalities (None: the session's)
        self.next_own_temperature = False  # the requested response has a temperature of its own
        self.cancel_requested = False  # response.cancel sent for the current response (else a stop is a barge-in)
        self.unanswered = False  # a user item was added since the last response began
        # assistant item id -> (turn, ms of audio sent, the speed it was sent at)
        self.answered: dict[str, tuple[int, int, float]] = {}
        self.idle_since: float | None = now  # when the session last went quiet (for idle_timeout_ms)
        self.segments = itertools.count(1)
        self.user_audio_ms = 0  # user audio committed since the last response (its usage)
        self.awaiting_calls: set[str] = set()  # call ids of the last response's function calls (outputs expected)
        self.trace: events.LatencyTrace | None = None  # the latest reply's trace (its token counts)

    # the effective settings, read by the server and tests
    @property
    def detection(self) -> rp.TurnDetection | None:
        return self.settings.detection

    @property
    def audio_output(self) -> bool:
        return self.settings.audio_output

    @property
    def input_format(self) -> rp.AudioFormat:
        return self.settings.input_format

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{next(self.ids)}"

    def _session(self) -> dict[str, object]:
        return rp.session_object(self.session_id, self.settings, self.expires_at, self.out.beta)

    def start(self, wall_clock: float = 0.0) -> Out:
        self.session.set_instructions(self.settings.instructions)
        self._detect(self.settings.detection)
        self.expires_at = int(wall_clock) + rp.SESSION_LIFETIME_S if wall_clock else 0
        created: Out = [rp.SessionCreated(self._session())]
        if self.out.beta:  # the beta API announced the conversation; GA sessions start with session.created alone
            created.append(rp.ConversationCreated({"id": "conv_1", "object": "realtime.conversation"}))
        return created

    def error(self, e: WireError | AssistantError, event_id: str | None = None) -> rp.Error:
        """An error event for `e` (its message is already one bounded line)."""
        if isinstance(e, WireError):
            return _error(e.code, str(e), e.id if isinstance(e.id, str) else event_id, param=e.param)
        message = str(e)  # already one line naming the fix: shown as it is, not quoted like client text
        return _error("invalid_value", message if len(message) <= 300 else message[:300] + "...", event_id)

    def encode(self, ev: rp.ServerEvent) -> str:
        return self.out.encode(ev)

    # ---- client events -------------------------------------------------------------------------------------

    def handle(self, ev: rp.ClientEvent) -> Out:
        """Apply one client event; AssistantError from the session becomes an `error` event.

        The server passes audio appends through `admit_audio`, `resample` (maybe on a worker) and `feed_audio`.
        """
        try:
            return self._handle(ev)
        except AssistantError as e:
            return [self.error(e, ev.event_id)]

    def admit_command(self, now: float) -> bool:
        """Whether one more non-audio event fits the connection's commands_per_s budget."""
        return self.commands.take(1, now)

    def admit_frame(self, size: int, now: float) -> rp.Error | None:
        """None when a frame of `size` bytes fits the connection's byte-rate budget (checked before parsing it)."""
        if self.inbound.take(size, now):
            return None
        return _error(
            "rate_limited",
            f"over {self.limits.audio_realtime_factor:g}x real time of audio per second; "
            "send audio at about the pace it is recorded",
        )

    def admit_audio(self, ev: rp.AudioAppend) -> rp.Error | None:
        """None when the append fits the turn's audio bound (manual turns), else the error to send."""
        rate = rp.FORMAT_RATES[self.input_format]
        if self.detection is None and self.uncommitted + len(ev.audio) > self.limits.turn_audio_s * rate:
            return _error(
                "input_audio_buffer_full",
                f"the input audio buffer holds over {self.limits.turn_audio_s:g} s; commit or clear it first",
                ev.event_id,
            )
        return None

    def resample(self, ev: rp.AudioAppend) -> np.ndarray:
        """The append at 16 kHz (pure CPU, may run on a worker thread; one append at a time per connection).

        Long appends go through in half-second pieces so the resampler's temporaries stay small.
        """
        step = rp.FORMAT_RATES[self.input_format] // 2
        return np.concatenate([self.resampler.push(ev.audio[i : i + step]) for i in range(0, len(ev.audio), step)])

    def feed_audio(self, ev: rp.AudioAppend, samples: np.ndarray) -> Out:
        """Hand a resampled append to the session."""
        self.uncommitted += len(ev.audio)
        self.appended_ms += len(ev.audio) * 1000 / rp.FORMAT_RATES[self.input_format]
        try:
            self._feed(samples)
        except AssistantError as e:
            return [self.error(e, ev.event_id)]
        return []

    def _check_cap(self, path: str, cap: int | str | None, event_id: str | None) -> None:
        """A client's cap on a reply's tokens is met when it is at or above llm.max_tokens, the bound on every
        reply of this daemon; a lower one cannot be honoured: WireError naming the bound."""
        bound = self.settings.max_output_tokens
        if bound is not None and isinstance(cap, int) and cap < bound:
            why = f"`{path}` = {cap} is below llm.max_tokens = {bound}, the bound on this daemon's replies"
            fix = f'send {bound} or more, or "inf"'
            raise WireError("invalid_value", f"{why}, which a client cannot lower; {fix}", event_id, rp.param_of(path))

    def _update(self, ev: rp.SessionUpdate) -> Out:
        # everything is checked before anything changes (a bad voice leaves the instructions as they were)
        s = self.settings
        self._check_cap("session.max_output_tokens", ev.max_output_tokens, ev.event_id)
        tools = s.tools if ev.tools is None else ev.tools
        choice = ev.tool_choice or s.tool_choice
        if ev.tools is not None or ev.tool_choice is not None:
            _check_choice(choice, tools, "session.tool_choice", ev.event_id, self.session.can_call_tools)
        profile = None
        if ev.voice is not None:  # checked before the detection below changes the session
            profile = self.resolve_voice(ev.voice) if self.resolve_voice is not None else ev.voice
            self.session.check_voice(profile)
        if ev.turn_detection_given:  # first: semantic_vad without its model is refused before anything changes
            detection = self._effective(ev.turn_detection)
            self._detect(detection)
            s = replace(s, detection=detection)
            if detection is not None and detection.vad_level is not None:  # the session's VAD keeps it from now on
                self.vad_level = detection.vad_level
        if ev.voice is not None and profile is not None:
            self.session.set_voice(profile)
            s = replace(s, voice=ev.voice)
        if ev.instructions is not None:
            self.session.set_instructions(ev.instructions)
            s = replace(s, instructions=ev.instructions)
        if ev.temperature is not None:
            self.session.set_temperature(ev.temperature)
            s = replace(s, temperature=ev.temperature)
        if ev.audio_output is not None:
            s = replace(s, audio_output=ev.audio_output)
        if ev.input_format is not None and ev.input_format != s.input_format:
            self.resampler = StreamResampler(rp.FORMAT_RATES[ev.input_format], CAPTURE_RATE)
            self.uncommitted = 0  # audio of the old format is not mixed with the new
            s = replace(s, input_format=ev.input_format)
        if ev.output_format is not None:
            s = replace(s, output_format=ev.output_format)
        if ev.speed is not None:
            s = replace(s, speed=ev.speed)
        if ev.transcription_given:
            s = replace(s, transcription=ev.transcription)
        if ev.model is not None:
            s = replace(s, model=ev.model)
        if (tools, choice) != (self.settings.tools, self.settings.tool_choice):
            self.session.set_functions([f.schema() for f in tools], choice)
            s = replace(s, tools=tools, tool_choice=choice)
        self.settings = s
        return [rp.SessionUpdated(self._session())]

    def _effective(self, d: rp.TurnDetection | None) -> rp.TurnDetection | None:
        """A turn detection with the VAD level (the one in effect where it sent no threshold) and pre-roll the
        session's VAD runs with, as session.updated reports them."""
        if d is None:
            return None
        return replace(d, vad_level=self.vad_level if d.vad_level is None else d.vad_level, padding_ms=self.preroll_ms)

    def _detect(self, d: rp.TurnDetection | None) -> None:
        """Give the session its turn detection: none (manual commits), server_vad's silence, or semantic_vad's
        Smart Turn policy for the eagerness (endofturn.EAGERNESS)."""
        if d is None:
            self.session.set_turn_detection(None, False, False)
            return
        semantic = eagerness_policy(d.eagerness) if d.kind == "semantic_vad" else None
        self.session.set_turn_detection(
            d.silence_duration_ms, d.create_response, d.interrupt_response, semantic, vad_level=d.vad_level
        )

    def _handle(self, ev: rp.ClientEvent) -> Out:
        if isinstance(ev, rp.SessionUpdate):
            return self._update(ev)
        if isinstance(ev, rp.AudioAppend):
            return self.feed_audio(ev, self.resample(ev))
        if isinstance(ev, rp.AudioCommit):
            if self.uncommitted == 0:
                return [
                    _error(
                        "input_audio_buffer_commit_empty",
                        "the input audio buffer is empty; append audio before committing",
                        ev.event_id,
                    )
                ]
            self._feed(self.resampler.flush())
            self.session.command("commit")
            start = self.user_start_ms if self.user_item else round(self.appended_ms - self._uncommitted_ms())
            return self._committed(self.user_item or self._id("item"), start, round(self.appended_ms))
        if isinstance(ev, rp.AudioClear):
            self.resampler.reset()
            self.uncommitted = 0
            self.session.command("clear")
            self.user_item = None
            return [rp.BufferCleared()]
        if isinstance(ev, rp.FunctionOutput):
            return self._function_output(ev)
        if isinstance(ev, rp.ItemCreate):
            if self.awaiting_calls:
                waiting = ", ".join(sorted(self.awaiting_calls))
                return [
                    _error(
                        "invalid_value",
                        f"function calls await their output ({clip(waiting)}); create a function_call_output item "
                        "for each (then response.create) before a new user message",
                        ev.event_id,
                    )
                ]
            item_id = self._new_item(ev)  # refused before the text joins the chat: a retry must not add it twice
            if isinstance(item_id, rp.Error):
                return [item_id]
            self.session.add_user_text(ev.text)
            item = rp.message_item(item_id, "user", "completed", [{"type": "input_text", "text": ev.text}])
            previous = self._add(item_id, item)
            self.unanswered = True
            return [rp.ItemAdded(previous, item), rp.ItemDone(previous, item)]
        if isinstance(ev, rp.ItemTruncate):
            return self._truncate(ev)
        if isinstance(ev, rp.ItemRetrieve):
            if ev.item_id not in self.items:
                return [_unknown_item("item_retrieve_invalid_item_id", ev.item_id, ev.event_id)]
            return [rp.ItemRetrieved(self.items[ev.item_id])]
        if isinstance(ev, rp.ItemDelete):
            return self._delete(ev)
        if isinstance(ev, rp.OutputAudioClear):
            return self._clear_output(ev)
        if isinstance(ev, rp.ResponseCreate):
            if self.response is not None or self.requested:
                return [
                    _error(
                        "conversation_already_has_active_response",
                        "a response is in progress; wait for response.done or send response.cancel",
                        ev.event_id,
                    )
                ]
            if not self.unanswered and not self.awaiting_transcript:
                return [
                    _error(
                        "response_create_nothing_to_answer",
                        "nothing to answer: append and commit user audio or create a user message item first",
                        ev.event_id,
                    )
                ]
            self._check_cap("response.max_output_tokens", ev.max_output_tokens, ev.event_id)
            if ev.tools is not None or ev.tool_choice is not None:
                tools = self.settings.tools if ev.tools is None else ev.tools
                choice = ev.tool_choice or self.settings.tool_choice
                _check_choice(choice, tools, "response.tool_choice", ev.event_id, self.session.can_call_tools)
                self.session.functions_for_next_response([f.schema() for f in tools], choice)
            if ev.temperature is not None:  # this response only: the session's comes back at its end
                self.session.set_temperature(ev.temperature)
            try:
                self.session.create_response(ev.instructions)
            except AssistantError:
                if ev.temperature is not None:  # no response, so no end to set it back at
                    self.session.set_temperature(self.settings.temperature)
                raise
            self.requested, self.next_audio = True, ev.audio_output
            self.next_own_temperature = ev.temperature is not None
            self.idle_since = None
            return []
        if self.response is None and not self.requested:
            return [_error("response_cancel_not_active", "there is no response to cancel", ev.event_id)]
        current = self.response.response_id if self.response is not None else None
        if ev.response_id is not None and ev.response_id != current:  # the client's view lags: not this one
            now = f"the one in progress is {current}" if current else "none has started yet"
            why = f"response {clip(ev.response_id)} is not in progress ({now}); send its id or leave response_id out"
            return [_error("response_cancel_not_active", why, ev.event_id, param="response_id")]
        self.session.command("interrupt")
        self.cancel_requested = True
        return []

    def _function_output(self, ev: rp.FunctionOutput) -> Out:
        item_id = self._new_item(ev)
        if isinstance(item_id, rp.Error):
            return [item_id]
        self.session.add_function_output(ev.call_id, ev.output)  # InputError for a call id it did not hand out
        self.awaiting_calls.discard(ev.call_id)
        item = rp.function_output_item(item_id, ev.call_id, ev.output)
        previous = self._add(item_id, item)
        self.unanswered = True
        return [rp.ItemAdded(previous, item), rp.ItemDone(previous, item)]

    def _uncommitted_ms(self) -> float:
        return self.uncommitted * 1000 / rp.FORMAT_RATES[self.input_format]

    def _new_item(self, ev: rp.ItemCreate | rp.FunctionOutput) -> str | rp.Error:
        """The id a client's new item gets (its own, or a fresh one), or the error OpenAI sends: the id is taken, or
        `previous_item_id` names no item of this conversation. A known previous item is taken: the item goes at
        the end (the chat only appends; a client's view of the end may lag by an item)."""
        wanted = ev.previous_item_id
        if not (wanted is None or wanted in self.items or (wanted == "root" and not self.items)):
            return _error(
                "invalid_value",
                f"previous_item_id {clip(wanted)} is no item of this conversation; leave it out (items are added "
                "at the end) or use an id from conversation.item.added",
                ev.event_id,
                param="previous_item_id",
            )
        item_id = ev.item_id or self._id("item")
        if item_id in self.items:
            why = f"an item {clip(item_id)} exists; use a new id"
            return _error("item_already_exists", why, ev.event_id, param="item.id")
        return item_id

    def _add(self, item_id: str, item: dict[str, object]) -> str | None:
        previous, self.last_item = self.last_item, item_id
        self.items[item_id] = item
        while len(self.items) > self.limits.realtime_items:  # the oldest goes, as OpenAI's truncation drops it
            oldest = next(iter(self.items))
            del self.items[oldest]
            self.answered.pop(oldest, None)
        return previous

    def _delete(self, ev: rp.ItemDelete) -> Out:
        item = self.items.get(ev.item_id)
        if item is None:
            return [_unknown_item("item_delete_invalid_item_id", ev.item_id, ev.event_id)]
        if self.response is not None and self.response.item_id == ev.item_id:
            return [_error("item_delete_in_progress", "the reply is still being made; cancel it first", ev.event_id)]
        if any(u.item_id == ev.item_id for u in self.awaiting_transcript):  # its words would still reach the chat
            why = f"item {clip(ev.item_id)} is still being transcribed; delete it once it is answered (response.done)"
            return [_error("item_delete_in_progress", why, ev.event_id)]
        if item.get("type") != "message":  # the chat keeps a tool round whole: it cannot forget one call of it
            why = (
                f"item {clip(ev.item_id)} is a {item.get('type')}; the conversation keeps function calls and their "
                "outputs with the messages around them: delete those messages instead"
            )
            return [_error("invalid_value", why, ev.event_id, param="item_id")]
        text = _item_text(item)
        if text:  # the conversation forgets it too (InputError if it cannot); an empty transcript was never in it
            self.session.delete_item(str(item.get("role")), text)
        del self.items[ev.item_id]
        self.answered.pop(ev.item_id, None)
        if self.last_item == ev.item_id:
            self.last_item = next(reversed(self.items), None)
        return [rp.ItemDeleted(ev.item_id)]

    def _clear_output(self, ev: rp.OutputAudioClear) -> Out:
        r = self.response
        if r is None:
            if self.last_response is None:
                return [_error("output_audio_buffer_clear_not_active", "no reply audio to clear", ev.event_id)]
            return [rp.OutputAudioCleared(self.last_response)]
        r.cleared = True
        self.session.command("interrupt")
        self.cancel_requested = True
        return [rp.OutputAudioCleared(r.response_id)]

    def _feed(self, samples: np.ndarray) -> None:
        if len(samples):
            self.session.on_audio(samples)

    def _committed(self, item_id: str, start_ms: int, end_ms: int) -> Out:
        self.uncommitted = 0
        self.user_item = None
        self.unanswered = True
        self.user_audio_ms += max(0, end_ms - start_ms)
        self.awaiting_transcript.append(_UserAudio(item_id, start_ms, end_ms))
        item = rp.message_item(item_id, "user", "in_progress", [{"type": "input_audio", "transcript": None}])
        previous = self._add(item_id, item)
        return [rp.BufferCommitted(previous, item_id), rp.ItemAdded(previous, item)]

    def _truncate(self, ev: rp.ItemTruncate) -> Out:
        r = self.response
        if r is not None and r.item_id == ev.item_id and r.opened:
            return self._truncate_in_progress(r, ev)
        known = self.answered.get(ev.item_id)
        if known is None:
            return [
                _error(
                    "item_truncate_invalid_item_id",
                    f"no finished assistant audio item {clip(ev.item_id)}; truncate an item from response.done",
                    ev.event_id,
                    param="item_id",
                )
            ]
        turn, sent_ms, speed = known
        if ev.audio_end_ms > sent_ms:
            return [
                _error(
                    "invalid_value",
                    f"`audio_end_ms` {ev.audio_end_ms} is past the {sent_ms} ms of audio sent for {ev.item_id}",
                    ev.event_id,
                    param="audio_end_ms",
                )
            ]
        # the client heard `audio_end_ms` of audio played at `speed`: that much of the reply times the speed
        self.session.truncate_response(turn, round(ev.audio_end_ms * speed))
        self.answered[ev.item_id] = (turn, ev.audio_end_ms, speed)
        return [rp.ItemTruncated(ev.item_id, ev.content_index, ev.audio_end_ms)]

    def _truncate_in_progress(self, r: _Response, ev: rp.ItemTruncate) -> Out:
        """A client barging in truncates the item it plays right after (or without) response.cancel, before the
        response ends: the response stops, its later audio is not sent, and the cut is applied at response.done."""
        sent_ms = r.samples_sent * 1000 // rp.RATE
        if ev.audio_end_ms > sent_ms:
            why = f"`audio_end_ms` {ev.audio_end_ms} is past the {sent_ms} ms of audio sent so far for {ev.item_id}"
            return [_error("invalid_value", why, ev.event_id, param="audio_end_ms")]
        r.truncate_ms, r.cleared = ev.audio_end_ms, True
        if not self.cancel_requested:
            self.session.command("interrupt")
            self.cancel_requested = True
        return [rp.ItemTruncated(ev.item_id, ev.content_index, ev.audio_end_ms)]

    # ---- time ----------------------------------------------------------------------------------------------

    def deadline(self) -> float | None:
        """When `tick` has something to do (the idle timeout), or None."""
        d = self.detection
        # the user is speaking, or spoke and their words are still being transcribed, or a reply is on its way
        busy = (
            self.user_item is not None or bool(self.awaiting_transcript) or self.response is not None or self.requested
        )
        if d is None or d.idle_timeout_ms is None or self.idle_since is None or busy:
            return None  # None whenever tick would do nothing: the server's timer then sleeps until an event
        return self.idle_since + d.idle_timeout_ms / 1000

    def tick(self, now: float) -> Out:
        """The idle timeout, as OpenAI's: no speech for idle_timeout_ms after the last reply's audio finished
        playing -> timeout_triggered, the (silent) input buffer committed as a user audio item, and a response
        that prompts the user to go on (the conversation is told how long they were silent)."""
        deadline = self.deadline()
        d = self.detection
        if deadline is None or now < deadline or d is None or d.idle_timeout_ms is None:
            return []
        self.idle_since = None  # once per quiet stretch
        item_id = self._id("item")
        end = round(self.appended_ms)
        start = max(round(self.appended_ms - self._uncommitted_ms()), end - d.idle_timeout_ms, 0)
        out: Out = [rp.TimeoutTriggered(item_id, start, end)]
        self._feed(self.resampler.flush())
        self.session.command("commit")  # empty or silent: its transcript ("" or what the model heard) comes back
        out += self._committed(item_id, start, end)
        self.session.add_user_text(idle_note(d.idle_timeout_ms))
        self.session.create_response()
        self.requested = True
        return out

    # ---- session events ------------------------------------------------------------------------------------

    def on_event(self, ev: events.SessionEvent) -> Out:
        """Translate one session event into server events."""
        ms_per_sample = 1000 / CAPTURE_RATE
        if isinstance(ev, events.SpeechStarted):
            self.user_item = self._id("item")
            self.user_start_ms = round(ev.start_sample * ms_per_sample)
            self.idle_since = None
            return [rp.SpeechStarted(self.user_item, self.user_start_ms)]
        if isinstance(ev, events.SpeechEnded):
            item_id = self.user_item or self._id("item")
            end_ms = round(ev.end_sample * ms_per_sample)
            stopped = rp.SpeechStopped(item_id, end_ms)
            return [stopped, *self._committed(item_id, round(ev.start_sample * ms_per_sample), end_ms)]
        if isinstance(ev, events.PartialTranscript):
            target = self.awaiting_transcript[0].item_id if self.awaiting_transcript else self.user_item
            if target is None or not ev.text.startswith(self.partial_sent) or ev.text == self.partial_sent:
                return []  # deltas only append; a revised partial waits for the final transcript
            delta, self.partial_sent = ev.text[len(self.partial_sent) :], ev.text
            return [rp.TranscriptionDelta(target, 0, delta)]
        if isinstance(ev, events.FinalTranscript):
            return self._transcribed(ev)
        if isinstance(ev, events.ResponseStarted):
            return self._start(ev.turn, ev.time)
        if isinstance(ev, events.ResponseTextDelta):
            out = [] if self.response is not None and self.response.turn == ev.turn else self._start(ev.turn, ev.time)
            r = self.response
            assert r is not None
            out += self._open(r)
            r.transcript += ev.text
            r.text_deltas += 1
            if r.audio:
                return [*out, rp.AudioTranscriptDelta(r.response_id, r.item_id, 0, 0, ev.text)]
            return [*out, rp.TextDelta(r.response_id, r.item_id, 0, 0, ev.text)]
        if isinstance(ev, events.ResponseAudio):
            out = [] if self.response is not None and self.response.turn == ev.turn else self._start(ev.turn, ev.time)
            r = self.response
            assert r is not None
            if not r.audio or len(ev.audio) == 0 or r.cleared:
                return out
            return [*out, *self._open(r), *self._audio(r, ev.audio)]
        if isinstance(ev, events.FunctionCall):
            return self._function_call(ev)
        if isinstance(ev, events.LatencyTrace):
            self.trace = ev  # the core sends a reply's trace just before its ResponseDone
            return []
        if isinstance(ev, events.ResponseDone):
            return self._done(ev)
        if isinstance(ev, events.ErrorEvent):
            head = self.awaiting_transcript[0] if self.awaiting_transcript else None
            if head is not None and not head.failed and self.response is None and not self.requested:
                # between a commit and its transcript, the session's only work is transcribing it; the core then
                # sends that item's (empty) transcript, so it stays first in line until then
                user, user.failed = head, True
                failed = {"type": "transcription_error", "code": "transcription_failed", "message": ev.message}
                return [rp.TranscriptionFailed(user.item_id, 0, {**failed, "param": None})]
            # invalid_request_error: OpenAI's type for a request the client must change
            code, kind = ("invalid_request", "invalid_request_error") if ev.client_fault else ("server_error",) * 2
            if self.response is not None and ev.turn == self.response.turn:  # its response.done says "failed"
                self.response.error = {"type": kind, "code": code}
            return [_error(code, ev.message, kind=kind)]
        return []

    def _transcribed(self, ev: events.FinalTranscript) -> Out:
        self.partial_sent = ""
        if self.awaiting_transcript:
            user = self.awaiting_transcript.popleft()
        else:
            user = _UserAudio(self._id("item"), 0, 0)
        seconds = max(0, user.end_ms - user.start_ms) / 1000
        out: Out = []
        model = self.settings.transcription.model if self.settings.transcription else ""
        failed = user.failed and not ev.text  # its failure was sent: the item is done without a transcript
        if "diarize" in model and ev.text:
            start, end = user.start_ms / 1000, user.end_ms / 1000
            out.append(rp.TranscriptionSegment(user.item_id, 0, f"seg_{next(self.segments)}", start, end, ev.text, "A"))
        if not failed:
            out.append(rp.TranscriptionCompleted(user.item_id, 0, ev.text, {"type": "duration", "seconds": seconds}))
        transcript = None if failed else ev.text
        item = rp.message_item(user.item_id, "user", "completed", [{"type": "input_audio", "transcript": transcript}])
        if user.item_id in self.items:
            self.items[user.item_id] = item
            keys = list(self.items)
            i = keys.index(user.item_id)
            out.append(rp.ItemDone(keys[i - 1] if i else None, item))
        if self.detection is not None and self.response is None and not self.requested:
            self.idle_since = ev.time
        return out

    def _audio(self, r: _Response, audio: np.ndarray) -> Out:
        out: Out = []
        if r.samples_sent == 0:
            out.append(rp.OutputAudioStarted(r.response_id))
        x = r.stretch.push(audio) if r.stretch is not None else audio
        return out + self._send_audio(r, x)

    def _send_audio(self, r: _Response, x: np.ndarray) -> Out:
        if len(x) == 0:
            return []
        r.samples_sent += len(x)
        if r.down is not None:
            return [
                rp.AudioDelta(r.response_id, r.item_id, 0, 0, rp.encode_audio(r.down.push(float32_to_int16(x)), r.fmt))
            ]
        return [rp.AudioDelta(r.response_id, r.item_id, 0, 0, rp.encode_audio(x, r.fmt))]

    def _start(self, turn: int, now: float) -> Out:
        audio, self.next_audio = self.audio_output if self.next_audio is None else self.next_audio, None
        self.requested = False
        self.unanswered = False
        self.idle_since = None
        r = self.response = _Response(self._id("resp"), self._id("item"), turn, audio=audio)
        r.own_temperature, self.next_own_temperature = self.next_own_temperature, False
        self.last_response = r.response_id
        r.speed = self.settings.speed
        if r.speed != 1.0:
            r.stretch = TimeStretch(r.speed, rp.RATE)
        r.fmt = self.settings.output_format
        if r.fmt != "pcm16":
            r.down = StreamResampler(rp.RATE, rp.FORMAT_RATES[r.fmt])
        self.awaiting_calls.clear()  # a new response answers (or dropped) the last one's calls
        return [
            rp.ResponseCreated(rp.response_object(r.response_id, "in_progress", [], r.audio)),
            rp.RateLimitsUpdated([self._requests_limit(now)]),  # as OpenAI does, when a response begins
        ]

    def _open(self, r: _Response) -> Out:
        """The assistant message item and its content part, announced before its first text or audio."""
        if r.opened:
            return []
        r.opened = True
        item = rp.message_item(r.item_id, "assistant", "in_progress", [])
        part = {"type": "audio", "transcript": ""} if r.audio else {"type": "text", "text": ""}
        previous = self._add(r.item_id, item)
        return [
            rp.OutputItemAdded(r.response_id, 0, item),
            rp.ItemAdded(previous, item),
            rp.ContentPartAdded(r.response_id, r.item_id, 0, 0, part),
        ]

    def _function_call(self, ev: events.FunctionCall) -> Out:
        """One function call of the response as its own output item, after the message it follows."""
        out = [] if self.response is not None and self.response.turn == ev.turn else self._start(ev.turn, ev.time)
        r = self.response
        assert r is not None
        if r.opened and r.message is None:
            out += self._close(r, r.transcript.strip(), False)
        index = len(r.calls) + (1 if r.opened else 0)
        item_id = self._id("item")
        item = rp.function_call_item(item_id, ev.call_id, ev.name, "", "in_progress")
        previous = self._add(item_id, item)
        done = rp.function_call_item(item_id, ev.call_id, ev.name, ev.arguments, "completed")
        self.items[item_id] = done
        r.calls.append(done)
        self.awaiting_calls.add(ev.call_id)
        return [
            *out,
            rp.OutputItemAdded(r.response_id, index, item),
            rp.ItemAdded(previous, item),
            rp.FunctionCallArgumentsDelta(r.response_id, item_id, index, ev.call_id, ev.arguments),
            rp.FunctionCallArgumentsDone(r.response_id, item_id, index, ev.call_id, ev.name, ev.arguments),
            rp.OutputItemDone(r.response_id, index, done),
            rp.ItemDone(previous, done),
        ]

    def _done(self, ev: events.ResponseDone) -> Out:
        out = [] if self.response is not None and self.response.turn == ev.turn else self._start(ev.turn, ev.time)
        r = self.response
        assert r is not None
        self.response = None
        if not r.opened and not r.calls:  # a response says something, or calls: an empty one has an empty message
            out += self._open(r)
        if r.opened and r.message is None:
            text = ev.text if ev.text or ev.interrupted else r.transcript  # the session's word is final
            out += self._close(r, text, ev.interrupted)
        if r.own_temperature:
            self.session.set_temperature(self.settings.temperature)
        status = "failed" if r.error else "cancelled" if ev.interrupted else "completed"
        reason = None if status != "cancelled" else "client_cancelled" if self.cancel_requested else "turn_detected"
        self.cancel_requested = False
        if self.detection is not None:
            self.idle_since = ev.time + r.samples_sent / rp.RATE  # quiet once the client has played the reply
        if r.truncate_ms is not None:  # the answer in the history becomes what the client played
            try:
                self.session.truncate_response(r.turn, round(r.truncate_ms * r.speed))
                self.answered[r.item_id] = (r.turn, r.truncate_ms, r.speed)
            except AssistantError as e:
                out.append(self.error(e))
        usage = self._usage(r)
        output = [r.message] if r.message is not None else []
        response = rp.response_object(r.response_id, status, output + r.calls, r.audio, reason, usage, r.error)
        return [*out, rp.ResponseDoneEvent(response)]

    def _close(self, r: _Response, text: str, interrupted: bool) -> Out:
        """The message item's last audio and its done events (before its function calls, or at response.done)."""
        out: Out = []
        if r.stretch is not None and not r.cleared:
            out += self._send_audio(r, r.stretch.flush())
        if r.down is not None and not r.cleared and len(tail := r.down.flush()):
            out.append(rp.AudioDelta(r.response_id, r.item_id, 0, 0, rp.encode_audio(tail, r.fmt)))
        part: dict[str, object]
        content: dict[str, object]
        if r.audio:
            part = {"type": "audio", "transcript": text}
            content = {"type": "output_audio", "transcript": text}
            out += [
                rp.AudioDone(r.response_id, r.item_id, 0, 0),
                rp.AudioTranscriptDone(r.response_id, r.item_id, 0, 0, text),
            ]
            if r.samples_sent and not r.cleared:
                out.append(rp.OutputAudioStopped(r.response_id))
        else:
            part = {"type": "text", "text": text}
            content = {"type": "output_text", "text": text}
            out.append(rp.TextDone(r.response_id, r.item_id, 0, 0, text))
        item = rp.message_item(r.item_id, "assistant", "incomplete" if interrupted else "completed", [content])
        r.message = item
        previous = None
        if r.item_id in self.items:
            self.items[r.item_id] = item
            keys = list(self.items)
            previous = keys[keys.index(r.item_id) - 1] if keys.index(r.item_id) else None
        self.answered[r.item_id] = (r.turn, r.samples_sent * 1000 // rp.RATE, r.speed)
        return [
            *out,
            rp.ContentPartDone(r.response_id, r.item_id, 0, 0, part),
            rp.OutputItemDone(r.response_id, 0, item),
            rp.ItemDone(previous, item),
        ]

    def _usage(self, r: _Response) -> dict[str, object]:
        """Usage of one response: audio in 80 ms STT frames and 12.5 Hz codec frames; text as the LLM's tokenizer
        counted it (its prompt, and of that what came from the prompt cache), or in streamed pieces where the
        LLM gave no count (an interrupted answer, a server without usage reports)."""
        audio_in = round(self.user_audio_ms / 1000 * AUDIO_TOKENS_PER_S)
        self.user_audio_ms = 0
        audio_out = round(r.samples_sent / rp.RATE * AUDIO_TOKENS_PER_S)
        counts = self.trace.extra if self.trace is not None and self.trace.turn == r.turn else {}
        text_out = round(counts.get("output_tokens", r.text_deltas))
        input_details: dict[str, object] = {"audio_tokens": audio_in}
        if "prompt_tokens" in counts:
            input_details["text_tokens"] = round(counts["prompt_tokens"])
        if "cached_tokens" in counts:
            cached = round(counts["cached_tokens"])
            input_details |= {"cached_tokens": cached, "cached_tokens_details": {"text_tokens": cached}}
        text_in = round(counts.get("prompt_tokens", 0))
        return {
            "total_tokens": audio_in + text_in + audio_out + text_out,
            "input_tokens": audio_in + text_in,
            "output_tokens": audio_out + text_out,
            "input_token_details": input_details,  # a count we do not know is left out, not 0
            "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
        }

    def _requests_limit(self, now: float) -> dict[str, object]:
        b = self.commands
        tokens = min(b.capacity, b.tokens + max(0.0, now - b.last) * b.rate)
        reset = (b.capacity - tokens) / b.rate if b.rate else 0.0
        return {
            "name": "requests",
            "limit": int(b.capacity),
            "remaining": int(tokens),
            "reset_seconds": round(reset, 3),
        }


def _check_choice(
    choice: ToolChoice, tools: tuple[rp.Function, ...], path: str, event_id: str | None, can_call: bool
) -> None:
    """A forced function must be one of the tools; any forced call needs a tool; tools need a model that can
    call them (`can_call`)."""
    names = [f.name for f in tools]
    if names and not can_call:
        why = "this session's LLM has no tool-call format in its chat template, so it cannot call functions"
        raise WireError(
            "invalid_value", f"{why}; send no tools, or set llm.model", event_id, f"{path.split('.')[0]}.tools"
        )
    if choice.mode == "function" and choice.name not in names:
        offered = ", ".join(names) or "none"
        why = f"`{path}` names function {clip(choice.name)}, which is not among the tools ({clip(offered)})"
        raise WireError("invalid_value", f"{why}; add it to tools or choose another", event_id, path)
    if choice.mode == "required" and not names:
        why = f'`{path}` is "required" but no tools are offered; send tools first'
        raise WireError("invalid_value", why, event_id, path)


def idle_note(idle_ms: int) -> str:
    """What the conversation is told when the idle timeout fires (a user message: chat templates need one)."""
    return f"(The user has said nothing for {idle_ms / 1000:g} seconds.)"


def _item_text(item: dict[str, object]) -> str:
    """The text of a message item: its input or output text, or its audio transcript."""
    content = item.get("content")
    parts = content if isinstance(content, list) else []
    return " ".join(str(p.get("text") or p.get("transcript") or "") for p in parts if isinstance(p, dict)).strip()


def _unknown_item(code: str, item_id: str, event_id: str | None) -> rp.Error:
    return _error(
        code,
        f"no item {clip(item_id)} in this conversation; use an id from conversation.item.added (a session keeps its "
        "newest items only)",
        event_id,
        param="item_id",
    )


def _error(
    code: str, message: str, event_id: str | None = None, kind: str = "invalid_request_error", param: str | None = None
) -> rp.Error:
    return rp.Error(rp.ErrorDetail(code, message, event_id, kind, param))
