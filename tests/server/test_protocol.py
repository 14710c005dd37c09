"""The pure wire formats: decoding, encoding, and the Outbox/RateLimiter building blocks, without sockets."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import inspect
import json

import numpy as np
import pytest

from assistant import events
from assistant.server import protocol as p
from assistant.server import realtime_protocol as rp
from assistant.server.controller import Controller, RealtimeBackend, RealtimeSession
from assistant.server.realtime import RealtimeConversation
from assistant.server.ws import Outbox, Overflow
from tests.server.fakes import FakeBackend, FakeController, FakeSession


def test_commands_round_trip_through_the_wire() -> None:
    """Every command dataclass encodes to JSON and decodes back to an equal value."""
    samples = [p.ConfigSet({"tts.voice": "a"}, id=3), p.Say("hi", id="x"), p.Ask("why?")]
    samples += [p.ToolsRegister([{"name": "lamp", "parameters": {"type": "object"}}], 2.5, id=4)]
    samples += [p.ToolResult("app1-call-1", "on", id=5), p.ToolResult("app1-call-2", error="no lamp")]
    given = (p.ConfigSet, p.Say, p.Ask, p.ToolsRegister, p.ToolResult)
    samples += [cls() for cls in p.COMMANDS.values() if cls not in given]
    assert {type(s) for s in samples} == set(p.COMMANDS.values())
    for cmd in samples:
        assert p.decode_command(p.encode(cmd)) == cmd


def test_error_message_is_ascii_json_even_for_lone_surrogates() -> None:
    """An echoed id holding a lone surrogate still encodes to ASCII JSON that round-trips."""
    text = p.encode(p.Error("bad_field", "x", "\udc80"))
    assert text.isascii() and json.loads(text)["id"] == "\udc80"


def test_ga_and_beta_session_shapes_decode_alike() -> None:
    """The GA nested session and the beta flat session give the same SessionUpdate."""
    ga = {"type": "session.update", "session": {"type": "realtime", "instructions": "hi", "output_modalities": ["text"],
          "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None},
                    "output": {"voice": "alice", "format": {"type": "audio/pcm"}}}}}  # fmt: skip
    beta = {"type": "session.update", "session": {"instructions": "hi", "modalities": ["text"], "voice": "alice",
            "input_audio_format": "pcm16", "output_audio_format": "pcm16", "turn_detection": None}}  # fmt: skip
    a, b = rp.decode_client_event(json.dumps(ga)), rp.decode_client_event(json.dumps(beta))
    assert a == b == rp.SessionUpdate("hi", "alice", True, None, False, "pcm16", "pcm16")
    vad = {"type": "session.update", "session": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 300,
           "create_response": False, "threshold": 0.5}}}  # fmt: skip
    got = rp.decode_client_event(json.dumps(vad))
    assert isinstance(got, rp.SessionUpdate) and got.turn_detection == rp.TurnDetection(300, False, True, vad_level=2)
    untouched = rp.decode_client_event(json.dumps({"type": "session.update", "session": {"instructions": "x"}}))
    assert isinstance(untouched, rp.SessionUpdate) and not untouched.turn_detection_given


def test_audio_decodes_little_endian_pcm16_and_encodes_back() -> None:
    """base64 pcm16 -> int16 samples exactly; float32 audio encodes to clipped, rounded pcm16."""
    x = np.array([0, 1, -1, 32767, -32768], dtype=np.int16)
    text = base64.b64encode(x.astype("<i2").tobytes()).decode()
    got = rp.decode_client_event(json.dumps({"type": "input_audio_buffer.append", "audio": text}))
    assert isinstance(got, rp.AudioAppend) and np.array_equal(got.audio, x)
    assert rp.encode_audio(x) == text
    pcm = np.frombuffer(base64.b64decode(rp.encode_audio(np.array([0.5, 2.0, -2.0], np.float32))), "<i2")
    assert pcm.tolist() == [16384, 32767, -32767]


def test_outbox_drops_oldest_events_but_keeps_replies() -> None:
    """A full outbox drops its oldest droppable item (counted), never a reply, and hands items out in order."""

    async def body() -> None:
        box = Outbox(3, 1 << 20)
        box.put("reply-1", droppable=False)
        for i in range(5):
            box.put(f"event-{i}")
        assert box.dropped == 3
        assert [await box.get() for _ in range(3)] == ["reply-1", "event-3", "event-4"]

    asyncio.run(body())


def test_outbox_is_bounded_in_bytes_and_overflows_on_replies() -> None:
    """Events give way to a reply that would pass the byte bound; a reply that still does not fit raises Overflow."""

    async def body() -> None:
        box = Outbox(100, 1000)
        box.put("e" * 600)
        box.put("r" * 600, droppable=False)  # the event makes room
        assert box.dropped == 1 and box.bytes == 600
        box.put("e" * 600)  # an event that does not fit is dropped, not queued
        assert box.dropped == 2 and box.bytes == 600
        with pytest.raises(Overflow, match="1 messages"):
            box.put("r" * 600, droppable=False)
        assert await box.get() == "r" * 600 and box.bytes == 0
        box.put("x" * 5000, droppable=False)  # one frame always fits in an empty queue
        assert box.bytes == 5000

    asyncio.run(body())


def test_token_bucket_refills_at_its_rate() -> None:
    """A 2/s bucket allows a burst of 2, then one more per half second; an amount over the capacity needs a full one."""
    r = p.TokenBucket(2.0, 2.0, now=0.0)
    assert [r.take(1, 0.0) for _ in range(3)] == [True, True, False]
    assert [r.take(1, 0.5), r.take(1, 0.5)] == [True, False]
    big = p.TokenBucket(10.0, 10.0, now=0.0)
    assert big.take(25, 0.0) and not big.take(1, 1.0)  # the debt of 15 is paid back first
    assert big.take(1, 1.7)


@pytest.mark.parametrize(
    ("msg", "fragment"),
    [
        ({"type": "response.create", "response": {"output_modalities": ["video"]}}, 'a list of "audio" and/or "text"'),
        ({"type": "session.update", "session": {"type": "transcription"}}, 'use "realtime"'),
        ({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": "hi"}},
         "must be a non-empty list"),
        ({"type": "input_audio_buffer.commit", "event_id": 5}, "`event_id` must be a string"),
        ({"type": "response.create", "response": {"conversation": "none"}}, "out-of-band responses are not available"),
        ({"type": "response.create", "response": {"input": []}}, "add items with conversation.item.create"),
        ({"type": "response.create", "response": {"max_output_tokens": 0}}, "an integer from 1 to 4096"),
        ({"type": "response.create", "response": {"voice": "ash"}}, "set the voice with session.update"),
        ({"type": "response.create", "response": {"instrucions": "x"}}, "did you mean `instructions`?"),
        ({"type": "session.update", "session": {"voise": "x"}}, "`session.voise` is not a field of session; did you"),
    ],
)  # fmt: skip
def test_realtime_decode_errors_name_the_field(msg: dict[str, object], fragment: str) -> None:
    """Unsupported or mistyped Realtime fields raise WireError naming the field and the fix."""
    with pytest.raises(p.WireError, match=None) as e:
        rp.decode_client_event(json.dumps(msg))
    assert fragment in str(e.value)


@pytest.mark.parametrize(
    ("proto", "double"),
    [(Controller, FakeController), (RealtimeSession, FakeSession), (RealtimeBackend, FakeBackend)],
)
def test_test_doubles_have_every_protocol_method_with_its_parameters(proto: type, double: type) -> None:
    """The scripted doubles match the Protocols method by method (mypy checks the types: see fakes.py)."""
    for name, member in vars(proto).items():
        if callable(member) and not name.startswith("_"):
            want = list(inspect.signature(member).parameters)
            assert list(inspect.signature(getattr(double, name)).parameters) == want, name


def test_interrupted_response_reason_tells_client_cancel_from_barge_in() -> None:
    """A response stopped after response.cancel is client_cancelled; one stopped by the user speaking, turn_detected."""
    conv = RealtimeConversation(FakeSession(FakeBackend()), "default", "Be brief.")

    def reason(cancel: bool) -> str:
        conv.on_event(events.ResponseStarted(1, 0.0))
        if cancel:
            conv.handle(rp.ResponseCancel())
        done = json.loads(conv.encode(conv.on_event(events.ResponseDone(1, "It", True, 0.0))[-1]))
        assert done["type"] == "response.done" and done["response"]["status"] == "cancelled"
        return str(done["response"]["status_details"]["reason"])

    assert reason(cancel=True) == "client_cancelled"
    assert reason(cancel=False) == "turn_detected"


def test_replies_carry_enums_and_dataclasses_as_plain_json() -> None:
    """A controller result holding enums or dataclasses (e.g. history messages) encodes to plain JSON."""

    @dataclasses.dataclass(frozen=True)
    class Message:
        role: str
        content: str
        interrupted: bool = False

    reply = p.Reply("history.get", {"history": [Message("user", "hi")], "state": events.TurnState.IDLE}, 1)
    assert json.loads(p.encode(reply))["result"] == {
        "history": [{"role": "user", "content": "hi", "interrupted": False}],
        "state": "idle",
    }


def test_a_failed_transcription_is_answered_with_transcription_failed() -> None:
    """An error from the session between a committed turn and its transcript becomes
    conversation.item.input_audio_transcription.failed for that item, which the SDK's model parses."""
    from openai.types.realtime import ConversationItemInputAudioTranscriptionFailedEvent as Failed

    conv = RealtimeConversation(FakeSession(FakeBackend()), "default", "Be brief.")
    conv.on_event(events.SpeechStarted(0, 0, 0.0))
    ended = conv.on_event(events.SpeechEnded(0, 16_000, 1.0))
    item_id = next(e.item_id for e in ended if isinstance(e, rp.BufferCommitted))
    out = conv.on_event(events.ErrorEvent("the transcriber ran out of memory", 1.1))
    assert [type(e) for e in out] == [rp.TranscriptionFailed]
    failed = Failed.model_validate(json.loads(conv.encode(out[0])))
    assert failed.item_id == item_id and failed.error.message == "the transcriber ran out of memory"


def test_a_failed_transcription_keeps_the_next_transcripts_on_their_own_items() -> None:
    """A failed transcription (the core's error, then its empty transcript, as the turn core sends them) with a
    second turn committed behind it: the first item gets transcription.failed and a conversation.item.done, the
    second item gets its own transcript, and no event names an item the client was never told of (the empty
    transcript was taken as the second item's, and the second's words went to an unknown item)."""
    conv = RealtimeConversation(FakeSession(FakeBackend()), "default", "Be brief.")
    committed = []
    for start, end in ((0, 16_000), (32_000, 48_000)):
        conv.on_event(events.SpeechStarted(start, start, 0.0))
        ended = conv.on_event(events.SpeechEnded(start, end, 1.0))
        committed += [e.item_id for e in ended if isinstance(e, rp.BufferCommitted)]
    first, second = committed
    out = conv.on_event(events.ErrorEvent("transcribing: RuntimeError: out of memory", 1.1))
    out += conv.on_event(events.FinalTranscript("", "", 1.1))
    out += conv.on_event(events.FinalTranscript("what time is it", "en", 1.2))
    announced = {first, second}
    for ev in out:
        assert getattr(ev, "item_id", first) in announced, ev
    failed = [ev for ev in out if isinstance(ev, rp.TranscriptionFailed)]
    completed = [ev for ev in out if isinstance(ev, rp.TranscriptionCompleted)]
    assert [ev.item_id for ev in failed] == [first]
    assert [(ev.item_id, ev.transcript) for ev in completed] == [(second, "what time is it")]
    done = [ev.item["id"] for ev in out if isinstance(ev, rp.ItemDone)]
    assert done == [first, second]


@pytest.mark.parametrize(("client_fault", "kind"), [(True, "invalid_request_error"), (False, "server_error")])
def test_a_core_error_says_whose_fault_it_is(client_fault: bool, kind: str) -> None:
    """An error event the client caused (e.g. response.create with nothing heard) is an invalid_request_error, as
    OpenAI sends; the assistant's own failure stays a server_error; the native channel carries the same flag."""
    conv = RealtimeConversation(FakeSession(FakeBackend()), "default", "Be brief.")
    ev = events.ErrorEvent("nothing to answer; send speech or a user message item", 1.0, client_fault)
    out = conv.on_event(ev)
    assert len(out) == 1
    sent = json.loads(conv.encode(out[0]))
    assert sent["type"] == "error" and sent["error"]["type"] == kind
    assert sent["error"]["message"] == ev.message
    assert p.decode_event(json.loads(p.encode(p.EventMessage(ev)))) == ev


@pytest.mark.parametrize(("client_fault", "kind"), [(True, "invalid_request_error"), (False, "server_error")])
def test_a_response_that_failed_ends_failed_not_cancelled(client_fault: bool, kind: str) -> None:
    """A response whose reply failed (its error names its turn) ends with response.done status "failed" and the
    error's type, which the SDK parses (it said "cancelled" by "turn_detected", or "completed"); an error of no
    response leaves the one in progress alone."""
    from openai.types.realtime import ResponseDoneEvent

    conv = RealtimeConversation(FakeSession(FakeBackend()), "default", "Be brief.")
    conv.on_event(events.ResponseStarted(1, 0.0))
    conv.on_event(events.ErrorEvent("the LLM server is gone", 0.1, client_fault, turn=1))
    done = ResponseDoneEvent.model_validate(
        json.loads(conv.encode(conv.on_event(events.ResponseDone(1, "", True, 0.2))[-1]))
    )
    assert done.response.status == "failed"
    assert done.response.status_details is not None and done.response.status_details.type == "failed"
    assert done.response.status_details.error is not None and done.response.status_details.error.type == kind
    conv.on_event(events.ResponseStarted(2, 1.0))
    conv.on_event(events.ErrorEvent("offering the tools failed", 1.1))
    done = ResponseDoneEvent.model_validate(
        json.loads(conv.encode(conv.on_event(events.ResponseDone(2, "Hi", False, 1.2))[-1]))
    )
    assert done.response.status == "completed"


def test_response_create_takes_its_own_output_modalities_and_metadata() -> None:
    """response.create with output_modalities ["text"] in an audio session gets that one response as text (no audio
    deltas), the next one is audio again; conversation "auto" and metadata are accepted (modalities were ignored)."""

    async def body() -> None:
        conv = RealtimeConversation(FakeSession(FakeBackend()), "default", "Be brief.")
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}

        def reply(response: dict[str, object]) -> list[dict[str, object]]:
            conv.handle(rp.decode_client_event(json.dumps({"type": "conversation.item.create", "item": item})))
            create = {"type": "response.create", "response": response}
            assert conv.handle(rp.decode_client_event(json.dumps(create))) == []  # accepted: no error
            out = conv.on_event(events.ResponseStarted(conv.session.turn, 0.0))  # type: ignore[attr-defined]
            out += conv.on_event(events.ResponseTextDelta(conv.session.turn, "Hi", 0.1))  # type: ignore[attr-defined]
            out += conv.on_event(events.ResponseAudio(conv.session.turn, np.ones(2400, np.float32) * 0.1, 0.2))  # type: ignore[attr-defined]
            out += conv.on_event(events.ResponseDone(conv.session.turn, "Hi", False, 0.3))  # type: ignore[attr-defined]
            return [json.loads(conv.encode(e)) for e in out]

        text = reply({"output_modalities": ["text"], "conversation": "auto", "metadata": {"topic": "x"}})
        kinds = [e["type"] for e in text]
        assert "response.output_text.delta" in kinds and "response.output_audio.delta" not in kinds
        assert text[-1]["response"]["output_modalities"] == ["text"]
        assert text[-1]["response"]["output"][0]["content"] == [{"type": "output_text", "text": "Hi"}]
        audio = [e["type"] for e in reply({})]
        assert "response.output_audio.delta" in audio and "response.output_text.delta" not in audio

    asyncio.run(body())


def test_a_refused_duplicate_item_id_adds_nothing_to_the_conversation() -> None:
    """conversation.item.create with an id already used is refused with item_already_exists and its text does not
    reach the session (it was added to the chat before the refusal, so a retry under a new id doubled it)."""
    session = FakeSession(FakeBackend())
    conv = RealtimeConversation(session, "default", "Be brief.")
    conv.handle(rp.ItemCreate("first", "msg_1"))
    refused = conv.handle(rp.ItemCreate("second", "msg_1"))
    assert [e.error.code for e in refused if isinstance(e, rp.Error)] == ["item_already_exists"]
    assert [c for c in session.calls if c[0] == "user_text"] == [("user_text", "first")]


def test_an_item_after_an_unknown_previous_item_id_is_refused() -> None:
    """conversation.item.create with a previous_item_id naming no item is refused and its text never reaches the
    session (it was ignored and the item added); a known id or "root" of an empty conversation is accepted."""
    session = FakeSession(FakeBackend())
    conv = RealtimeConversation(session, "default", "Be brief.")

    def create(text: str, previous: str) -> list[dict[str, object]]:
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
        msg = {"type": "conversation.item.create", "previous_item_id": previous, "item": item}
        return [json.loads(conv.encode(e)) for e in conv.handle(rp.decode_client_event(json.dumps(msg)))]

    first = create("first", "root")
    assert first[0]["type"] == "conversation.item.added"
    refused = create("second", "item_nope")
    assert [e["type"] for e in refused] == ["error"]
    error = refused[0]["error"]
    assert isinstance(error, dict) and "'item_nope' is no item of this conversation" in error["message"]
    assert create("third", str(first[0]["item"]["id"]))[0]["type"] == "conversation.item.added"  # type: ignore[index]
    assert [c[1] for c in session.calls if c[0] == "user_text"] == ["first", "third"]


def test_g711_and_speed_shape_the_reply_audio() -> None:
    """With output audio/pcma the reply goes out as A-law at 8 kHz (a third of the 24 kHz samples); with speed 1.5
    it is two thirds as long; audio_end_ms of a truncate is scaled back to the reply's own time."""
    session = FakeSession(FakeBackend())
    conv = RealtimeConversation(session, "default", "Be brief.")
    conv.handle(rp.SessionUpdate(output_format="pcma"))
    conv.on_event(events.ResponseStarted(1, 0.0))
    tone = (0.3 * np.sin(np.arange(24_000) / 8)).astype(np.float32)
    out = conv.on_event(events.ResponseAudio(1, tone, 0.1)) + conv.on_event(events.ResponseDone(1, "x", False, 0.2))
    alaw = b"".join(base64.b64decode(e.delta) for e in out if isinstance(e, rp.AudioDelta))
    assert len(alaw) == 8000  # one byte per sample at 8 kHz
    assert (
        any(isinstance(e, rp.OutputAudioStarted) for e in out) and isinstance(out[-2], rp.OutputAudioStopped) is False
    )
    conv.handle(rp.SessionUpdate(output_format="pcm16", speed=1.5))
    conv.on_event(events.ResponseStarted(2, 1.0))
    out = conv.on_event(events.ResponseAudio(2, tone, 1.1)) + conv.on_event(events.ResponseDone(2, "y", False, 1.2))
    pcm = b"".join(base64.b64decode(e.delta) for e in out if isinstance(e, rp.AudioDelta))
    assert len(pcm) // 2 == 16_000  # round(24 000 / 1.5)
    item = next(e for e in out if isinstance(e, rp.ResponseDoneEvent)).response["output"][0]["id"]
    conv.handle(rp.ItemTruncate(item, 0, 400))
    assert session.calls[-1] == ("truncate", (2, 600))  # 400 ms heard at 1.5x = 600 ms of the reply
