"""Soak: 500 turns through the pipeline with doubles; memory, threads and tasks do not grow."""

from __future__ import annotations

import asyncio

import pytest

from benchmarks.soak import soak


@pytest.mark.slow
def test_soak_500_turns() -> None:
    """After 500 turns resident memory is within 5% of turn 50, with no more threads or tasks."""
    out = asyncio.run(soak(500))
    print(out)
    a, b = out["after_50"], out["after_500"]
    assert b["rss_bytes"] <= a["rss_bytes"] * 1.05
    assert b["threads"] <= a["threads"]
    assert b["tasks"] <= a["tasks"]
