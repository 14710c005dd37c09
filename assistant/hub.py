"""Model locations: a Hugging Face repo id (standard cache) or a local folder.

`resolve()` never touches the network: a model that is not in the cache fails with a message naming the repo
and `assistant pull`. `pull()` downloads into the standard cache with progress bars; downloads resume.
"""

from __future__ import annotations

import os
from pathlib import Path

from assistant.errors import ModelError

# Files a model folder may need; weights in other formats are skipped on download.
ALLOW_PATTERNS = [
    "*.json",
    "*.safetensors",
    "*.txt",
    "*.model",
    "*.tiktoken",
    "*.jinja",
    "*.py",
    "*.npz",
    "**/*.json",
    "**/*.safetensors",
    "**/*.txt",
    "**/*.model",
]

# Repos that hold many exports: fetch only the file we run.
ONLY_FILES = {"pipecat-ai/smart-turn-v3": ["smart-turn-v3.2-cpu.onnx"]}


def _patterns(spec: str) -> list[str]:
    return ONLY_FILES.get(spec, ALLOW_PATTERNS)


def is_local(spec: str) -> bool:
    """A spec names a local folder when it exists, starts with '.', '/', '~', or has more than one '/'."""
    return spec.startswith((".", "/", "~")) or spec.count("/") != 1 or Path(spec).expanduser().exists()


def resolve(spec: str, what: str = "model") -> Path:
    """The local folder holding `spec`, from disk or the Hugging Face cache. Raises ModelError."""
    if not spec:
        raise ModelError(f"no {what} is configured; set it in config.toml")
    if is_local(spec):
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise ModelError(f"{what} folder not found: {path}; check the path in config.toml")
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(spec, allow_patterns=_patterns(spec), local_files_only=True))
    except LocalEntryNotFoundError as e:
        raise ModelError(f"{what} `{spec}` is not downloaded; run `assistant pull` to fetch it") from e
    except Exception as e:  # malformed repo id and the like
        raise ModelError(f"{what} `{spec}` cannot be used: {e}; check the repo id in config.toml") from e


def pull(spec: str, what: str = "model") -> Path:
    """Download `spec` into the Hugging Face cache (resumable, with progress bars) and return its folder."""
    if is_local(spec):
        return resolve(spec, what)
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        try:
            return resolve(spec, what)  # offline: only say whether it is already cached
        except ModelError as e:
            raise ModelError(
                f"{what} `{spec}` is not in the cache and HF_HUB_OFFLINE is set; unset HF_HUB_OFFLINE to download it"
            ) from e
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec, allow_patterns=_patterns(spec)))
    except Exception as e:
        raise ModelError(
            f"downloading {what} `{spec}` failed: {type(e).__name__}: {e}; check the repo id and your network, "
            "then run `assistant pull` again (finished files are kept)"
        ) from e
