"""Qwen2 byte-level BPE for the TTS text track, reproducing the official tokenization offline.

The official wrapper loads its tokenizer with `fix_mistral_regex=True`; under the transformers version it pins,
that swaps the Qwen2 split regex for Mistral's whenever the checkpoint's config.json has no
`transformers_version` or one in (4.57.2, 5.0.0) (spec 1.1). We apply the same rule, so "iPhone" becomes
i|Phone as officially.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from assistant.errors import ModelError

QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
MISTRAL_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
    r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def uses_mistral_regex(transformers_version: str | None) -> bool:
    """The official rule: patched when the version is absent, or above 4.57.2 and below 5.0.0."""
    if not transformers_version:
        return True
    v = _version(transformers_version)
    return (4, 57, 2) < v < (5, 0, 0)


class TextTokenizer:
    """encode(text) -> ids with the checkpoint's added special tokens; pre_tokens(text) for incremental text."""

    def __init__(self, folder: Path, transformers_version: str | None, repo: str = ""):
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

        where = repo or str(folder)
        vocab, merges, tok_cfg = folder / "vocab.json", folder / "merges.txt", folder / "tokenizer_config.json"
        for f in (vocab, merges, tok_cfg):
            if not f.is_file():
                raise ModelError(f"{f.name} is missing from {where}; re-download the TTS model (`assistant pull`)")
        try:
            bpe = models.BPE.from_file(str(vocab), str(merges))
            added: dict[str, Any] = json.loads(tok_cfg.read_text(encoding="utf-8")).get("added_tokens_decoder", {})
        except Exception as e:
            raise ModelError(f"the tokenizer files of {where} are malformed ({e}); re-download the TTS model") from e
        tok = Tokenizer(bpe)
        tok.normalizer = normalizers.NFC()
        pattern = MISTRAL_SPLIT if uses_mistral_regex(transformers_version) else QWEN2_SPLIT
        self.pre = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tok.pre_tokenizer = self.pre
        tok.decoder = decoders.ByteLevel()
        for id_text, spec in sorted(added.items(), key=lambda kv: int(kv[0])):
            content = spec["content"]
            tok.add_special_tokens([AddedToken(content, special=True, normalized=False)])
            if tok.token_to_id(content) != int(id_text):
                raise ModelError(f"tokenizer_config.json of {where}: {content} should be id {id_text}; re-download")
        self.tok = tok

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def encode_with_ends(self, text: str) -> tuple[list[int], list[int]]:
        """ids and, per token, the character offset in `text` where it ends."""
        enc = self.tok.encode(text, add_special_tokens=False)
        return list(enc.ids), [int(end) for _, end in enc.offsets]

    def decode(self, ids: list[int]) -> str:
        return str(self.tok.decode(ids, skip_special_tokens=False))

    def stable_prefix(self, text: str) -> int:
        """Length of the prefix of `text` whose tokens can no longer change when more text is appended.

        Every pre-token (regex piece) but the last is final: appending text can only extend or re-split the
        last one (spec 2.4 incremental text).
        """
        pieces = self.pre.pre_tokenize_str(text)
        if len(pieces) <= 1:
            return 0
        return int(pieces[-1][1][0])
