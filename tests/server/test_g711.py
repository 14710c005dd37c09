"""G.711 mu-law and A-law against CPython's audioop (the reference C implementation, present up to Python 3.12)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from assistant.server import g711

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    audioop = pytest.importorskip("audioop", reason="audioop (the reference) was removed in Python 3.13")

EVERY_SAMPLE = np.arange(-32768, 32768, dtype=np.int16)
EVERY_CODE = bytes(range(256))


def test_ulaw_matches_the_reference_for_every_sample_and_code() -> None:
    """mu-law encoding of all 65,536 int16 values and decoding of all 256 codes equal audioop's."""
    assert g711.ulaw_encode(EVERY_SAMPLE) == audioop.lin2ulaw(EVERY_SAMPLE.astype("<i2").tobytes(), 2)
    assert g711.ulaw_decode(EVERY_CODE).astype("<i2").tobytes() == audioop.ulaw2lin(EVERY_CODE, 2)


def test_alaw_matches_the_reference_for_every_sample_and_code() -> None:
    """A-law encoding of all 65,536 int16 values and decoding of all 256 codes equal audioop's."""
    assert g711.alaw_encode(EVERY_SAMPLE) == audioop.lin2alaw(EVERY_SAMPLE.astype("<i2").tobytes(), 2)
    assert g711.alaw_decode(EVERY_CODE).astype("<i2").tobytes() == audioop.alaw2lin(EVERY_CODE, 2)
