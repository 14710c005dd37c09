"""`assistant say` and `assistant transcribe` end to end with a tiny TTS and STT: one-line errors before any
model loads, long text spoken sentence by sentence with a warning when tts.max_frames cuts, Ctrl-C honoured
within one sentence, and the figures each command reports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from assistant import cli
from tests.tiny_engines import tiny_stt, tiny_tts

REPO = Path(__file__).resolve().parents[1]
MISSING = "/nonexistent/model"  # a model that cannot load: errors must come before loading


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"stt": tiny_stt(root / "stt"), "tts": tiny_tts(root / "tts")}


def tts_args(models: dict[str, Path], max_frames: int = 8) -> list[str]:
    return [
        "--set",
        f"tts.model={models['tts']}",
        "--set",
        "tts.voice=vivian",
        "--set",
        f"tts.max_frames={max_frames}",
        "--set",
        "tts.temperature=0",
        "--set",
        "tts.subtalker_temperature=0",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["say", "😀🎉 👍"], "nothing to say: TEXT has no speakable words (only emoji, symbols or markup)"),
        (["say", "   "], "nothing to say: TEXT is empty"),
        (["say", "caf\udce9"], "TEXT is not valid UTF-8 (character 4 cannot be read); pass UTF-8 text"),
        (["say", "hi", "--out", "{d}/"], "--out {d}/: is a folder; give a file name, e.g. {d}/speech.wav"),
        (["say", "hi", "--out", "{d}/x.m4a"], "--out {d}/x.m4a: cannot write .m4a audio"),
        (["transcribe", "{d}"], "{d} is a folder; give an audio file"),
        (["transcribe", "{d}/empty.wav"], "{d}/empty.wav holds no audio (0 samples); record or pick another file"),
        (["transcribe", "{d}/nothing.flac"], "no such file: {d}/nothing.flac"),
    ],
)
def test_bad_input_is_one_line_before_any_model_loads(
    isolated_env: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    """Emoji-only text, bad output paths and unusable input files fail in one line (exit 2) before loading."""
    d = str(isolated_env)
    sf.write(isolated_env / "empty.wav", np.zeros(0, np.float32), 16000)
    argv = [a.format(d=d) for a in args] + ["--set", f"tts.model={MISSING}", "--set", f"stt.model={MISSING}"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"assistant: error: {message.format(d=d)}") and err.count("\n") == 1


def test_say_stdin_that_is_not_utf8(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`say -` given Latin-1 bytes on stdin fails in one line naming the byte (it crashed in the tokenizer)."""
    import io

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9 au lait"), errors="surrogateescape"))
    assert cli.main(["say", "-", "--set", f"tts.model={MISSING}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("assistant: error: stdin is not UTF-8 text (byte 0xe9 at offset 3); convert it")
    assert err.count("\n") == 1


def test_long_text_is_spoken_sentence_by_sentence_and_a_cut_warns(
    models: dict[str, Path], isolated_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three sentences give three utterances (no silent cap); each cut at tts.max_frames logs a warning."""
    out = isolated_env / "long.wav"
    text = "The first sentence is here. A second one follows! And is there a third?"
    assert cli.main(["say", text, "--out", str(out), *tts_args(models, max_frames=4)]) == 0
    err = capsys.readouterr().err
    audio, rate = sf.read(out)
    assert rate == 24000 and len(audio) == 3 * 4 * 1920  # the tiny model never ends early: 4 frames each
    for n in (1, 2, 3):
        assert f"sentence {n} of 3 reached tts.max_frames = 4 (0.3 s of audio) and was cut" in err
    assert "said 3 sentence(s): 0.96 s of audio, first audio after" in err
    assert "RTF" in err and "peak memory" in err


def test_say_to_stdout_and_transcribe_from_stdin(models: dict[str, Path], isolated_env: Path) -> None:
    """`say --out -` writes a WAV to stdout that `transcribe -` reads from stdin, reporting its audio seconds."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    said = subprocess.run(
        [sys.executable, "-m", "assistant", "say", "Hello there.", "--out", "-", *tts_args(models)],
        capture_output=True,
        env=env,
        timeout=300,
        check=True,
    )
    assert said.stdout[:4] == b"RIFF"
    heard = subprocess.run(
        [sys.executable, "-m", "assistant", "transcribe", "-", "--set", f"stt.model={models['stt']}"],
        input=said.stdout,
        capture_output=True,
        env=env,
        timeout=300,
    )
    assert heard.returncode == 0, heard.stderr
    assert b"transcribed 0.64 s of audio in" in heard.stderr  # 8 frames of 80 ms


@pytest.mark.serial  # what the signal interrupts depends on how fast the sentences go: no busy neighbour
def test_ctrl_c_stops_within_one_sentence(models: dict[str, Path], isolated_env: Path) -> None:
    """SIGINT while a long text is being spoken exits with 130 before another sentence starts."""
    text = " ".join(f"This is sentence number {n}." for n in range(40))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = ["--debug", "say", text, "--out", str(isolated_env / "x.wav"), *tts_args(models, max_frames=50)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "assistant", *argv],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # as from a terminal: a suite started in the background (`scripts/test &`) ignores SIGINT, and a child
        # inherits that, so Ctrl-C would never reach it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "speaking sentence 2 of 40" in line:
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=300) == 130
    started = [ln for ln in [*lines, *rest.splitlines()] if "speaking sentence" in ln]
    assert len(started) <= 3, started  # the sentence under way when the signal came may be the 3rd at most
    assert not (isolated_env / "x.wav").exists()


def test_weights_that_do_not_match_the_config_are_one_line(
    models: dict[str, Path], isolated_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An STT checkpoint whose weights do not match its config.json fails in one line that keeps the fix at its
    end (MLX's message lists every parameter on its own line: hundreds of lines for a real model)."""
    import shutil

    import mlx.core as mx

    odd = isolated_env / "odd"
    shutil.copytree(models["stt"], odd)
    weights = mx.load(str(odd / "model.safetensors"))
    assert isinstance(weights, dict)
    weights |= {f"extra.layer{i}.weight": mx.zeros((2,)) for i in range(300)}
    mx.save_safetensors(str(odd / "model.safetensors"), weights)
    sf.write(isolated_env / "a.wav", np.zeros(16000, np.float32), 16000)
    assert cli.main(["transcribe", str(isolated_env / "a.wav"), "--set", f"stt.model={odd}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 600
    assert err.startswith(f"assistant: error: the weights in {odd} do not match its config.json: Received 300 ")
    assert err.endswith("; re-download the model\n")
