"""Streaming greedy RNN-T decoding: frames arrive chunk by chunk; the prediction network's state carries over, so
tokens only grow. At one frame the decoder emits tokens until a blank or `max_symbols`, then moves on.
"""

from __future__ import annotations

import mlx.core as mx

from assistant.stt.transducer import LstmState, Transducer


class RnntDecoder:
    """Stateful greedy decoder over projected encoder frames."""

    def __init__(self, model: Transducer):
        self.model = model
        self.reset()

    def reset(self) -> None:
        self.pred, self.state = self.model.start()
        self.tokens: list[int] = []
        self.frames = 0

    @property
    def lstm_state(self) -> LstmState:
        return self.state

    def decode(self, enc_proj: mx.array) -> list[int]:
        """Consume frames (T, joint_hidden); returns the tokens they added."""
        m, blank, limit = self.model, self.model.args.blank, self.model.args.max_symbols
        new: list[int] = []
        for t in range(enc_proj.shape[0]):
            frame = enc_proj[t]
            for _ in range(limit):
                token: int = mx.argmax(m.joint(frame, self.pred[0])).tolist()  # type: ignore[assignment]
                if token == blank:
                    break
                new.append(token)
                self.pred, self.state = m.advance(token, self.state)
            self.frames += 1
        self.tokens += new
        return new
