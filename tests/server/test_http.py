"""The HTTP endpoints on the WebSocket port, driven by the official `openai` Python SDK against a headless daemon
with tiny random-weight engines (tests/tiny_engines.py): models, speech in every format, transcription."""

from __future__ import annotations

import asyncio
import io
import json
import wave
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2 as httpx  # what this openai SDK depends on
import numpy as np
import openai
import pytest

from assistant.audio.files import decode_audio
from assistant.audio.format import CAPTURE_RATE, float32_to_int16, int16_to_float32
from assistant.config import Config
from assistant.server.ws import ControlServer
from assistant.tts.voices import resolve_voice_dir
from tests import tiny_engines
from tests.server.test_headless_e2e import TOKEN, daemon
from tests.speech import needs_espeak, say, silence


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    changes = {"pipeline.mode": "hands_free", "server.port": 0, "server.token": TOKEN}
    changes["server.voice_aliases"] = ["alloy=vivian"]
    return tiny_engines.tiny_config(tmp_path_factory.mktemp("http_models"), changes)


def against_daemon(cfg: Config, body: Callable[[ControlServer, openai.AsyncOpenAI], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        async with daemon(cfg) as (server, _):
            client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=TOKEN, max_retries=0)
            async with client:
                return await body(server, client)

    return asyncio.run(run())


def wav_bytes(x: np.ndarray, rate: int = CAPTURE_RATE) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(x.astype("<i2").tobytes())
    return buf.getvalue()


def test_models_and_health(tiny_config: Config) -> None:
    """`client.models.list()` names the loaded STT, LLM and TTS models; /health reports them, the voices, uptime, and
    of a headless daemon no devices."""

    async def body(server: ControlServer, client: openai.AsyncOpenAI) -> tuple[list[str], dict[str, Any], str]:
        models = [m.id async for m in client.models.list()]
        one = await client.models.retrieve(models[0])
        async with httpx.AsyncClient() as h:
            r = await h.get(f"http://127.0.0.1:{server.port}/health", headers={"Authorization": f"Bearer {TOKEN}"})
        return models, r.json(), one.id

    models, health, one = against_daemon(tiny_config, body)
    cfg = tiny_config
    assert models == [cfg.stt.model_id, cfg.llm.model, cfg.tts.model] and one == models[0]
    assert health["status"] == "ok" and health["uptime_s"] >= 0
    assert health["models"] == {"stt": cfg.stt.model_id, "llm": cfg.llm.model, "tts": cfg.tts.model}
    assert "vivian" in health["voices"] and health["realtime"]["limit"] == cfg.server.realtime_sessions
    # headless (no sound card; the clients bring the audio): no device is claimed (it said "default", ok)
    assert health["devices"] == {"input": None, "output": None, "ok": False}


def test_speech_in_every_format(tiny_config: Config) -> None:
    """`client.audio.speech.create` returns audio that decodes to the same length in pcm (streamed), wav (streamed),
    flac, mp3 and opus; "alloy" (an alias) and an unknown voice both speak; aac is refused naming the formats."""

    async def body(server: ControlServer, client: openai.AsyncOpenAI) -> dict[str, Any]:
        out: dict[str, Any] = {}
        pieces = 0
        async with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input="Hello there.", response_format="pcm"
        ) as resp:
            data = b""
            async for piece in resp.iter_bytes():
                data += piece
                pieces += 1
            out["pcm"] = data
        out["pieces"] = pieces
        for fmt in ("wav", "flac", "mp3", "opus"):
            voice = "no-such-voice" if fmt == "flac" else "alloy"
            r = await client.audio.speech.create(model="tts-1", voice=voice, input="Hello there.", response_format=fmt)  # type: ignore[arg-type]
            out[fmt] = r.content
        try:
            await client.audio.speech.create(model="tts-1", voice="alloy", input="Hi.", response_format="aac")
        except openai.BadRequestError as e:
            out["aac"] = e.body
        return out

    out = against_daemon(tiny_config, body)
    pcm = np.frombuffer(out["pcm"], "<i2")
    assert len(pcm) > 0 and np.abs(pcm).max() > 0, "no audio came back"
    for fmt in ("wav", "flac", "mp3", "opus"):
        x, rate = decode_audio(out[fmt], fmt)
        seconds = len(x) / rate
        print(f"{fmt}: {len(out[fmt])} bytes, {seconds:.3f} s at {rate} Hz")
        assert abs(seconds - len(pcm) / 24_000) < 0.1, fmt  # greedy tiny TTS: the same speech every time
    wav = out["wav"]
    assert wav[:4] == b"RIFF" and np.array_equal(np.frombuffer(wav[44:], "<i2"), pcm)  # streamed wav = pcm + header
    assert out["aac"]["param"] == "response_format" and "wav" in out["aac"]["message"]


@needs_espeak
def test_transcription_json_text_and_formats(tiny_config: Config) -> None:
    """`client.audio.transcriptions.create` on an espeak-ng WAV (44.1 kHz stereo, resampled by the daemon) returns
    the daemon transcriber's text of it, the same in json, text and verbose_json; a non-audio upload is a 400."""
    x = np.concatenate([silence(0.2), say("Turn on the kitchen lights please."), silence(0.3)])
    rate = 44_100
    from assistant.audio.format import resample

    y = float32_to_int16(resample(int16_to_float32(x), CAPTURE_RATE, rate))
    stereo = wav_bytes(np.repeat(y, 1), rate)

    async def body(server: ControlServer, client: openai.AsyncOpenAI) -> dict[str, Any]:
        out: dict[str, Any] = {}
        out["json"] = await client.audio.transcriptions.create(model="whisper-1", file=("q.wav", stereo))
        out["text"] = await client.audio.transcriptions.create(
            model="whisper-1", file=("q.wav", stereo), response_format="text"
        )
        out["verbose"] = await client.audio.transcriptions.create(
            model="whisper-1", file=("q.wav", stereo), response_format="verbose_json"
        )
        assert server.audio is not None
        x16, _ = decode_audio(wav_bytes(x), "x")
        out["direct"] = (await server.audio.transcribe(x16))[0]
        try:
            await client.audio.transcriptions.create(model="whisper-1", file=("notes.txt", b"not audio at all"))
        except openai.BadRequestError as e:
            out["bad"] = e.body
        return out

    out = against_daemon(tiny_config, body)
    print(f"transcript {out['json'].text!r}")
    assert out["json"].text == out["direct"] and out["direct"], "the tiny STT heard nothing"
    assert str(out["text"]).strip() == out["direct"]
    assert out["verbose"].text == out["direct"] and abs(out["verbose"].duration - len(x) / CAPTURE_RATE) < 0.01
    assert out["bad"]["param"] == "file" and "libsndfile" in out["bad"]["message"]


def test_http_follows_the_websocket_rules(tiny_config: Config) -> None:
    """Without the token the SDK gets 401 (AuthenticationError); a foreign Origin gets 403; the page's own
    origin and an unknown path answer as expected; the WebSockets still work on the same port."""

    async def body(server: ControlServer, client: openai.AsyncOpenAI) -> dict[str, Any]:
        out: dict[str, Any] = {}
        base = f"http://127.0.0.1:{server.port}"
        anonymous = openai.AsyncOpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0)
        try:
            await anonymous.models.list()
        except openai.AuthenticationError as e:
            out["401"] = e.status_code
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient() as h:
            out["403"] = (await h.get(base + "/health", headers={**auth, "Origin": "http://evil.example"})).status_code
            own = {**auth, "Origin": base}
            out["own"] = (await h.get(base + "/health", headers=own)).status_code
            out["404"] = (await h.get(base + "/nope", headers=auth)).json()
            out["page"] = (await h.get(base + "/")).status_code  # loopback: the page needs no token
        from websockets.asyncio.client import connect

        async with connect(f"ws://127.0.0.1:{server.port}/v1/control", additional_headers=auth) as ws:
            out["hello"] = json.loads(await ws.recv())["type"]
        return out

    out = against_daemon(tiny_config, body)
    assert out["401"] == 401 and out["403"] == 403 and out["own"] == 200 and out["page"] == 200
    assert "unknown path" in out["404"]["error"]["message"]
    assert out["hello"] == "hello"


def test_speech_with_a_voice_the_model_cannot_speak_blames_the_voice(tiny_config: Config) -> None:
    """`voice` = a clone profile on a CustomVoice model is a 400 whose `param` is `voice` and whose message names
    the voices that fit (it blamed `input`, the text, which was fine)."""

    async def body(server: ControlServer, client: openai.AsyncOpenAI) -> Any:
        with pytest.raises(openai.BadRequestError) as e:
            await client.audio.speech.create(model="tts-1", voice="clone", input="Hello there.")  # type: ignore[arg-type]
        return e.value.body

    error = against_daemon(tiny_config, body)
    assert error["param"] == "voice"
    assert error["message"].startswith("voice 'clone' (clone) does not fit the custom_voice model of tts.model; ")
    assert "voices that do: vivian (" in error["message"]  # default's speaker ryan is not in the tiny model


def test_a_broken_voice_profile_leaves_health_and_the_other_voices_working(
    tiny_config: Config, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A profile with a typo dropped into the voices folder of a running daemon is skipped: /health answers 200
    and speech with another voice works (/health was a 500 internal error and every speech request a 400 naming
    the broken file, which also leaked the server's path)."""
    import shutil

    voices = tmp_path_factory.mktemp("voices") / "voices"
    shutil.copytree(resolve_voice_dir(""), voices)  # the packaged profiles
    cfg = tiny_config.replace({"tts.voices_dir": str(voices)})

    async def body(server: ControlServer, client: openai.AsyncOpenAI) -> tuple[int, dict[str, Any], bytes]:
        (voices / "broken.toml").write_text('mode = "bogus"\n')
        async with httpx.AsyncClient() as h:
            r = await h.get(f"http://127.0.0.1:{server.port}/health", headers={"Authorization": f"Bearer {TOKEN}"})
        speech = await client.audio.speech.create(model="tts-1", voice="vivian", input="Hi.", response_format="wav")
        return r.status_code, r.json(), speech.content

    status, health, wav = against_daemon(cfg, body)
    assert status == 200 and "vivian" in health["voices"] and "broken" not in health["voices"]
    assert wav[:4] == b"RIFF" and len(wav) > 44


def test_health_of_a_daemon_whose_voices_folder_went_away_is_degraded_not_a_500(
    tiny_config: Config, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The voices folder removed while the daemon runs: /health answers 200 with status "degraded", no voices and
    a problem naming no server path (it was a 500 internal error, so monitors saw a broken daemon with no reason)."""
    import shutil

    voices = tmp_path_factory.mktemp("gone") / "voices"
    shutil.copytree(resolve_voice_dir(""), voices)
    cfg = tiny_config.replace({"tts.voices_dir": str(voices)})

    async def body(server: ControlServer, client: openai.AsyncOpenAI) -> tuple[int, dict[str, Any]]:
        shutil.rmtree(voices)
        async with httpx.AsyncClient() as h:
            r = await h.get(f"http://127.0.0.1:{server.port}/health", headers={"Authorization": f"Bearer {TOKEN}"})
        return r.status_code, r.json()

    status, health = against_daemon(cfg, body)
    assert status == 200 and health["status"] == "degraded" and health["voices"] == []
    assert health["problem"] == "the voice profiles cannot be read; see the log"
