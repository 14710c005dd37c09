"""session.update values the SDKs send by default that our VAD cannot honour: the rest of the update is applied
and session.updated reports what is in effect; truly invalid values are still errors."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

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
    assert (effective["turn_detection"]["threshold"], effective["turn_detection"]["prefix_padding_ms"]) == (0.5, 300)
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
