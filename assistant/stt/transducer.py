"""The transducer parts shared by TDT and RNN-T: the LSTM prediction network and the joint network.

Attribute names equal the checkpoint keys: `decoder.prediction.embed`, `decoder.prediction.dec_rnn.lstm.N.{Wx,Wh,
bias}` (PyTorch's two LSTM biases summed), `joint.enc`, `joint.pred`, `joint.joint_net.2`. The prediction network
starts from the blank token (its embedding row is zero in NeMo checkpoints: "blank as pad").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from assistant.errors import ModelError

# (h, c) per LSTM layer, each (1, hidden)
LstmState = list[tuple[mx.array, mx.array]]


@dataclass(frozen=True)
class TransducerArgs:
    vocab_size: int  # tokens without the blank; the blank id equals vocab_size
    pred_hidden: int
    pred_rnn_layers: int
    joint_hidden: int
    encoder_hidden: int
    activation: str = "relu"
    durations: tuple[int, ...] = ()  # TDT only: frame advances predicted after the token logits
    max_symbols: int = 10  # symbols emitted at one encoder frame before it is forced to advance

    @classmethod
    def from_config(cls, cfg: dict[str, Any], encoder_hidden: int) -> TransducerArgs:
        dec, joint = cfg.get("decoder", {}), cfg.get("joint", {})
        prednet = dec.get("prednet", dec)  # NeMo nests it; mlx-audio's layout flattens it
        jointnet = joint.get("jointnet", joint)
        decoding = cfg.get("decoding", {}) or {}
        greedy = decoding.get("greedy") or {}
        durations = decoding.get("durations") or cfg.get("model_defaults", {}).get("tdt_durations") or []
        try:
            args = cls(
                vocab_size=int(dec["vocab_size"]),
                pred_hidden=int(prednet["pred_hidden"]),
                pred_rnn_layers=int(prednet.get("pred_rnn_layers", 1)),
                joint_hidden=int(jointnet["joint_hidden"]),
                encoder_hidden=int(jointnet.get("encoder_hidden", encoder_hidden)),
                activation=str(jointnet.get("activation", "relu")).lower(),
                durations=tuple(int(d) for d in durations),
                max_symbols=int(greedy.get("max_symbols") or cfg.get("max_symbols") or 10),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"config.json decoder/joint section is incomplete ({e!r}); re-download the model") from e
        if args.activation not in ("relu", "tanh", "sigmoid"):
            raise ModelError(f"joint activation `{args.activation}` is not supported (relu, tanh, sigmoid)")
        return args

    @property
    def blank(self) -> int:
        return self.vocab_size


class Lstm(nn.Module):
    """One LSTM layer (gates i, f, g, o as in PyTorch)."""

    def __init__(self, inputs: int, hidden: int):
        super().__init__()
        self.Wx = mx.zeros((4 * hidden, inputs))
        self.Wh = mx.zeros((4 * hidden, hidden))
        self.bias = mx.zeros((4 * hidden,))

    def step(self, x: mx.array, h: mx.array, c: mx.array) -> tuple[mx.array, mx.array]:
        gates = x @ self.Wx.T + h @ self.Wh.T + self.bias
        i, f, g, o = mx.split(gates, 4, axis=-1)
        c = mx.sigmoid(f) * c + mx.sigmoid(i) * mx.tanh(g)
        return mx.sigmoid(o) * mx.tanh(c), c


class LstmStack(nn.Module):
    def __init__(self, hidden: int, layers: int):
        super().__init__()
        self.lstm = [Lstm(hidden, hidden) for _ in range(layers)]


class PredictionNetwork(nn.Module):
    def __init__(self, a: TransducerArgs):
        super().__init__()
        self.hidden = a.pred_hidden
        self.prediction = {
            "embed": nn.Embedding(a.vocab_size + 1, a.pred_hidden),
            "dec_rnn": LstmStack(a.pred_hidden, a.pred_rnn_layers),
        }

    def initial_state(self) -> LstmState:
        z = mx.zeros((1, self.hidden))
        return [(z, z) for _ in self.prediction["dec_rnn"].lstm]

    def step(self, token: int, state: LstmState) -> tuple[mx.array, LstmState]:
        """Feed one token: (1, pred_hidden) output and the new state."""
        x = self.prediction["embed"](mx.array([token]))
        new: LstmState = []
        for layer, (h, c) in zip(self.prediction["dec_rnn"].lstm, state, strict=True):
            h, c = layer.step(x, h, c)
            new.append((h, c))
            x = h
        return x, new


class JointNetwork(nn.Module):
    def __init__(self, a: TransducerArgs):
        super().__init__()
        self.enc = nn.Linear(a.encoder_hidden, a.joint_hidden)
        self.pred = nn.Linear(a.pred_hidden, a.joint_hidden)
        act = {"relu": nn.ReLU(), "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid()}[a.activation]
        self.joint_net = [act, nn.Identity(), nn.Linear(a.joint_hidden, a.vocab_size + 1 + len(a.durations))]

    def __call__(self, enc_proj: mx.array, pred_proj: mx.array) -> mx.array:
        """Logits from already projected encoder frame(s) and prediction output(s) (broadcasting)."""
        x = enc_proj + pred_proj
        for layer in self.joint_net:
            x = layer(x)
        return x


class Transducer(nn.Module):
    """Prediction + joint networks with a one-step API used by the TDT and RNN-T greedy decoders."""

    def __init__(self, a: TransducerArgs):
        super().__init__()
        self.args = a
        self.decoder = PredictionNetwork(a)
        self.joint = JointNetwork(a)

    def start(self) -> tuple[mx.array, LstmState]:
        """The prediction after the start (blank) token from a zero state, projected for the joint."""
        out, state = self.decoder.step(self.args.blank, self.decoder.initial_state())
        return self.joint.pred(out), state

    def advance(self, token: int, state: LstmState) -> tuple[mx.array, LstmState]:
        out, state = self.decoder.step(token, state)
        return self.joint.pred(out), state
