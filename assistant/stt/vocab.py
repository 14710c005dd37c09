"""Detokenization from the SentencePiece vocabulary stored with the checkpoint (no sentencepiece at runtime).

Pieces use "▁" for a word boundary, `<0xNN>` for byte fallback; other `<...>` pieces are control tokens, and a
`<xx-XX>` language tag (Nemotron 3.5) sets the detected language instead of appearing in the text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from assistant.errors import ModelError

WORD = "▁"
_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_LANG = re.compile(r"^<([a-z]{2,3}(?:-[A-Za-z0-9]{2,4})?)>$")
_CONTROL = re.compile(r"^<[^<>]*>$")


class Vocabulary:
    def __init__(self, pieces: list[str]):
        if not pieces:
            raise ModelError("the model's vocabulary is empty; re-download the model")
        self.pieces = pieces

    def __len__(self) -> int:
        return len(self.pieces)

    def decode(self, ids: list[int]) -> tuple[str, str]:
        """(text, language tag or "") of a token sequence; unknown ids and control tokens are skipped."""
        out = bytearray()
        language = ""
        for i in ids:
            if not 0 <= i < len(self.pieces):
                continue
            piece = self.pieces[i]
            if m := _BYTE.match(piece):
                out.append(int(m.group(1), 16))
            elif m := _LANG.match(piece):
                language = m.group(1)
            elif _CONTROL.match(piece):
                continue
            else:
                out += piece.replace(WORD, " ").encode()
        return " ".join(out.decode("utf-8", errors="replace").split()), language


def load_vocabulary(cfg: dict[str, Any], folder: Path, size: int) -> Vocabulary:
    """The piece list: config.json (`joint.vocabulary` or `vocabulary`), else vocab.txt, else tokenizer.json."""
    pieces = cfg.get("vocabulary") or cfg.get("joint", {}).get("vocabulary") or cfg.get("labels")
    if not pieces and (folder / "vocab.txt").is_file():
        lines = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
        pieces = [ln.split("\t")[0].split(" ")[0] for ln in lines if ln]
    if not pieces and (folder / "tokenizer.json").is_file():
        vocab = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
        items = vocab.items() if isinstance(vocab, dict) else ((p, i) for i, (p, _) in enumerate(vocab))
        pieces = [p for p, _ in sorted(items, key=lambda kv: kv[1])]
    if not pieces:
        raise ModelError(f"no vocabulary in {folder} (config.json `vocabulary`, vocab.txt or tokenizer.json)")
    if len(pieces) != size:
        raise ModelError(f"the vocabulary has {len(pieces)} pieces but the decoder expects {size}; re-download")
    return Vocabulary([str(p) for p in pieces])
