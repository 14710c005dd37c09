"""`assistant pull`: the plan with sizes, going on past a failed model, one-line network errors, and --verify
against the hub's hashes. The hub is never reached: a refused connection is real, the rest runs
huggingface_hub's own dry-run and checksum code over its real API objects."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import DryRunFileInfo, HfApi, constants
from huggingface_hub.hf_api import RepoFile

from assistant import hub

REPO = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_network_failure_is_one_line_per_model_and_pull_goes_on(tmp_path: Path) -> None:
    """With the hub unreachable, each remote model fails in one line naming HF_ENDPOINT, HF_TOKEN and the proxy;
    a local model is still ready and the summary counts both."""
    endpoint = f"http://127.0.0.1:{closed_port()}"
    local = tmp_path / "stt"
    local.mkdir()
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(REPO), HTTPS_PROXY="")
    args = ["--set", f"stt.model={local}", "--set", "llm.model=org/llm", "--set", "tts.model=org/tts"]
    args += ["--set", "endofturn.detector=silence"]  # no end-of-turn model to fetch
    done = subprocess.run(
        [sys.executable, "-m", "assistant", "pull", *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0] == "checking the hub for what to fetch..."
    assert lines[1] == f"STT model {local}: ready in {local}"
    for what, spec in (("LLM", "org/llm"), ("TTS model", "org/tts")):
        assert (
            f"FAILED {what} `{spec}`: cannot reach {endpoint} (ConnectError: [Errno 111] Connection refused); "
            "check the network, HF_ENDPOINT (a mirror), HF_TOKEN and HTTPS_PROXY, then run `assistant pull` again "
            "(finished files are kept)"
        ) in lines
    assert lines[-1] == "1 of 3 model(s) ready; failed: LLM org/llm, TTS model org/tts"


def test_plan_lists_files_and_sizes_then_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """pull_all prints each model's files still to fetch and their size (cached bytes apart) before downloading."""
    calls: list[tuple[str, bool]] = []

    def snapshot_download(repo_id: str, *, dry_run: bool = False, **kw: Any) -> Any:
        calls.append((repo_id, dry_run))
        if repo_id == "org/broken":
            raise RuntimeError("500 Server Error")
        if dry_run:
            return [
                DryRunFileInfo(COMMIT, 1_500_000_000, "model.safetensors", "/x", False, True),
                DryRunFileInfo(COMMIT, 2_000, "config.json", "/y", True, False),
            ]
        return f"/cache/{repo_id}"

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    said: list[str] = []
    results = hub.pull_all([("LLM", "org/llm"), ("TTS model", "org/broken")], said.append)
    assert said[1] == "LLM org/llm: 1 file(s), 1.5 GB to fetch (2.0 kB already cached)"
    assert said[2] == (
        "FAILED TTS model `org/broken`: RuntimeError: 500 Server Error; check the repo id, HF_ENDPOINT and HF_TOKEN, "
        "then retry"
    )
    assert said[3] == "LLM org/llm: ready in /cache/org/llm"
    # everything planned first; the failed plan looks in the cache (a cached model would still be ready)
    assert calls == [("org/llm", True), ("org/broken", True), ("org/broken", False), ("org/llm", False)]
    assert [r.problem is None for r in results] == [True, False]


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_verify_refetches_what_differs_or_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--verify re-fetches a weight file whose sha256 differs and a wanted file that is missing; a matching file
    and a remote file outside the download patterns (README.md) are left alone."""
    cache = tmp_path / "hub"
    storage = cache / "models--org--tiny"
    snap = storage / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(COMMIT)
    config, weights = b'{"a": 1}', b"corrupted weights"
    (snap / "config.json").write_bytes(config)
    (snap / "model.safetensors").write_bytes(weights)
    good = hashlib.sha256(b"the real weights").hexdigest()
    remote = [
        RepoFile(path="config.json", size=len(config), oid=git_blob_id(config)),
        RepoFile(path="model.safetensors", size=16, oid="f" * 40, lfs={"size": 16, "oid": good, "pointerSize": 130}),
        RepoFile(path="tokenizer.json", size=2, oid=git_blob_id(b"{}")),
        RepoFile(path="README.md", size=5, oid=git_blob_id(b"hello")),
    ]
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(HfApi, "list_repo_tree", lambda self, repo_id, **kw: iter(remote))
    fetched: list[tuple[str, str, bool]] = []

    def hf_hub_download(repo_id: str, filename: str, *, revision: str, force_download: bool) -> str:
        fetched.append((filename, revision, force_download))
        return str(snap / filename)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    lines = hub.verify("org/tiny", "TTS model")
    assert lines == ["model.safetensors: sha256 differs; fetched again", "tokenizer.json: missing; fetched again"]
    assert fetched == [("model.safetensors", COMMIT, True), ("tokenizer.json", COMMIT, True)]


def cache_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> Path:
    """A Hugging Face cache under tmp_path holding org/`name` at COMMIT (a config.json), the hub pointed at it."""
    repo = tmp_path / "hub" / f"models--org--{name}"
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return snap


def test_verify_offline_says_what_to_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--verify with HF_HUB_OFFLINE set fails in one line saying to unset it."""
    cache_snapshot(tmp_path, monkeypatch, "tiny")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.ModelError) as e:
        hub.verify("org/tiny", "LLM")
    assert str(e.value) == "LLM `org/tiny`: --verify asks the hub for its hashes; unset HF_HUB_OFFLINE"


def test_a_model_name_without_owner_is_not_called_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model spec that is neither a folder nor owner/name says so and shows a repo id (it said `folder not found`
    for what the user meant as a repo id); a missing path still names the folder."""
    from assistant.errors import ModelError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError) as e:
        hub.resolve("gemma-4-e2b-it-4bit", "LLM")
    assert str(e.value).startswith(
        "LLM `gemma-4-e2b-it-4bit` is neither a folder nor a Hugging Face repo id (owner/name, e.g. "
    )
    (tmp_path / "gemma-4-e2b-it-4bit").mkdir()
    assert hub.resolve("gemma-4-e2b-it-4bit", "LLM") == Path("gemma-4-e2b-it-4bit")
    with pytest.raises(ModelError) as e:
        hub.resolve(str(tmp_path / "a" / "b"), "LLM")
    assert str(e.value) == f"LLM folder not found: {tmp_path / 'a' / 'b'}; check the path in config.toml"


def test_a_cached_model_is_ready_when_the_hub_cannot_be_reached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline (no HF_HUB_OFFLINE) with a model in the cache, pull says it is cached and not checked, and counts
    it ready; it said FAILED and exited 1, so `scripts/run` (pull, then run, under set -e) never started."""
    snapshot = cache_snapshot(tmp_path, monkeypatch, "stt")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    down = "cannot reach https://huggingface.co (ConnectError: [Errno 101] Network is unreachable); check the network"

    def unreachable(spec: str, what: str = "model") -> hub.Plan:
        raise hub.ModelError(f"{what} `{spec}`: {down}")

    monkeypatch.setattr(hub, "plan", unreachable)
    said: list[str] = []
    results = hub.pull_all([("STT model", "org/stt"), ("LLM", "org/llm")], said.append)
    assert [(r.spec, r.path, r.problem is None) for r in results] == [
        ("org/stt", snapshot, True),
        ("org/llm", None, False),
    ]
    assert f"STT model org/stt: cached in {snapshot}, not checked for updates (STT model `org/stt`: {down})" in said
    assert f"FAILED LLM `org/llm`: {down}" in said
