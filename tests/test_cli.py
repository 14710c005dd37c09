"""The `assistant` command: help everywhere, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from assistant import cli, config
from assistant.errors import AssistantError, ConfigError

SUBCOMMANDS = ["run", "devices", "pull", "say", "voices", "transcribe", "chat", "ctl", "wyoming", "doctor"]


def run(args: list[str], env_extra: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **env_extra}
    return subprocess.run(
        [sys.executable, "-m", "assistant", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def no_sound_env(root: Path) -> dict[str, str]:
    """Offline, no user config, and no PulseAudio to reach (PULSE_SERVER points at nothing)."""
    return {
        "XDG_CONFIG_HOME": str(root / "xdg"),
        "HOME": str(root / "home"),
        "HF_HOME": str(root / "hf"),
        "HF_HUB_OFFLINE": "1",
        "PULSE_SERVER": "unix:" + str(root / "no-pulse"),
        "ASSISTANT_CONFIG": "",
    }


@pytest.mark.parametrize("sub", [None, *SUBCOMMANDS])
def test_help(sub: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    """`assistant --help` and every subcommand's --help print usage and exit 0."""
    with pytest.raises(SystemExit) as e:
        cli.main([*([sub] if sub else []), "--help"])
    assert e.value.code == 0
    assert "usage: assistant" in capsys.readouterr().out


def test_python_m_help(tmp_path: Path) -> None:
    """`python -m assistant --help` is the same command."""
    out = run(["--help"], no_sound_env(tmp_path))
    assert out.returncode == 0 and "usage: assistant" in out.stdout
    for sub in SUBCOMMANDS:
        assert sub in out.stdout


def test_run_without_models_or_devices_fails_fast(tmp_path: Path) -> None:
    """`assistant run` with nothing cached and no network exits non-zero within 5 s with one line, no traceback."""
    start = time.monotonic()
    out = run(["run"], no_sound_env(tmp_path))
    assert time.monotonic() - start < 5
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert lines == [
        "assistant: error: STT model `mlx-community/parakeet-tdt-0.6b-v3` is not downloaded; "
        "run `assistant pull` to fetch it"
    ]


def test_bad_config_is_one_line(tmp_path: Path) -> None:
    """A config error prints one line naming the key and exits 78 (EX_CONFIG, which the service unit does not
    restart on); --debug adds the traceback."""
    env = no_sound_env(tmp_path)
    out = run(["--set", "vad.hang_ms=3", "doctor"], env)
    assert out.returncode == 78
    assert out.stderr.strip() == (
        "assistant: error: --set vad.hang_ms=3: unknown key `vad.hang_ms`; did you mean `vad.hangover_ms`?"
    )
    out = run(["doctor", "--set", "vad.hang_ms=3", "--debug"], env)
    assert "Traceback" in out.stderr


def test_doctor_lists_problems_with_fixes(tmp_path: Path) -> None:
    """`assistant doctor` exits non-zero and lists each problem (here: models not downloaded) with its fix."""
    out = run(["doctor"], no_sound_env(tmp_path))
    assert out.returncode == 1
    assert (
        "FAIL  LLM mlx-community/gemma-4-e4b-it-4bit: LLM `mlx-community/gemma-4-e4b-it-4bit` is not downloaded; "
        "run `assistant pull` to fetch it" in out.stdout
    )
    assert "problem(s)" in out.stdout


def test_pull_offline_names_missing_model(tmp_path: Path) -> None:
    """`assistant pull` with HF_HUB_OFFLINE=1 and an empty cache names each missing model (STT, LLM, TTS,
    end of turn) and exits 1."""
    out = run(["pull"], no_sound_env(tmp_path))
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert lines[0] == (
        "FAILED STT model `mlx-community/parakeet-tdt-0.6b-v3` is not in the "
        "cache and HF_HUB_OFFLINE is set; unset HF_HUB_OFFLINE to download it"
    )
    assert len(lines) == 5 and lines[-1].startswith("0 of 4 model(s) ready; failed: STT model ")


def test_local_model_folder_missing(tmp_path: Path) -> None:
    """A local model path that does not exist is named in the error."""
    out = run(["run", "--set", f"stt.model='{tmp_path}/nowhere'"], no_sound_env(tmp_path))
    assert out.returncode == 2
    assert (
        out.stderr.strip() == f"assistant: error: STT model folder not found: {tmp_path}/nowhere; "
        "check the path in config.toml"
    )


def empty_models(root: Path) -> list[str]:
    """--set options naming existing but empty model folders (they pass the pre-flight, then fail to load)."""
    out = []
    for key in ("stt.model", "llm.model", "tts.model", "endofturn.model"):
        folder = root / "models" / key.split(".")[0]
        folder.mkdir(parents=True)
        out += ["--set", f"{key}='{folder}'"]
    return out


def test_run_without_the_end_of_turn_model_names_assistant_pull(tmp_path: Path) -> None:
    """With the default Smart Turn detector and its model not downloaded, `assistant run` fails in one line
    naming `assistant pull`, as for every other model."""
    models = empty_models(tmp_path)[:-2]  # the STT, LLM and TTS folders; the end-of-turn model from the hub
    out = run(["run", *models, "--set", "server.enabled=false"], no_sound_env(tmp_path))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "assistant: error: end-of-turn model `pipecat-ai/smart-turn-v3` is not downloaded; "
        "run `assistant pull` to fetch it"
    ]


def test_run_without_devices_and_server_off_fails_fast(tmp_path: Path) -> None:
    """With no sound card and the server off, `assistant run` exits non-zero within 5 s naming the device."""
    start = time.monotonic()
    out = run(["run", *empty_models(tmp_path), "--set", "server.enabled=false"], no_sound_env(tmp_path))
    assert time.monotonic() - start < 5
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "assistant: error: no audio input device found; connect a microphone (or start the sound server), "
        "then check `assistant devices`"
    ]


def test_run_without_devices_goes_headless_when_the_server_is_on(tmp_path: Path) -> None:
    """With no sound card and the server on, one warning line says it runs headless, then it goes on to load."""
    out = run(["run", *empty_models(tmp_path), "--set", "server.port=0"], no_sound_env(tmp_path))
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2, lines
    assert "level=warning" in lines[0] and "no audio input device found" in lines[0]
    assert "running headless: clients of the WebSocket server bring the audio" in lines[0]
    # it got past the device check: the (empty) STT folder is what stops it now
    assert lines[1].startswith("assistant: error: ") and "/models/stt has no config.json" in lines[1]
    assert out.returncode == 2


def test_run_on_a_port_in_use_fails_before_loading(tmp_path: Path) -> None:
    """A second daemon on a port already listening fails in one line before any model loads (it loaded and warmed
    every model first); a host that is not an address names server.host."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        out = run(["run", *empty_models(tmp_path), "--set", f"server.port={port}"], no_sound_env(tmp_path))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"assistant: error: server port 127.0.0.1:{port} is not free (Address already in use); stop what uses it "
        "(another `assistant run`?) or set server.port"
    ]
    out = run(["run", *empty_models(tmp_path / "b"), "--set", "server.host=999.1.1.1"], no_sound_env(tmp_path))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert out.stderr.startswith("assistant: error: server.host '999.1.1.1' is not an address of this machine")


def test_a_wyoming_port_in_use_fails_before_loading(tmp_path: Path) -> None:
    """`run` with wyoming.enabled and `assistant wyoming` on a Wyoming port already listening fail in one line before
    any model loads (they loaded every model first), and `doctor` fails that port (it checked only the server's)."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        wyoming = ["--set", f"wyoming.tts_port={port}", "--set", "wyoming.asr_port=0"]
        line = (
            f"wyoming tts port 127.0.0.1:{port} is not free (Address already in use); stop what uses it (another "
            "`assistant run` or `assistant wyoming`?) or set wyoming.tts_port"
        )
        ran = run(["run", *empty_models(tmp_path), "--set", "wyoming.enabled=true", *wyoming], no_sound_env(tmp_path))
        served = run(["wyoming", *empty_models(tmp_path / "b"), *wyoming], no_sound_env(tmp_path))
        doctor = run(["doctor", "--set", "wyoming.enabled=true", *wyoming], no_sound_env(tmp_path))
    assert ran.returncode == served.returncode == 2
    assert ran.stderr.strip().splitlines() == served.stderr.strip().splitlines() == [f"assistant: error: {line}"]
    assert f"  FAIL  wyoming ports: {line}" in doctor.stdout.splitlines()


def test_the_silence_detector_loads_no_end_of_turn_model(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With endofturn.detector = "silence" start-up logs the STT, LLM, TTS and voice loads and no end-of-turn model
    (it logged `loaded end-of-turn model model=pipecat-ai/smart-turn-v3` that it never loaded)."""
    import logging

    from tests.tiny_engines import tiny_config

    cfg = tiny_config(tmp_path)
    assert cfg.endofturn.detector == "silence"
    with caplog.at_level(logging.INFO, logger="assistant.cli"):
        engines = cli.build_engines(cfg)
    loaded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded ")]
    assert loaded == ["loaded STT model", "loaded LLM", "loaded TTS model", "loaded voice"]
    assert engines.score_turn is None


def test_voices_names_a_tts_voice_that_is_no_profile(tmp_path: Path) -> None:
    """`assistant voices` with a tts.voice that names no profile lists them, then says so and exits 2 (it marked
    none and said nothing, while `run` and `say` refuse that voice)."""
    out = run(["voices", "--set", "tts.voice=nobody"], no_sound_env(tmp_path))
    assert out.returncode == 2 and "  vivian " in out.stdout
    assert out.stderr == "tts.voice 'nobody' is none of these profiles; set tts.voice to one of them\n"
    assert run(["voices"], no_sound_env(tmp_path)).returncode == 0


def test_doctor_finds_a_truncated_model_folder(tmp_path: Path) -> None:
    """`assistant doctor` fails a model folder without weights or with a config.json that does not parse (it said
    `ok` for any folder that existed, and `run` then failed)."""
    empty, broken = tmp_path / "empty", tmp_path / "broken"
    empty.mkdir()
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"weights")
    (broken / "config.json").write_text('{"model_type": ')
    sets = ["--set", f"stt.model='{empty}'", "--set", f"tts.model='{broken}'", "--set", "endofturn.detector=silence"]
    out = run(["doctor", *sets], no_sound_env(tmp_path))
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert f"  FAIL  STT model {empty}: STT model folder {empty} holds no weights (*.safetensors); run " in out.stdout
    assert any(
        line.startswith(f"  FAIL  TTS model {broken}: {broken / 'config.json'} cannot be read (") for line in lines
    )


def test_no_command_shows_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """`assistant` alone prints the help with every command and exits 2 (it said only `the following arguments are
    required: COMMAND`)."""
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert all(f"\n    {sub} " in err for sub in SUBCOMMANDS) and "required" not in err


def test_a_voice_typo_fails_before_any_model_loads(tmp_path: Path) -> None:
    """`run` with an unknown tts.voice and `say --voice` with an unknown name fail in one line naming the profiles
    before looking for a model (they failed only after loading every model)."""
    env = no_sound_env(tmp_path)
    out = run(["run", "--set", "tts.voice=nobody"], env)
    assert out.returncode == 78
    line = out.stderr.strip()
    assert line.startswith("assistant: error: tts.voice: unknown voice 'nobody'; voices: ")
    assert "`assistant voices` lists them" in line and "default" in line and "\n" not in line
    out = run(["say", "--voice", "nobdy", "hello"], env)
    assert out.returncode == 78
    assert out.stderr.strip().startswith("assistant: error: --voice: unknown voice 'nobdy'; voices: ")


def test_doctor_checks_the_voice_tools_and_memory(tmp_path: Path) -> None:
    """`assistant doctor` fails an unknown voice, a tools.enabled name nothing declares, an unknown time zone and a
    memory database that cannot be opened, each with its fix (it said `ok`, and `run` then refused to start)."""
    env = no_sound_env(tmp_path)
    (tmp_path / "file").write_text("not a folder")
    sets = ["--set", "tts.voice=nobody", "--set", "tools.enabled=['bogus']"]
    out = run(["doctor", *sets], env)
    assert out.returncode == 1
    assert "  FAIL  voice nobody: tts.voice: unknown voice 'nobody'; voices: " in out.stdout
    assert "  FAIL  tools and memory: `tools.enabled` names `bogus`, which is neither built in" in out.stdout
    out = run(["doctor", "--set", "tools.timezone=Mars/Base"], env)
    assert "  FAIL  tools and memory: `tools.timezone` = 'Mars/Base' is not a known time zone" in out.stdout
    out = run(["doctor", "--set", f"memory.path='{tmp_path / 'file' / 'memory.sqlite3'}'"], env)
    assert "  FAIL  tools and memory: memory database " in out.stdout and "set `memory.path`" in out.stdout
    out = run(["doctor"], env)
    assert "  ok    voice default" in out.stdout and "  ok    tools and memory" in out.stdout
    checks = [line for line in out.stdout.splitlines() if line.startswith(("  ok ", "  FAIL "))]
    assert checks and all(line[6:8] == "  " and line[8] != " " for line in checks), checks  # names in one column


def test_bad_voice_aliases_and_tls_files_fail_before_any_model_loads(tmp_path: Path) -> None:
    """A server.voice_aliases entry without `=` and a TLS certificate that is not there fail `run` in one line before
    the models are looked for, and doctor lists them (the server read them only after every model had loaded)."""
    env = no_sound_env(tmp_path)
    out = run(["run", "--set", "server.voice_aliases=['alloy']"], env)
    assert out.returncode == 78
    assert out.stderr.strip() == (
        "assistant: error: --set server.voice_aliases=['alloy']: `server.voice_aliases` entry 'alloy' is not "
        '"name=profile"; write e.g. "alloy=vivian"'
    )
    tls = ["--set", f"server.tls_cert='{tmp_path / 'no.pem'}'", "--set", f"server.tls_key='{tmp_path / 'no.key'}'"]
    out = run(["run", *tls], env)
    assert out.returncode == 78 and out.stderr.startswith("assistant: error: cannot load server.tls_cert ")
    out = run(["doctor", *tls], env)
    assert "  FAIL  server settings: cannot load server.tls_cert " in out.stdout


def test_doctor_finds_truncated_weights_a_missing_shard_and_a_missing_part(tmp_path: Path) -> None:
    """`doctor` fails a weights file cut short, a shard the index names that is missing and a sub-model folder
    (the TTS speech tokenizer) without weights, naming the file (it said `ok`; `run` failed loading)."""
    import mlx.core as mx

    whole = tmp_path / "whole"
    whole.mkdir()
    (whole / "config.json").write_text("{}")
    (whole / "tokenizer.json").write_text("{}")
    mx.save_safetensors(str(whole / "model.safetensors"), {"w": mx.zeros((64, 64))})
    cli._check_model(str(whole), "LLM")  # a whole folder passes

    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(AssistantError, match=r"safetensors is cut short \(\d+ of \d+ bytes\); run `assistant pull`"):
        cli._check_model(str(cut), "LLM")

    sharded = tmp_path / "sharded"
    shutil.copytree(whole, sharded)
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"w": "model-00001-of-00002.safetensors", "v": "model-00002-of-00002.safetensors"}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(AssistantError, match=r"model-00002-of-00002\.safetensors, named in .* is missing"):
        cli._check_model(str(sharded), "LLM")

    tts = tmp_path / "tts"
    shutil.copytree(whole, tts)
    (tts / "speech_tokenizer").mkdir()
    (tts / "speech_tokenizer" / "config.json").write_text("{}")
    with pytest.raises(AssistantError, match=r"speech_tokenizer holds no weights"):
        cli._check_model(str(tts), "TTS model")


def test_set_before_and_after_the_command_both_apply(isolated_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`assistant --set A voices --set B` applies A and B (the --set list after the command replaced the one before
    it, silently dropping A)."""
    assert cli.main(["--set", "tts.voice=nobody", "voices", "--set", "logging.level=info"]) == 2
    assert capsys.readouterr().err == "tts.voice 'nobody' is none of these profiles; set tts.voice to one of them\n"
    assert cli.main(["--set", "tts.voice=nobody", "--set", "tts.voice=vivian", "voices"]) == 0
    assert cli.main(["--set", "tts.voice=nobody", "voices", "--set", "tts.voice=vivian"]) == 0  # the later one wins


def test_doctor_passes_the_devices_of_a_headless_daemon(tmp_path: Path) -> None:
    """Without a sound card and with the server on (where `run` goes headless), `doctor` reports the missing
    microphone and speaker as headless mode, not as problems (it failed them, so a server box never passed); with
    the server off, or a device named, they are still problems."""
    env = no_sound_env(tmp_path)
    out = run(["doctor"], env)
    for device in ("microphone", "speaker"):
        line = f"  ok    {device}: none, so `assistant run` runs headless (WebSocket clients bring the audio)"
        assert line in out.stdout.splitlines()
    out = run(["doctor", "--set", "server.enabled=false"], env)
    assert "  FAIL  microphone: no audio input device found; connect a microphone" in out.stdout
    out = run(["doctor", "--set", "audio.output_device=USB"], env)
    assert "  FAIL  speaker: " in out.stdout and "  ok    microphone: none, so" in out.stdout


def test_one_broken_voice_profile_leaves_the_others_usable(tmp_path: Path) -> None:
    """A voices folder with one broken profile: `voices` lists the others and names the broken file and its
    problem (exit 1), `doctor` fails it, and `run` refuses only when it is the chosen voice (one bad file made
    `voices`, `run` and every voice of a running daemon fail)."""
    voices = tmp_path / "voices"
    shutil.copytree(Path(cli.__file__).parent / "voices", voices)
    (voices / "broken.toml").write_text('mode = "bogus"\n')
    env = no_sound_env(tmp_path)
    sets = ["--set", f"tts.voices_dir={voices}"]
    out = run(["voices", *sets], env)
    assert out.returncode == 1
    assert "vivian" in out.stdout and "broken.toml" not in out.stdout and "\n  broken " not in out.stdout
    problem = f"voice profile {voices / 'broken.toml'}: `mode` must be one of custom_voice, voice_design, clone, "
    assert out.stderr.startswith(f"skipped: {problem}")
    out = run(["doctor", *sets], env)
    assert f"  FAIL  voice profiles: {problem}" in out.stdout
    cfg = config.Config().replace({"tts.voices_dir": str(voices)})
    cli.check_voice(cfg.replace({"tts.voice": "vivian"}))
    with pytest.raises(ConfigError, match=re.escape(problem)):
        cli.check_voice(cfg.replace({"tts.voice": "broken"}))


def test_ctl_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    """`assistant ctl --help` lists every command ctl sends (it said only "e.g. status, say hello, events")."""
    from assistant.server import ctl

    with pytest.raises(SystemExit) as exit_:
        cli.main(["ctl", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert ctl.USAGE.removeprefix("commands: ") in text
    for word in ("status", "ask TEXT", "config.set KEY=VALUE...", "history.reset", "events"):
        assert word in text


@pytest.mark.parametrize("command", ["history", "voices"])
def test_a_command_piped_into_head_ends_quietly(tmp_path: Path, command: str) -> None:
    """`assistant history | head -n 1` (a history longer than a pipe holds) and `assistant voices | head -n 0` end
    with code 0 and nothing on stderr once head has gone (each printed a BrokenPipeError traceback, exit 1)."""
    from assistant.llm import Message
    from assistant.memory import Memory

    memory = Memory(tmp_path / "memory.sqlite3")
    for i in range(2000):  # ~400 KB of history: more than a pipe's buffer
        memory.add_turn([Message("user", f"question {i}"), Message("assistant", "an answer " * 20)])
    memory.close()
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "HF_HUB_OFFLINE": "1"}
    lines = 1 if command == "history" else 0
    proc = subprocess.run(
        f"{sys.executable} -m assistant {command} --set memory.path={tmp_path / 'memory.sqlite3'} | head -n {lines}"
        " >/dev/null; echo ${PIPESTATUS[0]} >&2",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    assert proc.stderr.strip() == "0", proc.stderr
