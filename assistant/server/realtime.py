"""One `/v1/realtime` connection as a state machine: client events -> session calls, session events -> server events.

No sockets here: `RealtimeConversation.handle` and `.on_event` return typed server events (realtime_protocol),
so the websocket layer only encodes and moves them. Item and response ids are minted here and mapped to the
session's turn numbers. Time enters as a value (`now`) for the audio budget.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

import numpy as np

from assistant import events
from assistant.audio.format import CAPTURE_RATE, StreamResampler
from assistant.errors import AssistantError
from assistant.server import realtime_protocol as rp
from assistant.server.controller import RealtimeSession
from assistant.server.protocol import Limits, TokenBucket, WireError, clip

DEFAULT_DETECTION = rp.TurnDetection()  # OpenAI sessions start with server_vad on
RESAMPLE_PIECE = rp.RATE // 2  # 12,000 samples = 0.5 s at 24 kHz


@dataclass
class _Response:
    response_id: str
    item_id: str
    turn: int
    samples_sent: int = 0  # 24 kHz samples of audio sent to the client
    transcript: str = ""


Out = list[rp.ServerEvent]


class RealtimeConversation:
    """The protocol state of one session; every method returns the server events to send, in order."""

    def __init__(
        self,
        session: RealtimeSession,
        voice: str,
        instructions: str,
        beta: bool = False,
        n: int = 1,
        limits: Limits | None = None,
        now: float = 0.0,
    ) -> None:
        self.session = session
        self.out = rp.ServerEvents(beta=beta)
        self.limits = limits or Limits()
        self.session_id = f"sess_{n}"
        self.voice, self.instructions = voice, instructions
        self.detection: rp.TurnDetection | None = DEFAULT_DETECTION
        self.audio_output = True
        self.resampler = StreamResampler(rp.RATE, CAPTURE_RATE)
        # appends beyond a few times real time are refused: each costs resampling and transcription
        # Frames are paid for by size before they are parsed, so a flood costs neither CPU nor memory: a second of
        # audio is 64,000 bytes of base64 (48,000 bytes of pcm16 at 24 kHz, 4/3 for base64).
        second = rp.RATE * rp.SAMPLE_BYTES * 4 / 3
        self.inbound = TokenBucket(self.limits.audio_realtime_factor * second, self.limits.audio_burst_s * second, now)
        self.uncommitted = 0  # 24 kHz samples appended since the last commit or clear
        self.ids = itertools.count(1)
        self.user_item: str | None = None  # the item the user is speaking now (server VAD)
        self.last_item: str | None = None
        self.awaiting_transcript: deque[str] = deque()  # committed user items, oldest first
        self.partial_sent = ""
        self.response: _Response | None = None
        self.requested = False  # response.create sent, ResponseStarted not yet seen
        self.cancel_requested = False  # response.cancel sent for the current response (else a stop is a barge-in)
        self.answered: dict[str, tuple[int, int]] = {}  # assistant item id -> (turn, ms of audio sent)

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{next(self.ids)}"

    def _session(self) -> dict[str, object]:
        return rp.session_object(self.session_id, self.instructions, self.voice, self.detection, self.audio_output)

    def start(self) -> Out:
        self.session.set_instructions(self.instructions)
        self.session.set_turn_detection(
            DEFAULT_DETECTION.silence_duration_ms,
            DEFAULT_DETECTION.create_response,
            DEFAULT_DETECTION.interrupt_response,
        )
        return [rp.SessionCreated(self._session())]

    def error(self, e: WireError | AssistantError, event_id: str | None = None) -> rp.Error:
        """An error event for `e` (its message is already one bounded line)."""
        if isinstance(e, WireError):
            return _error(e.code, str(e), e.id if isinstance(e.id, str) else event_id)
        return _error("invalid_value", clip(str(e), 300), event_id)

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
        if self.detection is None and self.uncommitted + len(ev.audio) > self.limits.turn_audio_s * rp.RATE:
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
        step = RESAMPLE_PIECE
        return np.concatenate([self.resampler.push(ev.audio[i : i + step]) for i in range(0, len(ev.audio), step)])

    def feed_audio(self, ev: rp.AudioAppend, samples: np.ndarray) -> Out:
        """Hand a resampled append to the session."""
        self.uncommitted += len(ev.audio)
        try:
            self._feed(samples)
        except AssistantError as e:
            return [self.error(e, ev.event_id)]
        return []

    def _handle(self, ev: rp.ClientEvent) -> Out:
        if isinstance(ev, rp.SessionUpdate):
            # everything is checked before anything changes (a bad voice leaves the instructions as they were)
            if ev.voice is not None:
                self.session.set_voice(ev.voice)
                self.voice = ev.voice
            if ev.instructions is not None:
                self.session.set_instructions(ev.instructions)
                self.instructions = ev.instructions
            if ev.turn_detection_given:
                d = ev.turn_detection
                if d is None:
                    self.session.set_turn_detection(None, False, False)
                else:
                    self.session.set_turn_detection(d.silence_duration_ms, d.create_response, d.interrupt_response)
                self.detection = d
            if ev.audio_output is not None:
                self.audio_output = ev.audio_output
            return [rp.SessionUpdated(self._session())]
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
            self.session.commit_audio()
            return self._committed(self.user_item or self._id("item"))
        if isinstance(ev, rp.AudioClear):
            self.resampler.reset()
            self.uncommitted = 0
            self.session.clear_audio()
            self.user_item = None
            return [rp.BufferCleared()]
        if isinstance(ev, rp.ItemCreate):
            self.session.add_user_text(ev.text)
            item_id = ev.item_id or self._id("item")
            item = rp.message_item(item_id, "user", "completed", [{"type": "input_text", "text": ev.text}])
            previous, self.last_item = self.last_item, item_id
            return [rp.ItemAdded(previous, item), rp.ItemDone(previous, item)]
        if isinstance(ev, rp.ItemTruncate):
            return self._truncate(ev)
        if isinstance(ev, rp.ResponseCreate):
            if self.response is not None or self.requested:
                return [
                    _error(
                        "conversation_already_has_active_response",
                        "a response is in progress; wait for response.done or send response.cancel",
                        ev.event_id,
                    )
                ]
            self.session.create_response(ev.instructions)
            self.requested = True
            return []
        if self.response is None and not self.requested:
            return [_error("response_cancel_not_active", "there is no response to cancel", ev.event_id)]
        self.session.cancel_response()
        self.cancel_requested = True
        return []

    def _feed(self, samples: np.ndarray) -> None:
        if len(samples):
            self.session.append_audio(samples)

    def _committed(self, item_id: str) -> Out:
        self.uncommitted = 0
        self.user_item = None
        self.awaiting_transcript.append(item_id)
        previous, self.last_item = self.last_item, item_id
        item = rp.message_item(item_id, "user", "completed", [{"type": "input_audio", "transcript": None}])
        return [rp.BufferCommitted(previous, item_id), rp.ItemAdded(previous, item)]

    def _truncate(self, ev: rp.ItemTruncate) -> Out:
        known = self.answered.get(ev.item_id)
        if known is None:
            return [
                _error(
                    "item_truncate_invalid_item_id",
                    f"no finished assistant audio item {clip(ev.item_id)}; truncate an item from response.done",
                    ev.event_id,
                )
            ]
        turn, sent_ms = known
        if ev.audio_end_ms > sent_ms:
            return [
                _error(
                    "invalid_value",
                    f"`audio_end_ms` {clip(str(ev.audio_end_ms))} is past the {sent_ms} ms of audio sent for "
                    f"{ev.item_id}",
                    ev.event_id,
                )
            ]
        self.session.truncate_response(turn, ev.audio_end_ms)
        self.answered[ev.item_id] = (turn, ev.audio_end_ms)
        return [rp.ItemTruncated(ev.item_id, ev.content_index, ev.audio_end_ms)]

    # ---- session events ------------------------------------------------------------------------------------

    def on_event(self, ev: events.SessionEvent) -> Out:
        """Translate one session event into server events."""
        ms_per_sample = 1000 / CAPTURE_RATE
        if isinstance(ev, events.SpeechStarted):
            self.user_item = self._id("item")
            return [rp.SpeechStarted(self.user_item, round(ev.start_sample * ms_per_sample))]
        if isinstance(ev, events.SpeechEnded):
            item_id = self.user_item or self._id("item")
            stopped = rp.SpeechStopped(item_id, round(ev.end_sample * ms_per_sample))
            return [stopped, *self._committed(item_id)]
        if isinstance(ev, events.PartialTranscript):
            target = self.awaiting_transcript[0] if self.awaiting_transcript else self.user_item
            if target is None or not ev.text.startswith(self.partial_sent) or ev.text == self.partial_sent:
                return []  # deltas only append; a revised partial waits for the final transcript
            delta, self.partial_sent = ev.text[len(self.partial_sent) :], ev.text
            return [rp.TranscriptionDelta(target, 0, delta)]
        if isinstance(ev, events.FinalTranscript):
            target = self.awaiting_transcript.popleft() if self.awaiting_transcript else self._id("item")
            self.partial_sent = ""
            return [rp.TranscriptionCompleted(target, 0, ev.text)]
        if isinstance(ev, events.ResponseStarted):
            return self._start(ev.turn)
        if isinstance(ev, events.ResponseTextDelta):
            out = [] if self.response is not None and self.response.turn == ev.turn else self._start(ev.turn)
            r = self.response
            assert r is not None
            r.transcript += ev.text
            if self.audio_output:
                return [*out, rp.AudioTranscriptDelta(r.response_id, r.item_id, 0, 0, ev.text)]
            return [*out, rp.TextDelta(r.response_id, r.item_id, 0, 0, ev.text)]
        if isinstance(ev, events.ResponseAudio):
            out = [] if self.response is not None and self.response.turn == ev.turn else self._start(ev.turn)
            r = self.response
            assert r is not None
            if not self.audio_output or len(ev.audio) == 0:
                return out
            r.samples_sent += len(ev.audio)
            return [*out, rp.AudioDelta(r.response_id, r.item_id, 0, 0, rp.encode_audio(ev.audio))]
        if isinstance(ev, events.ResponseDone):
            return self._done(ev)
        if isinstance(ev, events.ErrorEvent):
            return [_error("server_error", ev.message, kind="server_error")]
        return []

    def _start(self, turn: int) -> Out:
        self.requested = False
        r = self.response = _Response(self._id("resp"), self._id("item"), turn)
        item = rp.message_item(r.item_id, "assistant", "in_progress", [])
        part = {"type": "output_audio" if self.audio_output else "output_text", "transcript": ""}
        previous, self.last_item = self.last_item, r.item_id
        return [
            rp.ResponseCreated(rp.response_object(r.response_id, "in_progress", [], self.audio_output)),
            rp.OutputItemAdded(r.response_id, 0, item),
            rp.ItemAdded(previous, item),
            rp.ContentPartAdded(r.response_id, r.item_id, 0, 0, part),
        ]

    def _done(self, ev: events.ResponseDone) -> Out:
        out = [] if self.response is not None and self.response.turn == ev.turn else self._start(ev.turn)
        r = self.response
        assert r is not None
        self.response = None
        text = ev.text if ev.text or ev.interrupted else r.transcript  # the session's word is final
        part: dict[str, object]
        if self.audio_output:
            part = {"type": "output_audio", "transcript": text}
            out += [
                rp.AudioDone(r.response_id, r.item_id, 0, 0),
                rp.AudioTranscriptDone(r.response_id, r.item_id, 0, 0, text),
            ]
        else:
            part = {"type": "output_text", "text": text}
            out.append(rp.TextDone(r.response_id, r.item_id, 0, 0, text))
        status = "cancelled" if ev.interrupted else "completed"
        item = rp.message_item(r.item_id, "assistant", "incomplete" if ev.interrupted else "completed", [part])
        self.answered[r.item_id] = (r.turn, r.samples_sent * 1000 // rp.RATE)
        reason = None if not ev.interrupted else "client_cancelled" if self.cancel_requested else "turn_detected"
        self.cancel_requested = False
        return [
            *out,
            rp.ContentPartDone(r.response_id, r.item_id, 0, 0, part),
            rp.OutputItemDone(r.response_id, 0, item),
            rp.ItemDone(None, item),
            rp.ResponseDoneEvent(rp.response_object(r.response_id, status, [item], self.audio_output, reason)),
        ]


def _error(code: str, message: str, event_id: str | None = None, kind: str = "invalid_request_error") -> rp.Error:
    return rp.Error(rp.ErrorDetail(code, message, event_id, kind))
