"""session.update values the SDKs send by default that our VAD cannot honour: the rest of the update is applied
and session.updated reports what is in effect; truly invalid values are still errors."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from assistant.config import Config
from assistant.policies import realtime_turns
from assistant.server import realtime_protocol as rp
from assistant.server.realtime import RealtimeConversation
from tests.server.fakes import FakeBackend, FakeSession
from tests.server.helpers import TOKEN, client, recv, running, until

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _update(session: dict[str, Any]) -> dict[str, Any]:
    async with running() as (server, _, _), client(server, "/v1/realtime", additional_headers=AUTH) as ws:
        await until(ws, "session.created")
        await ws.send(json.dumps({"type": "session.update", "session": session}))
        return await recv(ws)


def test_sdk_default_threshold_and_noise_reduction_keep_the_rest_of_the_update() -> None:
    """threshold 0.4, prefix_padding_ms 200 and near_field noise reduction (SDK defaults) no longer refuse the
    update: the instructions apply and session.updated reports the VAD values actually in effect."""
    detection = {"type": "server_vad", "threshold": 0.4, "prefix_padding_ms": 200, "silence_duration_ms": 700}
    inp = {"turn_detection": detection, "noise_reduction": {"type": "near_field"}}
    got = asyncio.run(_update({"instructions": "Be brief.", "audio": {"input": inp}}))
    assert got["type"] == "session.updated", got
    assert got["session"]["instructions"] == "Be brief."
    effective = got["session"]["audio"]["input"]
    assert effective["turn_detection"]["silence_duration_ms"] == 700
    # 0.4 picks webrtcvad aggressiveness 1 (of 0-3), reported as its quarter; the padding is vad.preroll_ms's
    assert (effective["turn_detection"]["threshold"], effective["turn_detection"]["prefix_padding_ms"]) == (0.25, 300)
    assert effective["noise_reduction"] is None


def test_beta_noise_reduction_field_is_taken() -> None:
    """A beta client's `input_audio_noise_reduction: {"type": "far_field"}` is accepted and reported as null."""
    got = asyncio.run(_update({"instructions": "Hi.", "input_audio_noise_reduction": {"type": "far_field"}}))
    assert got["type"] == "session.updated", got
    assert got["session"]["instructions"] == "Hi."


@pytest.mark.parametrize(
    ("session", "message"),
    [
        ({"turn_detection": {"type": "server_vad", "threshold": 1.5}}, "a number from 0.0 to 1.0"),
        ({"turn_detection": {"type": "server_vad", "threshold": "high"}}, "a number from 0.0 to 1.0"),
        ({"turn_detection": {"type": "server_vad", "prefix_padding_ms": -5}}, "an integer >= 0"),
        ({"audio": {"input": {"noise_reduction": {"type": "studio"}}}}, '{"type": "near_field"}'),
    ],
)
def test_invalid_vad_values_are_still_errors(session: dict[str, Any], message: str) -> None:
    """A threshold out of 0-1, a padding below 0 or an unknown noise reduction type is an error naming the fix."""
    got = asyncio.run(_update(session))
    assert got["type"] == "error" and message in got["error"]["message"], got


def test_a_threshold_sets_the_session_vad_aggressiveness_and_is_reported_as_in_effect() -> None:
    """threshold maps to webrtcvad aggressiveness in quarters (0.8 -> 3); a later server_vad without a threshold
    keeps that VAD and reports 0.75, not a default that is not in effect."""

    async def body() -> tuple[list[dict[str, Any]], list[int | None]]:
        async with running() as (server, _, backend), client(server, "/v1/realtime", additional_headers=AUTH) as ws:
            await until(ws, "session.created")
            got, levels = [], []
            for detection in ({"type": "server_vad", "threshold": 0.8}, {"type": "server_vad"}):
                await ws.send(json.dumps({"type": "session.update", "session": {"turn_detection": detection}}))
                got.append((await recv(ws))["session"]["audio"]["input"]["turn_detection"])
                levels.append(backend.sessions[-1].vad_level)
            return got, levels

    got, levels = asyncio.run(body())
    assert [d["threshold"] for d in got] == [0.75, 0.75]
    assert levels == [3, 3]


def test_the_session_vad_takes_the_threshold_level() -> None:
    """The session's config gets the threshold's aggressiveness (its VAD is rebuilt from it); None keeps the
    configured one."""
    cfg = Config()
    changed, _, _ = realtime_turns(cfg, 600, True, True, None, None, vad_level=3)
    assert (changed.vad.aggressiveness, changed.vad.hangover_ms) == (3, 600)
    kept, _, _ = realtime_turns(cfg, 600, True, True, None, None)
    assert kept.vad.aggressiveness == cfg.vad.aggressiveness


def test_a_session_reports_the_daemons_own_vad_level_and_preroll() -> None:
    """Until a threshold is sent, session.created reports vad.aggressiveness's quarter and vad.preroll_ms as
    threshold and prefix_padding_ms (it said 0.5 and 300 whatever the daemon ran), and the session VAD keeps them."""
    session = FakeSession(FakeBackend())
    conv = RealtimeConversation(session, "default", "Be brief.", vad=(3, 150))
    (created,) = [e for e in conv.start() if isinstance(e, rp.SessionCreated)]
    detection = created.session["audio"]["input"]["turn_detection"]  # type: ignore[index]
    assert (detection["threshold"], detection["prefix_padding_ms"]) == (0.75, 150)
    assert session.vad_level == 3
