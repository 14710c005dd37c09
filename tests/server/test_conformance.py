"""Realtime GA conformance: every client and server event type the installed `openai` SDK defines, driven or
observed against a running headless daemon with tiny models, every received event parsed strictly into the SDK's
own model classes (GA, and beta for an `OpenAI-Beta: realtime=v1` connection).

The exceptions are listed in EXCEPTIONS with their reasons; the test fails when an event type outside them is not
covered, and when an excepted one is covered after all (then the list is out of date).
"""

from __future__ import annotations

import asyncio
import base64
import json
import typing
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from openai.types.beta.realtime import realtime_server_event as beta_server
from openai.types.realtime import realtime_client_event, realtime_server_event
from pydantic import BaseModel, TypeAdapter
from websockets.asyncio.client import ClientConnection, connect

from assistant.audio.format import CAPTURE_RATE, float32_to_int16, int16_to_float32, resample
from assistant.config import Config
from assistant.server import g711
from tests import tiny_engines
from tests.pipeline.doubles import ToolChat
from tests.server.scripted_daemon import scripted_daemon
from tests.server.test_headless_e2e import TOKEN, daemon
from tests.speech import needs_espeak, say, silence

WAIT_S = 180.0  # safety net for a loaded shared CPU; never a timing assertion
RATE = 24_000
EXCEPTIONS = {
    "input_audio_buffer.dtmf_event_received": "telephone keypad tones arrive only on SIP calls; there is no phone line",
    "mcp_list_tools.in_progress": "no MCP servers are offered (session.tools takes function tools only)",
    "mcp_list_tools.completed": "no MCP servers are offered (session.tools takes function tools only)",
    "mcp_list_tools.failed": "no MCP servers are offered (session.tools takes function tools only)",
    "response.mcp_call_arguments.delta": "no MCP servers are offered (session.tools takes function tools only)",
    "response.mcp_call_arguments.done": "no MCP servers are offered (session.tools takes function tools only)",
    "response.mcp_call.in_progress": "no MCP servers are offered (session.tools takes function tools only)",
    "response.mcp_call.completed": "no MCP servers are offered (session.tools takes function tools only)",
    "response.mcp_call.failed": "no MCP servers are offered (session.tools takes function tools only)",
    "conversation.item.input_audio_transcription.failed": (
        "the tiny STT cannot be made to fail on demand; tests/server/test_protocol.py drives it with a failing session"
    ),
}
# Session fields OpenAI's own servers send beyond the SDK's request model (RealtimeSessionCreateRequest)
SESSION_EXTRAS = {"id", "object", "expires_at"}


def _event_types(union: Any) -> dict[str, type[BaseModel]]:
    """type string -> SDK model class of every member of a (nested, annotated) union of event models."""
    out: dict[str, type[BaseModel]] = {}
    for arg in typing.get_args(union):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            out[typing.get_args(arg.model_fields["type"].annotation)[0]] = arg
        else:
            out |= _event_types(arg)
    return out


GA_SERVER = _event_types(realtime_server_event.RealtimeServerEvent)
GA_CLIENT = _event_types(realtime_client_event.RealtimeClientEvent)
BETA_SERVER = _event_types(beta_server.RealtimeServerEvent)


def _extras(value: Any, path: str) -> Iterator[str]:
    """Paths of fields the SDK's models do not declare (its models accept unknown fields silently)."""
    if isinstance(value, BaseModel):
        for name in value.model_extra or {}:
            if not (path.endswith(".session") and name in SESSION_EXTRAS):
                yield f"{path}.{name}"
        for name in type(value).model_fields:
            yield from _extras(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _extras(v, f"{path}[{i}]")


def strict(msg: dict[str, Any], beta: bool) -> BaseModel:
    """`msg` parsed into the SDK model of its type; AssertionError naming fields the SDK does not declare."""
    models = BETA_SERVER if beta else GA_SERVER
    assert msg["type"] in models, f"{msg['type']} is not an SDK server event"
    parsed = TypeAdapter(models[msg["type"]]).validate_python(msg)
    extras = list(_extras(parsed, msg["type"]))
    assert not extras, f"fields the SDK does not declare: {extras}"
    return parsed


class Peer:
    """One Realtime connection that parses every received event strictly and keeps them."""

    def __init__(self, ws: ClientConnection, beta: bool = False) -> None:
        self.ws, self.beta = ws, beta
        self.seen: list[dict[str, Any]] = []
        self.sent: list[str] = []

    async def send(self, event: dict[str, Any]) -> None:
        TypeAdapter(GA_CLIENT[event["type"]]).validate_python(event)  # what we send is what the SDK would send
        self.sent.append(event["type"])
        await self.ws.send(json.dumps(event))

    async def until(self, kind: str) -> list[dict[str, Any]]:
        """Events up to and including the next of type `kind`."""
        got: list[dict[str, Any]] = []
        async with asyncio.timeout(WAIT_S):
            while True:
                msg = json.loads(await self.ws.recv())
                strict(msg, self.beta)
                self.seen.append(msg)
                got.append(msg)
                if msg["type"] == kind:
                    return got
                assert msg["type"] != "error", f"waiting for {kind}: {msg['error']}"


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    changes = {"pipeline.mode": "hands_free", "server.port": 0, "server.token": TOKEN}
    changes["server.voice_aliases"] = ["alloy=vivian"]
    return tiny_engines.tiny_config(tmp_path_factory.mktemp("conformance_models"), changes)


def speech(rate: int) -> np.ndarray:
    x = np.concatenate([silence(0.3), say("What time is it now?"), silence(1.5)])
    return float32_to_int16(resample(int16_to_float32(x), CAPTURE_RATE, rate))


def b64(x: np.ndarray) -> str:
    return base64.b64encode(x.astype("<i2").tobytes()).decode()


def text_item(text: str) -> dict[str, Any]:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    return {"type": "conversation.item.create", "item": item}


async def scenario(port: int) -> tuple[Peer, Peer, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    facts: dict[str, Any] = {}
    url = f"ws://127.0.0.1:{port}/v1/realtime"
    async with connect(url, additional_headers=headers, max_size=None) as ws:
        ga = Peer(ws)
        await ga.until("session.created")
        detection = {"type": "server_vad", "silence_duration_ms": 500, "idle_timeout_ms": 5000}
        transcription = {"model": "gpt-4o-transcribe-diarize"}  # a diarizing model: segments are sent
        audio = {"input": {"turn_detection": detection, "transcription": transcription}, "output": {"voice": "alloy"}}
        await ga.send({"type": "session.update", "session": {"type": "realtime", "audio": audio}})
        updated = (await ga.until("session.updated"))[-1]
        facts["voice"] = updated["session"]["audio"]["output"]["voice"]
        # a spoken turn with server VAD: speech events, transcript, segment, a spoken reply, then the idle timeout
        pcm = speech(RATE)
        for i in range(0, len(pcm), RATE // 10):  # at the pace a microphone records: partial transcripts come
            await ga.send({"type": "input_audio_buffer.append", "audio": b64(pcm[i : i + RATE // 10])})
            await asyncio.sleep(0.1)
        turn = await ga.until("response.done")
        facts["reply_s"] = (
            sum(len(base64.b64decode(m["delta"])) // 2 for m in turn if "audio.delta" in m["type"]) / RATE
        )
        facts["usage"] = turn[-1]["response"]["usage"]
        facts["idle"] = await ga.until("response.done")  # the idle timeout commits the quiet and answers
        user_item = next(m["item_id"] for m in turn if m["type"] == "input_audio_buffer.committed")
        await ga.send({"type": "conversation.item.retrieve", "item_id": user_item})
        facts["retrieved"] = (await ga.until("conversation.item.retrieved"))[-1]["item"]
        # manual turns: clear, then a text item answered and truncated, one cleared, one cancelled, one deleted
        await ga.send(
            {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}}
        )
        await ga.until("session.updated")
        await ga.send({"type": "input_audio_buffer.append", "audio": b64(pcm[: RATE // 2])})
        await ga.send({"type": "input_audio_buffer.clear"})
        await ga.until("input_audio_buffer.cleared")
        await ga.send(text_item("Hello there."))
        await ga.send({"type": "response.create"})
        done = (await ga.until("response.done"))[-1]
        answer = done["response"]["output"][0]["id"]
        await ga.send(
            {"type": "conversation.item.truncate", "item_id": answer, "content_index": 0, "audio_end_ms": 500}
        )
        await ga.until("conversation.item.truncated")
        await ga.send(text_item("Tell me more."))
        await ga.send({"type": "response.create"})
        await ga.until("response.output_audio.delta")
        await ga.send({"type": "output_audio_buffer.clear"})
        cleared = await ga.until("response.done")
        facts["cleared_status"] = cleared[-1]["response"]["status"]
        await ga.send(text_item("And again?"))
        await ga.send({"type": "response.create"})
        await ga.until("response.output_audio.delta")
        await ga.send({"type": "response.cancel"})
        facts["cancel_status"] = (await ga.until("response.done"))[-1]["response"]["status"]
        await ga.send({"type": "conversation.item.delete", "item_id": answer})
        await ga.until("conversation.item.deleted")
        # text out
        await ga.send({"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"]}})
        await ga.until("session.updated")
        await ga.send(text_item("Write it down."))
        await ga.send({"type": "response.create"})
        await ga.until("response.done")
        # G.711: mu-law in, A-law out, committed by hand
        formats = {"input": {"format": {"type": "audio/pcmu"}}, "output": {"format": {"type": "audio/pcma"}}}
        update = {"type": "realtime", "output_modalities": ["audio"], "audio": formats}
        await ga.send({"type": "session.update", "session": update})
        await ga.until("session.updated")
        ulaw = g711.ulaw_encode(speech(g711.RATE))
        for i in range(0, len(ulaw), g711.RATE // 10):
            chunk = base64.b64encode(ulaw[i : i + g711.RATE // 10]).decode()
            await ga.send({"type": "input_audio_buffer.append", "audio": chunk})
        await ga.send({"type": "input_audio_buffer.commit"})
        facts["g711_transcript"] = (await ga.until("conversation.item.input_audio_transcription.completed"))[-1]
        await ga.send({"type": "response.create"})
        g711_turn = await ga.until("response.done")
        alaw = b"".join(base64.b64decode(m["delta"]) for m in g711_turn if m["type"] == "response.output_audio.delta")
        facts["g711_s"] = len(g711.alaw_decode(alaw)) / g711.RATE
        # an error: response.create with nothing to answer
        await ga.send({"type": "response.create"})
        facts["nothing"] = (await ga.until("error"))[-1]["error"]
    async with connect(url, additional_headers={**headers, "OpenAI-Beta": "realtime=v1"}, max_size=None) as ws:
        beta = Peer(ws, beta=True)
        await beta.until("conversation.created")
        await beta.send(text_item("Hi."))
        await beta.until("conversation.item.created")
    return ga, beta, facts


WEATHER = {"type": "function", "name": "get_weather", "description": "The weather now.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}  # fmt: skip
CALL = ['<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>']


async def function_round(port: int, beta: bool) -> tuple[Peer, dict[str, Any]]:
    """A function-calling round (tools in session.update, a call streamed, its output, the answer after it) with
    a scripted chat (tests/server/test_realtime_tools.py does it through the SDK, also with a real model).
    Beta too: a beta client is not sent the GA-only events (conversation.item.done), which its SDK does not define."""
    headers = {"Authorization": f"Bearer {TOKEN}", **({"OpenAI-Beta": "realtime=v1"} if beta else {})}
    async with connect(f"ws://127.0.0.1:{port}/v1/realtime", additional_headers=headers, max_size=None) as ws:
        peer = Peer(ws, beta)
        await peer.until("session.created")
        choice = {"type": "function", "name": "get_weather"} if beta else "required"
        session: dict[str, Any] = {"type": "realtime", "tools": [WEATHER], "tool_choice": choice}
        session |= {"turn_detection": None} if beta else {"audio": {"input": {"turn_detection": None}}}
        await peer.send({"type": "session.update", "session": session})
        updated = (await peer.until("session.updated"))[-1]["session"]
        await peer.send(text_item("Weather in Paris?"))
        await peer.send({"type": "response.create"})
        first = await peer.until("response.done")
        call = next(m for m in first if m["type"] == "response.function_call_arguments.done")
        output = {"type": "function_call_output", "call_id": call["call_id"], "output": '{"sky": "clear"}'}
        await peer.send({"type": "conversation.item.create", "item": output})
        await peer.send({"type": "response.create"})
        second = await peer.until("response.done")
    return peer, {"updated": updated, "call": call, "first": first[-1], "second": second[-1]}


@needs_espeak
def test_every_sdk_event_type_is_driven_or_observed(tiny_config: Config) -> None:
    """All 11 client event types are sent and answered, every server event type outside EXCEPTIONS is received,
    and each received event parses strictly (no undeclared fields) into the SDK's GA or beta model class."""

    async def body() -> tuple[Peer, Peer, dict[str, Any]]:
        async with daemon(tiny_config) as (server, _):
            ga, beta, facts = await scenario(server.port)

        def scripted(_: Any) -> ToolChat:
            return ToolChat([CALL, ["It is clear."]])

        async with scripted_daemon(tiny_config, scripted) as (server, _):
            for is_beta, peer in ((False, ga), (True, beta)):
                tools, facts["beta_tools" if is_beta else "tools"] = await function_round(server.port, is_beta)
                peer.seen += tools.seen
                peer.sent += tools.sent
        return ga, beta, facts

    ga, beta, facts = asyncio.run(body())
    received = {m["type"] for m in ga.seen} | {m["type"] for m in beta.seen}
    covered_server = {t for t in GA_SERVER if t in received}
    missing = sorted(set(GA_SERVER) - covered_server - set(EXCEPTIONS))
    print(f"client events: {len(set(ga.sent))} of {len(GA_CLIENT)} driven")
    print(f"server events: {len(covered_server)} of {len(GA_SERVER)} observed; exceptions {len(EXCEPTIONS)}:")
    for name, why in sorted(EXCEPTIONS.items()):
        print(f"  {name}: {why}")
    print(f"{len(ga.seen) + len(beta.seen)} events parsed strictly; facts: {json.dumps(facts)[:600]}")
    assert set(ga.sent) == set(GA_CLIENT), sorted(set(GA_CLIENT) - set(ga.sent))
    assert not missing, missing
    assert not (covered_server & set(EXCEPTIONS)), "an excepted event was seen: update EXCEPTIONS"
    assert facts["voice"] == "alloy" and facts["reply_s"] > 0
    assert facts["usage"]["output_token_details"]["audio_tokens"] == round(facts["reply_s"] * 12.5)
    details = facts["usage"]["input_token_details"]
    assert details["text_tokens"] > details["cached_tokens"] >= 0 and details["audio_tokens"] > 0
    assert facts["usage"]["input_tokens"] == details["text_tokens"] + details["audio_tokens"]
    assert facts["retrieved"]["content"][0]["transcript"] is not None
    idle = [m["type"] for m in facts["idle"]]
    assert idle.index("input_audio_buffer.timeout_triggered") < idle.index("input_audio_buffer.committed")
    assert idle.index("input_audio_buffer.committed") < idle.index("response.created")
    assert facts["idle"][-1]["response"]["status"] == "completed"
    assert facts["cleared_status"] == facts["cancel_status"] == "cancelled"
    assert facts["g711_transcript"]["usage"]["seconds"] > 0
    assert abs(facts["g711_s"] - facts["reply_s"]) < 0.1  # the same greedy reply, at 8 kHz A-law
    assert facts["nothing"]["code"] == "response_create_nothing_to_answer"
    assert facts["nothing"]["type"] == "invalid_request_error"
    tools = facts["tools"]
    assert tools["updated"]["tools"] == [WEATHER] and tools["updated"]["tool_choice"] == "required"
    assert json.loads(tools["call"]["arguments"]) == {"city": "Paris"}
    assert [i["type"] for i in tools["first"]["response"]["output"]] == ["function_call"]
    assert tools["second"]["response"]["status"] == "completed"
    assert facts["beta_tools"]["updated"]["tools"] == [WEATHER]
    assert facts["beta_tools"]["updated"]["tool_choice"] == "get_weather"  # the beta session's is a string
    assert json.loads(facts["beta_tools"]["call"]["arguments"]) == {"city": "Paris"}
    assert facts["beta_tools"]["second"]["response"]["status"] == "completed"
    assert "conversation.item.done" not in {m["type"] for m in beta.seen}
