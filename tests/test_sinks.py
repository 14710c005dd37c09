"""The sinks' shared operations: waiting until a sink has played a reply's audio."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from assistant.audio import sinks
from assistant.audio.sinks import ClientSink, played_out


class Stuck:
    """A sink whose playback stopped (a client that went away): its played position never moves."""

    played_samples = 100


def test_played_out_returns_when_played_or_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wait ends once the sink has played the samples, and on a sink that plays nothing for PLAYBACK_STALL_S
    it gives up instead of waiting forever."""
    monkeypatch.setattr(sinks, "PLAYBACK_STALL_S", 0.05)
    client = ClientSink(24_000)
    client.write(np.zeros(240, dtype=np.float32))  # a client's audio counts as played once sent

    async def main() -> None:
        await asyncio.wait_for(played_out(client, 240, 24_000), 1.0)
        await asyncio.wait_for(played_out(Stuck(), 1_000, 24_000), 5.0)  # type: ignore[arg-type]

    asyncio.run(main())
