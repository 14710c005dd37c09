"""One `/v1/realtime` connection as a state machine: client events -> session calls, session events -> server events.

No sockets here: `RealtimeConversation.handle` and `.on_event` return the JSON texts to send, so the websocket
layer only moves text. Item and response ids are minted here and mapped to the session's turn numbers.
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
from assistant.server.protocol import WireError

DEFAULT_DETECTION = rp.TurnDetection()  # OpenAI sessions start with server_vad on


@dataclass
class _Response:
    response_id: str
    item_id: str
    turn: int
    samples_sent: int = 0  # 24 kHz samples of audio sent to the client
    transcript: str = ""


class RealtimeConversation:
    """The protocol state of one session; every method returns the server events (JSON texts) to send, in order."""

    def __init__(self, session: RealtimeSession, voice: str, instructions: str, beta: bool = False, n: int = 1) -> None:
        self.session = session
        self.out = rp.ServerEvents(beta=beta)
        self.session_id = f"sess_{n}"
        self.voice, self.instructions = voice, instructions
        self.detection: rp.TurnDetection | None = DEFAULT_DETECTION
        self.audio_output = True
        self.resampler = StreamResampler(rp.RATE, CAPTURE_RATE)
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

    def _session_event(self, kind: str) -> str:
        obj = rp.session_object(self.session_id, self.instructions, self.voice, self.detection, self.audio_output)
        return self.out.make(kind, session=obj)

    def start(self) -> list[str]:
        self.session.set_instructions(self.instructions)
        self.session.set_turn_detection(
            DEFAULT_DETECTION.silence_duration_ms,
            DEFAULT_DETECTION.create_response,
            DEFAULT_DETECTION.interrupt_response,
        )
        return [self._session_event("session.created")]

    def error(self, e: WireError | AssistantError, event_id: str | None = None) -> str:
        if isinstance(e, WireError):
            return self.out.error(e.code, str(e), e.id if isinstance(e.id, str) else event_id)
        return self.out.error("invalid_value", str(e), event_id)

    # ---- client events -------------------------------------------------------------------------------------

    def handle(self, ev: rp.ClientEvent) -> list[str]:
        """Apply one client event; AssistantError from the session becomes an `error` event."""
        try:
            return self._handle(ev)
        except AssistantError as e:
            return [self.error(e, ev.event_id)]

    def _handle(self, ev: rp.ClientEvent) -> list[str]:
        if isinstance(ev, rp.SessionUpdate):
            if ev.instructions is not None:
                self.session.set_instructions(ev.instructions)
                self.instructions = ev.instructions
            if ev.voice is not None:
                self.session.set_voice(ev.voice)
                self.voice = ev.voice
            if ev.turn_detection_given:
                d = ev.turn_detection
                if d is None:
                    self.session.set_turn_detection(None, False, False)
                else:
                    self.session.set_turn_detection(d.silence_duration_ms, d.create_response, d.interrupt_response)
                self.detection = d
            if ev.audio_output is not None:
                self.audio_output = ev.audio_output
            return [self._session_event("session.updated")]
        if isinstance(ev, rp.AudioAppend):
            self.uncommitted += len(ev.audio)
            self._feed(self.resampler.push(ev.audio))
            return []
        if isinstance(ev, rp.AudioCommit):
            if self.uncommitted == 0:
                return [
                    self.out.error(
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
            return [self.out.make("input_audio_buffer.cleared")]
        if isinstance(ev, rp.ItemCreate):
            self.session.add_user_text(ev.text)
            item_id = ev.item_id or self._id("item")
            item = rp.message_item(item_id, "user", "completed", [{"type": "input_text", "text": ev.text}])
            previous, self.last_item = self.last_item, item_id
            return [
                self.out.make("conversation.item.added", previous_item_id=previous, item=item),
                self.out.make("conversation.item.done", previous_item_id=previous, item=item),
            ]
        if isinstance(ev, rp.ItemTruncate):
            return self._truncate(ev)
        if isinstance(ev, rp.ResponseCreate):
            if self.response is not None or self.requested:
                return [
                    self.out.error(
                        "conversation_already_has_active_response",
                        "a response is in progress; wait for response.done or send response.cancel",
                        ev.event_id,
                    )
                ]
            self.session.create_response(ev.instructions)
            self.requested = True
            return []
        if self.response is None and not self.requested:
            return [self.out.error("response_cancel_not_active", "there is no response to cancel", ev.event_id)]
        self.session.cancel_response()
        self.cancel_requested = True
        return []

    def _feed(self, samples: np.ndarray) -> None:
        if len(samples):
            self.session.append_audio(samples)

    def _committed(self, item_id: str) -> list[str]:
        self.uncommitted = 0
        self.user_item = None
        self.awaiting_transcript.append(item_id)
        previous, self.last_item = self.last_item, item_id
        item = rp.message_item(item_id, "user", "completed", [{"type": "input_audio", "transcript": None}])
        return [
            self.out.make("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id),
            self.out.make("conversation.item.added", previous_item_id=previous, item=item),
        ]

    def _truncate(self, ev: rp.ItemTruncate) -> list[str]:
        known = self.answered.get(ev.item_id)
        if known is None:
            return [
                self.out.error(
                    "item_truncate_invalid_item_id",
                    f"no finished assistant audio item {ev.item_id!r}; truncate an item from response.done",
                    ev.event_id,
                )
            ]
        turn, sent_ms = known
        if ev.audio_end_ms > sent_ms:
            return [
                self.out.error(
                    "invalid_value",
                    f"`audio_end_ms` {ev.audio_end_ms} is past the {sent_ms} ms of audio sent for {ev.item_id}",
                    ev.event_id,
                )
            ]
        self.session.truncate_response(turn, ev.audio_end_ms)
        self.answered[ev.item_id] = (turn, ev.audio_end_ms)
        return [
            self.out.make(
                "conversation.item.truncated",
                item_id=ev.item_id,
                content_index=ev.content_index,
                audio_end_ms=ev.audio_end_ms,
            )
        ]

    # ---- session events ------------------------------------------------------------------------------------

    def on_event(self, ev: events.SessionEvent) -> list[str]:
        """Translate one session event into server events."""
        ms_per_sample = 1000 / CAPTURE_RATE
        if isinstance(ev, events.SpeechStarted):
            self.user_item = self._id("item")
            return [
                self.out.make(
                    "input_audio_buffer.speech_started",
                    item_id=self.user_item,
                    audio_start_ms=round(ev.start_sample * ms_per_sample),
                )
            ]
        if isinstance(ev, events.SpeechEnded):
            item_id = self.user_item or self._id("item")
            stopped = self.out.make(
                "input_audio_buffer.speech_stopped", item_id=item_id, audio_end_ms=round(ev.end_sample * ms_per_sample)
            )
            return [stopped, *self._committed(item_id)]
        if isinstance(ev, events.PartialTranscript):
            target = self.awaiting_transcript[0] if self.awaiting_transcript else self.user_item
            if target is None or not ev.text.startswith(self.partial_sent) or ev.text == self.partial_sent:
                return []  # deltas only append; a revised partial waits for the final transcript
            delta, self.partial_sent = ev.text[len(self.partial_sent) :], ev.text
            return [
                self.out.make(
                    "conversation.item.input_audio_transcription.delta", item_id=target, content_index=0, delta=delta
                )
            ]
        if isinstance(ev, events.FinalTranscript):
            target = self.awaiting_transcript.popleft() if self.awaiting_transcript else self._id("item")
            self.partial_sent = ""
            return [
                self.out.make(
                    "conversation.item.input_audio_transcription.completed",
                    item_id=target,
                    content_index=0,
                    transcript=ev.text,
                )
            ]
        if isinstance(ev, events.ResponseStarted):
            return self._start(ev.turn)
        if isinstance(ev, events.ResponseTextDelta):
            out = [] if self.response is not None and self.response.turn == ev.turn else self._start(ev.turn)
            r = self.response
            assert r is not None
            r.transcript += ev.text
            kind = "response.output_audio_transcript.delta" if self.audio_output else "response.output_text.delta"
            return [*out, self.out.make(kind, **self._where(r), delta=ev.text)]
        if isinstance(ev, events.ResponseAudio):
            out = [] if self.response is not None and self.response.turn == ev.turn else self._start(ev.turn)
            r = self.response
            assert r is not None
            if not self.audio_output or len(ev.audio) == 0:
                return out
            r.samples_sent += len(ev.audio)
            return [
                *out,
                self.out.make("response.output_audio.delta", **self._where(r), delta=rp.encode_audio(ev.audio)),
            ]
        if isinstance(ev, events.ResponseDone):
            return self._done(ev)
        if isinstance(ev, events.ErrorEvent):
            return [self.out.error("server_error", ev.message, kind="server_error")]
        return []

    def _where(self, r: _Response) -> dict[str, object]:
        return {"response_id": r.response_id, "item_id": r.item_id, "output_index": 0, "content_index": 0}

    def _start(self, turn: int) -> list[str]:
        self.requested = False
        r = self.response = _Response(self._id("resp"), self._id("item"), turn)
        item = rp.message_item(r.item_id, "assistant", "in_progress", [])
        part = {"type": "output_audio" if self.audio_output else "output_text", "transcript": ""}
        previous, self.last_item = self.last_item, r.item_id
        return [
            self.out.make(
                "response.created", response=rp.response_object(r.response_id, "in_progress", [], self.audio_output)
            ),
            self.out.make("response.output_item.added", response_id=r.response_id, output_index=0, item=item),
            self.out.make("conversation.item.added", previous_item_id=previous, item=item),
            self.out.make("response.content_part.added", **self._where(r), part=part),
        ]

    def _done(self, ev: events.ResponseDone) -> list[str]:
        out = [] if self.response is not None and self.response.turn == ev.turn else self._start(ev.turn)
        r = self.response
        assert r is not None
        self.response = None
        text = ev.text if ev.text or ev.interrupted else r.transcript  # the session's word is final
        if self.audio_output:
            part = {"type": "output_audio", "transcript": text}
            out += [
                self.out.make("response.output_audio.done", **self._where(r)),
                self.out.make("response.output_audio_transcript.done", **self._where(r), transcript=text),
            ]
        else:
            part = {"type": "output_text", "text": text}
            out.append(self.out.make("response.output_text.done", **self._where(r), text=text))
        status = "cancelled" if ev.interrupted else "completed"
        item = rp.message_item(r.item_id, "assistant", "incomplete" if ev.interrupted else "completed", [part])
        self.answered[r.item_id] = (r.turn, r.samples_sent * 1000 // rp.RATE)
        reason = None if not ev.interrupted else "client_cancelled" if self.cancel_requested else "turn_detected"
        self.cancel_requested = False
        return [
            *out,
            self.out.make("response.content_part.done", **self._where(r), part=part),
            self.out.make("response.output_item.done", response_id=r.response_id, output_index=0, item=item),
            self.out.make("conversation.item.done", previous_item_id=None, item=item),
            self.out.make(
                "response.done", response=rp.response_object(r.response_id, status, [item], self.audio_output, reason)
            ),
        ]
