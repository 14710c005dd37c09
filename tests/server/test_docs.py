"""docs/protocol.md has a valid example of every message, checked against the decoders and the code."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from assistant.server import protocol as p
from assistant.server import realtime_protocol as rp

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "protocol.md").read_text()
NATIVE_DOC, REALTIME_DOC = DOC.split("## OpenAI Realtime-compatible endpoint")


def examples(text: str) -> list[dict[str, Any]]:
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)\n```", text, re.S)]


def test_every_native_command_has_a_decodable_example() -> None:
    """Each native command type appears in the docs, and every command example decodes."""
    found = {m["type"] for m in examples(NATIVE_DOC)}
    assert set(p.COMMANDS) <= found
    for m in examples(NATIVE_DOC):
        if m["type"] in p.COMMANDS:
            p.decode_command(json.dumps(m))


def test_every_native_server_message_has_a_matching_example() -> None:
    """hello, reply, error, ask.delta, events.dropped, tool.call and every event have an example with exactly their
    fields."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for m in examples(NATIVE_DOC):
        by_type.setdefault(m["type"], []).append(m)
    for cls in (p.Hello, p.Reply, p.AskDelta, p.EventsDropped, p.ToolCall):
        kind = cls.__dataclass_fields__["type"].default
        assert {f.name for f in dataclasses.fields(cls)} == set(by_type[kind][0]), kind
    assert any(set(m) == {"type", "code", "message", "id"} for m in by_type["error"])
    for name in p.EVENT_TYPES.values():
        assert name in by_type, f"no example of event {name}"
    for name in p.EVENTS_BY_NAME:
        p.decode_event(by_type[name][0])  # field names and types match the event dataclass
    pipeline_error = next(m for m in by_type["error"] if m.get("code") == "pipeline")
    p.decode_event(pipeline_error)


def test_every_realtime_event_has_an_example() -> None:
    """Every client event type decodes from its example; every typed server event has an example with its fields."""
    docs = examples(REALTIME_DOC)
    client = [m for m in docs if m["type"] in rp.CLIENT_TYPES]
    assert {m["type"] for m in client} == set(rp.CLIENT_TYPES)
    for m in client:
        rp.decode_client_event(json.dumps(m))
    by_type: dict[str, list[dict[str, Any]]] = {}
    for m in docs:
        by_type.setdefault(m["type"], []).append(m)
    for cls in rp.SERVER_EVENTS:
        kind = cls.__dataclass_fields__["type"].default
        assert kind in by_type, f"no example of server event {kind}"
        fields = {"type", "event_id"} | {f.name for f in dataclasses.fields(cls)}
        assert any(set(m) == fields for m in by_type[kind]), (kind, fields)
    error = next(m for m in by_type["error"] if "error" in m)
    assert set(error["error"]) == {f.name for f in dataclasses.fields(rp.ErrorDetail)}


def test_realtime_examples_parse_strictly_into_the_sdk_models() -> None:
    """Every Realtime example parses into the installed openai SDK's model of its type (GA, or beta for the beta
    shapes) with no field the SDK does not declare."""
    from openai.types.beta.realtime import realtime_client_event as beta_client
    from pydantic import TypeAdapter

    from tests.server.test_conformance import GA_CLIENT, _event_types, strict

    beta_clients = _event_types(beta_client.RealtimeClientEvent)
    for m in examples(REALTIME_DOC):
        beta = m["type"] == "conversation.created" or "modalities" in m.get("session", {})
        if m["type"] in rp.CLIENT_TYPES:
            models = beta_clients if beta else GA_CLIENT
            TypeAdapter(models[m["type"]]).validate_python(m)
        else:
            strict(m, beta)


def test_the_conformance_table_names_every_sdk_event_type() -> None:
    """docs/protocol.md's GA conformance table has a row for each client and server event type of the SDK."""
    from tests.server.test_conformance import EXCEPTIONS, GA_CLIENT, GA_SERVER

    table = REALTIME_DOC.split("### Conformance with the GA protocol")[1]
    rows = dict(re.findall(r"^\| `([a-z_.]+)` \| (?:client|server) \| ([a-z ,]+) \|", table, re.M))
    assert set(rows) == set(GA_CLIENT) | set(GA_SERVER)
    assert {t for t, status in rows.items() if status != "supported"} == set(EXCEPTIONS)


def test_the_protocol_doc_names_exactly_the_live_keys() -> None:
    """docs/protocol.md's config.set paragraph names every key a client may change and no other (it said "the vad.*
    keys except vad.frame_ms and vad.max_utterance_s", yet two more are refused, and left out the backchannels)."""
    from assistant import config, settings

    text = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    paragraph = text[text.index("`config.set`: change the runtime-safe keys") :].split("\n\n")[0]
    named = {k for k in re.findall(r"`([a-z_]+\.[a-z_]+)`", paragraph) if k.split(".")[0] in config.SECTIONS}
    vad_keys = {f"vad.{k}" for k in config.to_dict(config.Config())["vad"]}
    excepted = set(re.findall(r"`(vad\.[a-z_]+)`", paragraph.split("except")[1].split("`llm.")[0]))
    documented = (named - excepted - {"server.port", "llm.model"}) | (vad_keys - excepted)
    assert documented == set(settings.LIVE_KEYS)
