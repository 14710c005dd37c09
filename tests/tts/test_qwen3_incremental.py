"""Incremental text, the per-voice prefix cache, seeded sampling and the quantized mlx-community layout."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from assistant.config import TtsConfig
from assistant.errors import InputError, ModelError
from assistant.tts.qwen3.engine import Qwen3TTS, ad_hoc_voice
from assistant.tts.qwen3.generate import generate_codes
from assistant.tts.qwen3.load import detect_layout, load_model

from .test_qwen3_parity import case_named, generator, loaded, prompt_of

STREAM_CASES = ["cv_auto_stream", "cv_instruct_stream", "vd_stream", "xvec_stream", "icl_stream", "icl_stream_short"]


@pytest.mark.parametrize("name", STREAM_CASES)
def test_incremental_text_one_token_at_a_time_equals_official_streaming(
    checkpoints: Any, reference: Any, name: str
) -> None:
    """Text pushed one token at a time (stalling in between) yields the official streaming-layout greedy codes."""
    case = case_named(reference, name)
    lm = loaded(checkpoints, case["kind"])
    gen = generator(lm, case, None)
    ids = lm.tokenizer.encode(case["text"])
    pieces = [lm.tokenizer.decode([i]) for i in ids]
    assert "".join(pieces) == case["text"]
    codes: list[list[int]] = []
    stalls = 0
    for piece in pieces:
        gen.push_text(piece)
        while True:
            frame = gen.step()
            if frame is None:
                break
            codes.append(frame.tolist())
        if gen.waiting_for_text:
            stalls += 1
    gen.end_text()
    codes += [f.tolist() for f in generate_codes(gen)]
    assert codes == case["codes"]
    assert stalls > 0  # it waited for text instead of padding mid-sentence


def engine(checkpoints: Any, kind: str, **tts: Any) -> Qwen3TTS:
    return Qwen3TTS(loaded(checkpoints, kind), TtsConfig(**tts))


def test_prefix_cache_reused_and_unchanged(checkpoints: Any, reference: Any) -> None:
    """A voice's prefix KV is computed once; two utterances from the cached prefix equal the official codes."""
    case = case_named(reference, "cv_auto_stream")
    tts = engine(checkpoints, "custom_voice", temperature=0.0, subtalker_temperature=0.0, max_frames=19)
    voice = tts.use_voice(ad_hoc_voice("eric", prompt_of(case)))
    prefix = tts._prefix(voice)
    snapshot = [np.array(kv) for kv in prefix.kv]
    for _ in range(2):
        codes = [f.tolist() for f in generate_codes(tts.frames(voice, case["text"], "stream"))]
        assert codes == case["codes"]
    assert tts._prefix(voice) is prefix
    assert all(np.array_equal(a, np.array(kv)) for a, kv in zip(snapshot, prefix.kv, strict=True))


def test_seeded_sampling_is_reproducible(checkpoints: Any, reference: Any) -> None:
    """With temperature/top-k sampling, the same seed gives the same codes and another seed different ones."""
    case = case_named(reference, "vd_full")

    def run(seed: int) -> list[list[int]]:
        tts = engine(checkpoints, "voice_design", seed=seed, max_frames=8)
        voice = ad_hoc_voice("designed", prompt_of(case))
        return [f.tolist() for f in generate_codes(tts.frames(voice, case["text"]))]

    a, b, c = run(1), run(1), run(2)
    assert a == b and len(a) > 0
    assert a != c


def test_top_k_one_sampling_equals_greedy(checkpoints: Any, reference: Any) -> None:
    """Sampling at top-k 1 (talker and sub-talker) runs the on-device warp and draw yet reproduces the official
    greedy codes: the sampled path applies the same penalty, EOS and suppression rules."""
    case = case_named(reference, "cv_auto_stream")
    tts = engine(checkpoints, "custom_voice", top_k=1, subtalker_top_k=1, seed=3, max_frames=case["max_new_tokens"] - 1)
    voice = tts.use_voice(ad_hoc_voice("eric", prompt_of(case)))
    assert [f.tolist() for f in generate_codes(tts.frames(voice, case["text"], "stream"))] == case["codes"]


def test_chars_at_frame_follows_one_text_token_per_frame(checkpoints: Any, reference: Any) -> None:
    """In the streaming layout frame k was produced after k + 1 text tokens: chars_at_frame gives the end of
    token k in the pushed text (leading spaces counted), capped at the whole text."""
    case = case_named(reference, "cv_auto_stream")
    lm = loaded(checkpoints, case["kind"])
    gen = generator(lm, case, None)
    text = "  " + case["text"]
    gen.push_text(text)
    gen.end_text()
    assert gen.chars_at_frame(0) == 0  # nothing consumed before the prefill
    frames = list(generate_codes(gen))
    ids = lm.tokenizer.encode(case["text"])
    for k in range(len(frames)):
        n = min(k + 1, len(ids))
        assert gen.chars_at_frame(k) == 2 + len(lm.tokenizer.decode(ids[:n]))
    assert gen.chars_at_frame(len(ids) + 5) == len(text)


def test_unknown_speaker_and_language_list_valid_ones(checkpoints: Any, reference: Any) -> None:
    """A bad speaker or language fails with a message that lists the valid names."""
    tts = engine(checkpoints, "custom_voice")
    case = dict(case_named(reference, "cv_auto_stream"))
    with pytest.raises(InputError, match="serena"):
        tts.use_voice(ad_hoc_voice("x", prompt_of({**case, "speaker": "nobody"})))
    with pytest.raises(InputError, match="english"):
        tts.use_voice(ad_hoc_voice("x", prompt_of({**case, "language": "klingon"})))


def test_missing_and_malformed_files_name_file_and_repo(checkpoints: Any, tmp_path: Any) -> None:
    """A missing weights file or a malformed config.json fails naming the file and the repo."""
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoints("custom_voice"), folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"config\.json.*ckpt"):
        load_model(folder)
    shutil.copy(checkpoints("custom_voice") / "config.json", folder / "config.json")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"model\.safetensors.*ckpt") as missing:
        load_model(folder)
    # a local folder is named once, and `assistant pull` (which fetches Hub ids) is not the fix for it
    assert str(missing.value).count(str(folder)) == 1 and "pull" not in str(missing.value)
    (folder / "config.json").unlink()
    with pytest.raises(ModelError, match=r"config\.json is missing from the model folder"):
        load_model(folder)


def test_layout_rule_tells_official_from_mlx_community(checkpoints: Any) -> None:
    """The speaker-encoder conv layout (by config shapes, not heuristics) tells the two layouts apart."""
    official = load_model(checkpoints("base"))
    mlx = load_model(checkpoints("base", "mlx"))
    assert official.layout == "pytorch" and mlx.layout == "mlx"
    assert detect_layout({}, official.config) == "pytorch"
    w = "speaker_encoder.blocks.0.conv.weight"
    assert official.speaker_weights["blocks.0.conv.weight"].shape[1] == 128
    assert mlx.speaker_weights["blocks.0.conv.weight"].shape[2] == 128, w


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_mlx_community_layout_loads_and_generates(checkpoints: Any, reference: Any, bits: int) -> None:
    """A tiny model quantized to 4/8 bits in the mlx-community layout loads (quantized Linears) and generates."""
    import mlx.nn as nn

    lm = load_model(checkpoints("custom_voice", "mlx", bits))
    assert lm.layout == "mlx" and lm.config.quantization == {"group_size": 64, "bits": bits}
    qkv = lm.model.talker.model.layers[0].self_attn.qkv_proj  # q/k/v fused at load
    assert isinstance(qkv, nn.QuantizedLinear) and qkv.bits == bits
    assert isinstance(lm.model.talker.model.codec_embedding, nn.Embedding)
    case = case_named(reference, "cv_english_full")
    tts = Qwen3TTS(lm, TtsConfig(temperature=0.0, subtalker_temperature=0.0, max_frames=6))
    voice = ad_hoc_voice("q", prompt_of(case))
    codes = np.array([f for f in generate_codes(tts.frames(voice, case["text"]))])
    assert codes.shape == (6, 16)
    assert codes.min() >= 0 and codes.max() < 2048
    if bits == 8:  # 8-bit stays close to fp32: the first frames' first codes agree with the reference
        assert codes[0, 0] == case["codes"][0][0]


def test_instruct_dropped_for_small_custom_voice(checkpoints: Any, reference: Any) -> None:
    """As the official wrapper does, a 0.6B CustomVoice model ignores `instruct`; 1.7B prepends it."""
    import dataclasses

    from assistant.tts.qwen3.prompt import PromptBuilder

    case = case_named(reference, "cv_instruct_stream")
    lm = loaded(checkpoints, "custom_voice")
    vp, plain = prompt_of(case), prompt_of({**case, "instruct": ""})
    big = PromptBuilder(lm.model.talker, lm.config, lm.tokenizer)
    assert big.prefix(vp).shape[0] > big.prefix(plain).shape[0]
    small_cfg = dataclasses.replace(lm.config, tts_model_size="0b6")
    small = PromptBuilder(lm.model.talker, small_cfg, lm.tokenizer)
    assert np.array_equal(np.array(small.prefix(vp)), np.array(small.prefix(plain)))


def test_loads_from_repo_id_in_hf_cache(checkpoints: Any, isolated_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A repo id resolves through the standard Hugging Face cache (offline); an absent one names the repo."""
    import os
    import shutil
    from pathlib import Path

    import huggingface_hub.constants

    hub_cache = Path(os.environ["HF_HOME"]) / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))  # read at import time
    snap = hub_cache / "models--tiny--Qwen3-TTS-12Hz-Test" / "snapshots" / ("a" * 40)
    shutil.copytree(checkpoints("custom_voice"), snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("a" * 40)
    lm = load_model("tiny/Qwen3-TTS-12Hz-Test")
    assert lm.config.tts_model_type == "custom_voice" and lm.folder == snap
    with pytest.raises(ModelError, match=r"tiny/absent.*assistant pull"):
        load_model("tiny/absent")


def test_sampled_frames_take_one_row_each_of_a_noise_block(
    checkpoints: Any, reference: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sampled utterance draws its Gumbel noise once per NOISE_FRAMES frames and gives each frame its own row
    of the block; a seeded run across a block boundary repeats, another seed differs."""
    from assistant.tts.qwen3.generate import FrameGenerator, FrameKernel, PrefixState
    from assistant.tts.qwen3.prompt import PromptBuilder
    from assistant.tts.qwen3.sampling import NOISE_FRAMES, SamplingParams

    case = case_named(reference, "vd_full")
    lm = loaded(checkpoints, case["kind"])
    talker = lm.model.talker
    builder = PromptBuilder(talker, lm.config, lm.tokenizer)
    prefix = PrefixState.compute(talker, builder, prompt_of(case))
    frames = NOISE_FRAMES + 4
    blocks: list[Any] = []
    rows: list[np.ndarray] = []
    draw, call = FrameKernel.noise, FrameKernel.__call__

    def noise(self: FrameKernel, key: Any) -> Any:
        blocks.append(draw(self, key))
        return blocks[-1]

    def launch(self: FrameKernel, h: Any, seen: Any, last: Any, blocked: bool, row: Any, text: Any = None) -> Any:
        rows.append(np.array(row))
        return call(self, h, seen, last, blocked, row, text)

    monkeypatch.setattr(FrameKernel, "noise", noise)
    monkeypatch.setattr(FrameKernel, "__call__", launch)

    def run(seed: int) -> list[list[int]]:
        blocks.clear()
        rows.clear()
        p = SamplingParams(seed=seed, min_new_tokens=frames + 1)  # no EOS: every frame is sampled
        gen = FrameGenerator(talker, builder, prefix, p, frames + 1, case["text"], "full")
        return [f.tolist() for f in generate_codes(gen)]

    a = run(1)
    assert len(a) == frames and len(rows) == frames + 1 and len(blocks) == 2
    for k, row in enumerate(rows):
        assert np.array_equal(row, np.array(blocks[k // NOISE_FRAMES][0][k % NOISE_FRAMES : k % NOISE_FRAMES + 1]))
    assert len({row.tobytes() for row in rows}) == len(rows)
    assert run(1) == a and run(2) != a


def test_text_known_at_launch_or_later_gives_the_official_codes(
    checkpoints: Any, reference: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The frame kernel sums a frame's text vector into the talker's next input when the text is known at its
    launch, and the loop adds it later when it arrives after: text pushed a token at a time takes both paths and
    still yields the official streaming codes."""
    from assistant.tts.qwen3.generate import FrameGenerator

    launched: list[bool] = []
    launch = FrameGenerator._launch

    def counted(self: FrameGenerator) -> Any:
        out = launch(self)
        launched.append(out[2])
        return out

    monkeypatch.setattr(FrameGenerator, "_launch", counted)
    case = case_named(reference, "vd_stream")
    lm = loaded(checkpoints, case["kind"])
    gen = generator(lm, case, None)
    codes: list[list[int]] = []
    for i in lm.tokenizer.encode(case["text"]):
        gen.push_text(lm.tokenizer.decode([i]))
        while (frame := gen.step()) is not None:
            codes.append(frame.tolist())
    gen.end_text()
    codes += [f.tolist() for f in generate_codes(gen)]
    assert codes == case["codes"]
    assert True in launched and False in launched
