"""Greedy TDT (token-and-duration transducer) decoding: each joint step predicts a token and how many encoder
frames to skip, so a 10 s utterance takes about as many steps as it has tokens plus pauses.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

from assistant.stt.transducer import Transducer


@dataclass(frozen=True)
class Step:
    token: int  # the blank id for a blank step
    frame: int  # encoder frame the step was taken at
    duration: int  # frames advanced after it


def greedy(model: Transducer, enc_proj: mx.array) -> list[Step]:
    """Every decoding step over projected encoder frames (T, joint_hidden); blank steps included.

    A blank never advances by 0 frames; after `max_symbols` tokens at one frame the frame is forced on by one.
    """
    a = model.args
    blank, durations = a.blank, a.durations
    n_tok = a.vocab_size + 1
    pred, state = model.start()
    steps: list[Step] = []
    t, symbols, total = 0, 0, enc_proj.shape[0]
    while t < total:
        logits = model.joint(enc_proj[t], pred[0])
        pair: list[int] = mx.stack([mx.argmax(logits[:n_tok]), mx.argmax(logits[n_tok:])]).tolist()  # type: ignore[assignment]
        token, duration = pair[0], durations[pair[1]]
        if token != blank:
            pred, state = model.advance(token, state)
            symbols += 1
        elif duration == 0:
            duration = 1
        if duration == 0 and symbols >= a.max_symbols:
            duration = 1
        if duration > 0:
            symbols = 0
        steps.append(Step(token, t, duration))
        t += duration
    return steps


def tokens(steps: list[Step], blank: int) -> list[int]:
    return [s.token for s in steps if s.token != blank]
