"""Reference outputs of the official qwen-tts 0.1.1 package on tiny seeded weights.

Run in the reference venv (tools/qwen3_tts_ref/setup_venv.sh):
    /work/refvenv-tts/bin/python tools/qwen3_tts_ref/make_fixtures.py
Writes tests/fixtures/qwen3_tts/{kind}.manifest.json (official key names and shapes), cases.json (inputs,
official token ids, prefill embeddings' checksums, greedy codes) and logits.npz (teacher-forced logits).
Weights are never written to git: tests rebuild them from tools/qwen3_tts_ref/tiny.py.
"""

from __future__ import annotations

import importlib.machinery
import json
import sys
import tempfile
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))


def _stand_in_torchaudio() -> None:
    """qwen_tts imports torchaudio only for its 25 Hz tokenizer; no torchaudio build exists for torch 2.13 here."""
    for name in ("torchaudio", "torchaudio.compliance", "torchaudio.compliance.kaldi"):
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
        mod.__path__ = []  # type: ignore[attr-defined]
        sys.modules[name] = mod


_stand_in_torchaudio()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from qwen_tts.core.models.configuration_qwen3_tts import Qwen3TTSConfig  # noqa: E402
from qwen_tts.core.models.modeling_qwen3_tts import Qwen3TTSForConditionalGeneration  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from tools.qwen3_tts_ref import tiny  # noqa: E402

MAX_NEW = 20
LOGIT_STEPS = 3  # teacher-forced talker logits kept per case for the first steps
PREDICTOR_CASES = {"cv_english_full": 2, "icl_stream": 2}  # predictor logits (15 x 2048 per frame) kept for

CASES = [
    # name, model kind, text, language, speaker, instruct, non_streaming, clone mode
    dict(
        name="cv_english_full",
        kind="custom_voice",
        text="Hello there, how are you today?",
        language="english",
        speaker="vivian",
        instruct="",
        non_streaming=True,
    ),
    dict(
        name="cv_auto_stream",
        kind="custom_voice",
        text="Good morning, iPhone users.",
        language="auto",
        speaker="eric",
        instruct="",
        non_streaming=False,
    ),
    dict(
        name="cv_instruct_stream",
        kind="custom_voice",
        text="It is raining again.",
        language="german",
        speaker="serena",
        instruct="Speak slowly and sadly.",
        non_streaming=False,
    ),
    dict(
        name="vd_full",
        kind="voice_design",
        text="The quick brown fox jumps.",
        language="english",
        speaker=None,
        instruct="A deep calm male voice.",
        non_streaming=True,
    ),
    dict(
        name="vd_stream",
        kind="voice_design",
        text="We will meet at noon tomorrow.",
        language="auto",
        speaker=None,
        instruct="A bright young female voice.",
        non_streaming=False,
    ),
    dict(
        name="xvec_stream",
        kind="base",
        text="Cloning with only a speaker vector.",
        language="english",
        speaker=None,
        instruct="",
        non_streaming=False,
        clone="xvector",
    ),
    dict(
        name="xvec_full",
        kind="base",
        text="Short one.",
        language="auto",
        speaker=None,
        instruct="",
        non_streaming=True,
        clone="xvector",
    ),
    dict(
        name="icl_stream",
        kind="base",
        text="In context cloning continues the reference speech naturally.",
        language="english",
        speaker=None,
        instruct="",
        non_streaming=False,
        clone="icl",
        ref_text="This is the reference.",
        ref_frames=6,
    ),
    dict(
        name="icl_stream_short",
        kind="base",
        text="Hi.",
        language="english",
        speaker=None,
        instruct="",
        non_streaming=False,
        clone="icl",
        ref_text="A longer reference transcript than the target.",
        ref_frames=5,
    ),
    dict(
        name="icl_full",
        kind="base",
        text="Non streaming in context cloning.",
        language="auto",
        speaker=None,
        instruct="",
        non_streaming=True,
        clone="icl",
        ref_text="Reference words.",
        ref_frames=7,
    ),
]
TOKENIZE_CHECKS = ["iPhone HelloWorld", "Hello there, how are you today?", "  spaced\n\ntext  ", "数字123和English混合"]


def clone_inputs(case: dict, hidden: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A seeded x-vector (the speaker encoder's output stands in) and seeded reference codes."""
    rng = np.random.default_rng([7, len(case["name"])])
    xvec = rng.standard_normal(hidden).astype(np.float32)
    codes = None
    if case.get("clone") == "icl":
        codes = rng.integers(0, 2048, size=(case["ref_frames"], 16)).astype(np.int64)
    return xvec, codes


def build(kind: str, folder: Path) -> tuple[Qwen3TTSForConditionalGeneration, dict]:
    cfg_dict = tiny.write_config(folder, kind)
    config = Qwen3TTSConfig(**cfg_dict)
    config._attn_implementation = "eager"
    config.talker_config._attn_implementation = "eager"
    config.talker_config.code_predictor_config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = Qwen3TTSForConditionalGeneration(config).eval().float()
    state = model.state_dict()
    manifest = {k: list(v.shape) for k, v in state.items() if "position_ids" not in k}
    (tiny.FIXTURES / f"{kind}.manifest.json").write_text(json.dumps(manifest, indent=0))
    w = tiny.weights(kind, manifest)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in w.items()}, strict=False)
    assert not unexpected and all("position_ids" in m for m in missing), (missing, unexpected)
    return model, cfg_dict


def tokenizer(folder: Path, fix: bool):
    tiny.tokenizer_files(folder)
    tiny.write_config(folder, "custom_voice")  # no transformers_version: the official regex patch applies (spec 1.1)
    return AutoTokenizer.from_pretrained(str(folder), fix_mistral_regex=fix)


def ids_of(tok, text: str) -> torch.Tensor:
    return torch.tensor([tok(text)["input_ids"]], dtype=torch.long)


def run_case(model, tok, case: dict, cfg: dict) -> tuple[dict, dict[str, np.ndarray]]:
    text = case["text"].strip()
    input_id = ids_of(tok, f"<|im_start|>assistant\n{text}<|im_end|>\n<|im_start|>assistant\n")
    instruct_ids = [ids_of(tok, f"<|im_start|>user\n{case['instruct']}<|im_end|>\n")] if case["instruct"] else None
    kwargs: dict = {}
    hidden = cfg["talker_config"]["hidden_size"]
    xvec, ref_codes = clone_inputs(case, hidden)
    if case.get("clone"):
        icl = case["clone"] == "icl"
        kwargs["voice_clone_prompt"] = {
            "ref_spk_embedding": [torch.from_numpy(xvec)],
            "ref_code": [torch.from_numpy(ref_codes)] if icl else None,
            "x_vector_only_mode": [not icl],
            "icl_mode": [icl],
        }
        if icl:
            kwargs["ref_ids"] = [ids_of(tok, f"<|im_start|>assistant\n{case['ref_text']}<|im_end|>\n")]
    captured: dict = {}
    orig = model.talker.generate

    def spy(**kw):
        captured.update(kw)
        return orig(**kw)

    model.talker.generate = spy
    codes_list, _ = model.generate(
        input_ids=[input_id],
        instruct_ids=instruct_ids,
        languages=[case["language"]],
        speakers=[case["speaker"]],
        non_streaming_mode=case["non_streaming"],
        max_new_tokens=MAX_NEW,
        do_sample=False,
        subtalker_dosample=False,
        **kwargs,
    )
    model.talker.generate = orig
    codes = codes_list[0]
    prefill = captured["inputs_embeds"][0]
    trailing = captured["trailing_text_hidden"][0]
    arrays = {
        f"{case['name']}.prefill": prefill.numpy(),
        f"{case['name']}.trailing": trailing.numpy(),
    }
    arrays.update(teacher_forced(model, case["name"], prefill, trailing, captured["tts_pad_embed"][0, 0], codes))
    out = dict(case)
    out["input_ids"] = input_id[0].tolist()
    out["instruct_ids"] = instruct_ids[0][0].tolist() if instruct_ids else None
    if case.get("clone"):
        out["xvector"] = xvec.tolist()
        out["ref_codes"] = ref_codes.tolist() if ref_codes is not None else None
        out["ref_ids"] = kwargs["ref_ids"][0][0].tolist() if "ref_ids" in kwargs else None
    out["codes"] = codes.tolist()
    out["max_new_tokens"] = MAX_NEW
    return out, arrays


@torch.no_grad()
def teacher_forced(model, name, prefill, trailing, pad, codes) -> dict[str, np.ndarray]:
    """Talker logits at the last prefill position and after each of the first frames, and predictor logits."""
    talker = model.talker
    cp = talker.code_predictor
    steps = min(LOGIT_STEPS, len(codes))
    seq = [prefill]
    for k in range(steps):
        frame = codes[k]
        e = talker.get_input_embeddings()(frame[:1])
        for g in range(1, 16):
            e = e + cp.get_input_embeddings()[g - 1](frame[g : g + 1])
        t = trailing[k] if k < trailing.shape[0] else pad
        seq.append(e + t)
    x = torch.cat(seq, dim=0)[None]
    out = talker.model(inputs_embeds=x, use_cache=False)
    h = out.last_hidden_state[0]
    lp = prefill.shape[0]
    talker_logits = talker.codec_head(h[lp - 1 : lp + steps]).numpy()  # [steps+1, 3072]
    pred = []
    for k in range(PREDICTOR_CASES.get(name, 0)):
        frame = codes[k]
        past = h[lp - 1 + k][None]
        embs = [past, talker.get_input_embeddings()(frame[:1])]
        embs += [cp.get_input_embeddings()[g - 1](frame[g : g + 1]) for g in range(1, 15)]
        z = cp.small_to_mtp_projection(torch.cat(embs, dim=0))[None]
        hh = cp.model(inputs_embeds=z, use_cache=False).last_hidden_state[0]
        pred.append(torch.stack([cp.lm_head[g](hh[g + 1]) for g in range(15)]).numpy())
    out_arrays = {f"{name}.talker_logits": talker_logits}
    if pred:
        out_arrays[f"{name}.predictor_logits"] = np.stack(pred)
    return out_arrays


def main() -> None:
    tiny.FIXTURES.mkdir(parents=True, exist_ok=True)
    results, arrays = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tok = tokenizer(Path(tmp) / "tok_fix", fix=True)
        plain = tokenizer(Path(tmp) / "tok_plain", fix=False)
        toks = [{"text": t, "fixed": tok(t)["input_ids"], "plain": plain(t)["input_ids"]} for t in TOKENIZE_CHECKS]
        assert toks[0]["fixed"] != toks[0]["plain"], "the fix_mistral_regex case must differ"
        models = {}
        for case in CASES:
            kind = case["kind"]
            if kind not in models:
                models[kind] = build(kind, Path(tmp) / kind)
            model, cfg = models[kind]
            res, arr = run_case(model, tok, case, cfg)
            print(f"{case['name']}: {len(res['codes'])} frames, prefill {arr[case['name'] + '.prefill'].shape}")
            results.append(res)
            arrays.update(arr)
    meta = {"qwen_tts": "0.1.1", "torch": torch.__version__, "transformers": __import__("transformers").__version__}
    (tiny.FIXTURES / "cases.json").write_text(
        json.dumps({"meta": meta, "tokenize": toks, "cases": results}, ensure_ascii=False)
    )
    np.savez_compressed(tiny.FIXTURES / "reference.npz", **{k: v.astype(np.float32) for k, v in arrays.items()})


if __name__ == "__main__":
    main()
