"""TLS (server.tls_cert / server.tls_key) with a self-signed certificate made by the test: the openai npm
package's realtime WebSocket client (it always dials wss://) completes a voice turn, and the Python SDK reaches
the HTTPS endpoints. Node's packages come from the npm registry at set-up (tests/node/package.json)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import openai
import pytest

from assistant.audio.format import CAPTURE_RATE, float32_to_int16, int16_to_float32, resample
from assistant.config import Config
from tests import tiny_engines
from tests.server.test_headless_e2e import TOKEN, daemon
from tests.speech import needs_espeak, say, silence

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
NODE_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "assistant-tests" / "node"
WAIT_S = 240.0


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 and localhost, and its key (openssl)."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is missing: apt-get install openssl (or brew install openssl)", pytrace=False)
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def node_clients() -> Path:
    """tests/node installed (once) into a cache folder; a failure says what to install."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: apt-get install nodejs npm (or brew install node)", pytrace=False)
    NODE_CACHE.mkdir(parents=True, exist_ok=True)
    wanted = (NODE_DIR / "package.json").read_text()
    if not (NODE_CACHE / "node_modules" / "openai").is_dir() or (NODE_CACHE / "package.json").read_text() != wanted:
        (NODE_CACHE / "package.json").write_text(wanted)
        done = subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=NODE_CACHE, capture_output=True)
        if done.returncode:
            pytest.fail(
                f"npm install of tests/node/package.json failed: {done.stderr.decode()[-400:]}; check that the npm "
                "registry is reachable",
                pytrace=False,
            )
    shutil.copy(NODE_DIR / "realtime_turn.mjs", NODE_CACHE / "realtime_turn.mjs")
    return NODE_CACHE


@pytest.fixture(scope="module")
def tls_config(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Path]:
    root = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(root)
    changes = {"pipeline.mode": "hands_free", "server.port": 0, "server.token": TOKEN}
    changes |= {"server.tls_cert": str(cert), "server.tls_key": str(key)}
    return tiny_engines.tiny_config(root / "models", changes), cert


@needs_espeak
def test_node_openai_realtime_client_over_wss(tls_config: tuple[Config, Path], tmp_path: Path) -> None:
    """The openai npm package's OpenAIRealtimeWS, trusting the test's certificate, sends speech over wss:// and
    receives the transcript, reply audio and response.done (completed)."""
    cfg, cert = tls_config
    folder = node_clients()
    x = np.concatenate([silence(0.3), say("What time is it now?"), silence(1.5)])
    pcm = float32_to_int16(resample(int16_to_float32(x), CAPTURE_RATE, 24_000)).astype("<i2").tobytes()
    (tmp_path / "speech.pcm").write_bytes(pcm)

    async def body() -> tuple[int, list[dict[str, Any]], str]:
        async with daemon(cfg) as (server, _):
            proc = await asyncio.create_subprocess_exec(
                "node", str(folder / "realtime_turn.mjs"), str(server.port), TOKEN, str(tmp_path / "speech.pcm"),
                cwd=folder, env={**os.environ, "NODE_EXTRA_CA_CERTS": str(cert)},
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            async with asyncio.timeout(WAIT_S):
                out, err = await proc.communicate()
            assert proc.returncode is not None
            return proc.returncode, [json.loads(line) for line in out.decode().splitlines()], err.decode()

    code, seen, err = asyncio.run(body())
    kinds = [e["type"] for e in seen]
    print(f"node client: exit {code}, {len(seen)} events: {sorted(set(kinds))}")
    assert code == 0, err
    assert "conversation.item.input_audio_transcription.completed" in kinds
    assert any(e["type"] == "response.output_audio.delta" and e["delta"] for e in seen)
    assert seen[-1]["type"] == "response.done" and seen[-1]["response"]["status"] == "completed"


def test_https_endpoints_and_plain_http_refused(tls_config: tuple[Config, Path]) -> None:
    """With TLS on, the Python SDK lists the models over https:// (trusting the test's certificate) and a plain
    http:// request gets no answer."""
    cfg, cert = tls_config

    async def body() -> tuple[list[str], str]:
        async with daemon(cfg) as (server, _):
            trusted = ssl.create_default_context(cafile=str(cert))
            async with httpx.AsyncClient(verify=trusted) as h:
                client = openai.AsyncOpenAI(
                    base_url=f"https://127.0.0.1:{server.port}/v1", api_key=TOKEN, http_client=h, max_retries=0
                )
                models = [m.id async for m in client.models.list()]
            try:
                async with httpx.AsyncClient() as h:
                    await h.get(f"http://127.0.0.1:{server.port}/health")
                plain = "answered"
            except httpx.HTTPError as e:
                plain = type(e).__name__
            return models, plain

    models, plain = asyncio.run(body())
    assert models == [cfg.stt.model_id, cfg.llm.model, cfg.tts.model]
    assert plain != "answered"
