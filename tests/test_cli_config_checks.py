"""Start-up honesty on the CLI side: push-to-talk without a usable hotkey is an error with the fix, and audio
devices may be given as integer indexes, as config.toml documents."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from assistant import cli, config
from assistant.errors import ConfigError


def test_push_to_talk_without_a_hotkey_fails_at_start(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run` with pipeline.mode = "push_to_talk" and no pynput exits 2 in one line naming both fixes, before
    any model or device is opened."""
    models = isolated_env / "m"
    models.mkdir()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pynput" else real(name, *a))
    argv = ["run", "--set", "pipeline.mode=push_to_talk"]
    argv += [
        arg
        for key in ("stt.model", "llm.model", "tts.model", "endofturn.model")
        for arg in ("--set", f"{key}={models}")
    ]
    assert cli.main(argv) == 78
    assert capsys.readouterr().err == (
        'assistant: error: pipeline.mode = "push_to_talk" needs the hotkey, but push-to-talk hotkey is off: pynput '
        "is not installed; install it with pip install 'assistant[hotkey]'; or set pipeline.mode = \"both\"\n"
    )


def test_both_mode_without_a_hotkey_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """In "both" mode a missing hotkey is not fatal: the daemon warns and listens hands-free."""
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    cli.check_push_to_talk(config.Config().replace({"pipeline.mode": "both"}))


def test_device_index_as_an_integer(isolated_env: Path) -> None:
    """`input_device = 3` in config.toml (and --set) is accepted as the index "3"; a negative one is refused."""
    path = isolated_env / "c.toml"
    path.write_text('[audio]\ninput_device = 3\noutput_device = "USB"\n')
    cfg = config.load(str(path), ["audio.output_device=0"])
    assert (cfg.audio.input_device, cfg.audio.output_device) == ("3", "0")
    with pytest.raises(ConfigError) as e:
        config.load(str(path), ["audio.input_device=-1"])
    assert str(e.value) == (
        "--set audio.input_device=-1: `audio.input_device` must be a device name (or part of it) or an index >= 0 "
        "from `assistant devices`, got -1 (an integer)"
    )


def test_a_voice_that_does_not_fit_the_local_tts_model_fails_before_it_loads(tmp_path: Path) -> None:
    """A clone voice for a CustomVoice model, or a CustomVoice voice for a Base model, is a ConfigError naming the
    voices that fit, read from the model folder's config.json before any model loads; a model not on disk is left
    to its own pre-flight."""
    from tools.qwen3_tts_ref import tiny as tts_tiny

    for kind in ("custom_voice", "base"):
        tts_tiny.write_config(tmp_path / kind, kind)
    custom = config.Config().replace({"tts.model": str(tmp_path / "custom_voice"), "tts.voice": "clone"})
    with pytest.raises(ConfigError) as clone:
        cli.check_voice(custom)
    assert str(clone.value) == (
        "tts.voice: voice 'clone' (clone) does not fit the custom_voice model of tts.model; voices that do: vivian "
        "(or set tts.model to a base model)"  # default's speaker ryan is no speaker of the tiny model
    )
    base = custom.replace({"tts.model": str(tmp_path / "base")})
    with pytest.raises(
        ConfigError, match=r"^--voice: voice 'vivian' \(custom_voice\) does not fit the base model of tts.model; "
    ):
        cli.check_voice(base, "vivian")
    cli.check_voice(base)  # clone fits Base
    cli.check_voice(custom, "vivian")
    cli.check_voice(custom.replace({"tts.model": str(tmp_path / "absent")}))  # hub.resolve's own error comes later


def test_an_unusable_token_file_fails_before_the_models_load(isolated_env: Path) -> None:
    """A server.token_file that is a folder or a symbolic link fails the start-up check (so `run` fails in a
    second and `doctor` says FAIL) in one line naming the fix (`run` failed only after loading every model,
    saying `fix its permissions` of a folder; `doctor` said ok)."""
    folder = isolated_env / "tokens"
    folder.mkdir()
    cfg = config.Config().replace({"server.token_file": str(folder)})
    with pytest.raises(ConfigError) as e:
        cli.check_server_settings(cfg)
    assert str(e.value) == (
        f"the server token file {folder} is a folder; set server.token_file to a file (it is created at the "
        "first start) or set server.token"
    )
    link = isolated_env / "link"
    link.symlink_to(isolated_env / "elsewhere")
    with pytest.raises(ConfigError, match="is a symbolic link; remove it"):
        cli.check_server_settings(config.Config().replace({"server.token_file": str(link)}))
    cli.check_server_settings(config.Config().replace({"server.token_file": str(isolated_env / "new-token")}))
    assert not (isolated_env / "new-token").exists()  # a check creates nothing


def test_a_token_that_cannot_be_created_fails_before_the_models_load(isolated_env: Path) -> None:
    """With no token yet and a read-only config folder, the start-up check fails naming the folder and the fix;
    `run` found it only after loading and warming every model ("cannot write the server token")."""
    import subprocess
    import sys

    from tests.test_install import read_only

    home = isolated_env / "ro"
    home.mkdir()
    check = (
        "from assistant import cli, config; from assistant.errors import ConfigError\n"
        "try: cli.check_server_settings(config.Config().replace({'server.token_file': sys.argv[1]}))\n"
        "except ConfigError as e: print(e)"
    )
    cmd = read_only(home, [sys.executable, "-c", f"import sys\n{check}", str(home / "assistant" / "token")])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == (
        f"cannot create the server token {home / 'assistant' / 'token'}: {home} is not writable; fix its "
        "permissions, or set server.token_file to a path you can write, or server.token"
    ), out.stderr


def test_a_token_file_under_a_file_names_the_folder_not_permissions(isolated_env: Path) -> None:
    """A server.token_file whose folder path runs through a file (a config folder that is a file) fails naming
    that and the fix, not "fix its permissions", which no permission change would mend."""
    blocker = isolated_env / "file"
    blocker.write_text("x")
    cfg = config.Config().replace({"server.token_file": str(blocker / "assistant" / "token")})
    with pytest.raises(ConfigError) as e:
        cli.check_server_settings(cfg)
    assert str(e.value) == (
        f"cannot read the server token {blocker / 'assistant' / 'token'}: a part of its folder {blocker / 'assistant'} "
        "is a file; set server.token_file to a path in a folder (created at the first start), or set server.token"
    )


def test_a_voice_alias_to_no_profile_fails_the_start_up_check(isolated_env: Path) -> None:
    """A server.voice_aliases entry whose profile does not exist fails the start-up check (so `run` stops in a
    second and `doctor` says FAIL) naming the profiles; it was accepted and the alias spoke with the default voice."""
    cfg = config.Config().replace({"server.voice_aliases": ["alloy=vivian", "Echo=nobdy"]})
    with pytest.raises(ConfigError) as e:
        cli.check_server_settings(cfg)
    assert str(e.value) == (
        "server.voice_aliases entry echo=nobdy names no voice profile; use one of clone, clone_icl, default, "
        "narrator, vivian (`assistant voices` lists them), or remove the entry"
    )
    cli.check_server_settings(config.Config().replace({"server.voice_aliases": ["alloy=vivian"]}))


def test_a_voices_dir_that_is_a_file_says_so(isolated_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """tts.voices_dir naming a file fails saying it is not a folder (it said the folder "does not exist")."""
    profile = isolated_env / "vivian.toml"
    profile.write_text('name = "vivian"\n')
    assert cli.main(["voices", "--set", f"tts.voices_dir={profile}"]) == 78
    assert capsys.readouterr().err == (
        f"assistant: error: voices folder {profile} is not a folder; set tts.voices_dir or create it\n"
    )


def test_ctrl_c_while_the_models_load_exits_130_without_a_warning(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Ctrl-C while a model loads (the load cannot be stopped) exits 130 as Ctrl-C does at any other moment; it
    exited 1 after the warning "a model step did not finish", as if the daemon had failed."""
    import asyncio
    import threading

    loading, release = threading.Event(), threading.Event()

    def load(cfg: config.Config, progress: object) -> None:
        loading.set()
        release.wait(10)

    monkeypatch.setattr(cli, "build_engines", load)
    monkeypatch.setattr(cli.logging, "shutdown", lambda: None)

    def exit_now(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setattr(cli.os, "_exit", exit_now)

    async def body() -> None:
        task = asyncio.create_task(cli._run_daemon(config.Config().replace({"memory.off_the_record": True})))
        await asyncio.to_thread(loading.wait, 10)
        task.cancel()  # what asyncio.run does on SIGINT
        await task

    try:
        with pytest.raises(SystemExit) as e:  # a task's SystemExit leaves the event loop at once
            asyncio.run(body())
    finally:
        release.set()
    assert e.value.code == 130
    assert "did not finish" not in caplog.text


def test_say_to_a_file_shows_the_sentences_done_in_a_terminal(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`say --out` of a long text shows "sentence n of N" in a terminal as it goes; it was silent until the end."""
    import io
    from types import SimpleNamespace

    import numpy as np

    from assistant.tts.qwen3 import Qwen3TTS

    class Utterance:
        done, frames_emitted = False, 1

        def step(self) -> np.ndarray:
            self.done = True
            return np.zeros(2400, np.float32)  # 0.1 s

    tts = SimpleNamespace(
        sample_rate=24000, cfg=SimpleNamespace(max_frames=60), voice=lambda name: name, start=lambda v, s: Utterance()
    )
    monkeypatch.setattr(Qwen3TTS, "load", lambda cfg: tts)
    monkeypatch.setattr(cli, "check_voice", lambda cfg, name=None: None)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Terminal()
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.setattr("sys.stdin", SimpleNamespace(buffer=io.BytesIO(b"One. Two. Three.")))
    assert cli.main(["say", "-", "--out", str(isolated_env / "out.wav")]) == 0
    shown = err.getvalue()
    assert "sentence 1 of 3: 0.1 s of audio" in shown and "sentence 3 of 3: 0.3 s of audio" in shown
    assert "wrote " in shown


def test_with_log_json_the_error_line_is_json_too(isolated_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With --log-json (the service units' flag) a failure's one line is a JSON log line like every other, so
    `run --log-json | jq` shows it; it was the only plain line, and jq stopped at it."""
    import json

    assert cli.main(["--log-json", "say", ""]) == 2
    line = json.loads(capsys.readouterr().err)
    assert line["level"] == "error" and line["msg"] == "assistant: error: nothing to say: TEXT is empty"
    assert cli.main(["--log-json", "voices", "--set", "nosuch.key=1"]) == 78  # before the config loads
    assert json.loads(capsys.readouterr().err)["msg"].startswith("assistant: error: ")


def test_ctl_say_dash_reads_the_text_from_stdin(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`echo hi | assistant ctl say -` sends stdin's text, as `assistant say -` does; it sent the text "-"."""
    import io
    from types import SimpleNamespace

    from assistant.server import ctl

    sent: list[list[str]] = []
    monkeypatch.setattr(ctl, "run", lambda server, words, max_events=0: sent.append(words) or 0)
    monkeypatch.setattr("sys.stdin", SimpleNamespace(buffer=io.BytesIO("héllo there\n".encode())))
    assert cli.main(["ctl", "ask", "-"]) == 0
    assert sent == [["ask", "héllo there"]]
    assert ctl.build_message(sent[0])["text"] == "héllo there"


def test_a_binary_token_or_key_file_is_one_line(isolated_env: Path) -> None:
    """A server token file or llm.api_key_file holding bytes that are not UTF-8 fails in one line naming the file
    and the fix; run, ctl and doctor printed a UnicodeDecodeError traceback."""
    from assistant.llm_remote import read_api_key

    blob = isolated_env / "blob"
    blob.write_bytes(b"\xff\xfe\x00key")
    with pytest.raises(ConfigError, match=r"server token file .*blob is not text \(byte 0xff at offset 0\); remove"):
        cli.check_server_settings(config.Config().replace({"server.token_file": str(blob)}))
    with pytest.raises(ConfigError, match=r"llm.api_key_file .*blob is not UTF-8 text; put the key in it"):
        read_api_key(config.Config().replace({"llm.api_key_file": str(blob)}).llm, env={})
