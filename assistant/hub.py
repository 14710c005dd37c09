"""Model locations: a Hugging Face repo id (standard cache) or a local folder.

`resolve()` never touches the network: a model that is not in the cache fails with a message naming the repo
and `assistant pull`. `pull()` downloads into the standard cache with progress bars; downloads resume.
`pull_all()` first lists what each model will fetch with sizes, then downloads, going on past a model that fails;
`verify_all()` re-checks the cached files against the hub's hashes and re-fetches what does not match.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
        if not path.is_dir() and "/" not in spec and not spec.startswith((".", "~")):
            raise ModelError(
                f"{what} `{spec}` is neither a folder nor a Hugging Face repo id (owner/name, e.g. "
                "mlx-community/gemma-4-e2b-it-4bit); fix it in config.toml"
            )
        if path.exists() and not path.is_dir():  # a config.json or a .safetensors named instead of its folder
            raise ModelError(f"{what} {path} is a file, not a folder; name the folder that holds the model's files")
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


# What building a model raises for a config.json value of the wrong type or range ("64" for 64, null, -1)
MALFORMED = (TypeError, ValueError, AttributeError, KeyError, IndexError)


def malformed(what: str, spec: str, e: Exception) -> ModelError:
    """One line for a model that failed to build from its config.json's values, naming the fix."""
    detail = " ".join(str(e).split())[:300]
    return ModelError(
        f"{what} `{spec}` cannot be built from its config.json ({type(e).__name__}: {detail}); a value there has "
        "the wrong type or range: re-download the model (`assistant pull`) or fix config.json"
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _chain(e: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cause: BaseException | None = e
    while cause is not None and cause not in out:
        out.append(cause)
        cause = cause.__cause__ or cause.__context__
    return out


def explain(e: BaseException, what: str, spec: str) -> str:
    """One line naming the failure of a hub request for `spec` and what to check (endpoint, token, proxies)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        DryRunError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    endpoint = constants.ENDPOINT
    # the hub's wrappers hide the error that says what went wrong (a refused connection, a 401)
    e = next((c for c in _chain(e) if not isinstance(c, DryRunError | LocalEntryNotFoundError)), e)
    detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    if isinstance(e, GatedRepoError):
        return (
            f"{what} `{spec}` is gated: accept its licence on {endpoint}/{spec}, then set HF_TOKEN "
            "(or run `hf auth login`)"
        )
    if isinstance(e, RepositoryNotFoundError):
        return (
            f"{what} `{spec}` was not found on {endpoint}; check the repo id in config.toml, or set HF_TOKEN "
            "if it is private"
        )
    if isinstance(e, HfHubHTTPError):
        return f"{what} `{spec}`: the hub at {endpoint} answered {detail}; check HF_ENDPOINT and HF_TOKEN, then retry"
    if not any(c.__name__ in ("TransportError", "OSError", "TimeoutError") for c in type(e).__mro__):
        return f"{what} `{spec}`: {type(e).__name__}: {detail}; check the repo id, HF_ENDPOINT and HF_TOKEN, then retry"
    proxies = [k for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY") if os.environ.get(k)]
    via = f" through the proxy in {proxies[0]}" if proxies else ""
    return (
        f"{what} `{spec}`: cannot reach {endpoint}{via} ({type(e).__name__}: {detail}); check the network, "
        "HF_ENDPOINT (a mirror), HF_TOKEN and HTTPS_PROXY, then run `assistant pull` again (finished files are kept)"
    )


def pull(spec: str, what: str = "model") -> Path:
    """Download `spec` into the Hugging Face cache (resumable, with progress bars) and return its folder."""
    if is_local(spec):
        return resolve(spec, what)
    if _offline():
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
        raise ModelError(explain(e, what, spec)) from e


@dataclass(frozen=True)
class Plan:
    """What pulling one model will fetch: (file, bytes) still to download, and the bytes already cached."""

    to_fetch: list[tuple[str, int]]
    cached_bytes: int

    @property
    def fetch_bytes(self) -> int:
        return sum(size for _, size in self.to_fetch)


@dataclass(frozen=True)
class PullResult:
    what: str
    spec: str
    path: Path | None
    problem: str | None  # one line when this model failed


def plan(spec: str, what: str = "model") -> Plan:
    """The files `pull(spec)` would download and their sizes (a dry run: metadata requests only). ModelError."""
    from huggingface_hub import snapshot_download

    try:
        infos: Any = snapshot_download(spec, allow_patterns=_patterns(spec), dry_run=True)
    except Exception as e:
        raise ModelError(explain(e, what, spec)) from e
    return Plan(
        [(f.filename, f.file_size or 0) for f in infos if f.will_download],
        sum(f.file_size or 0 for f in infos if not f.will_download),
    )


def size_text(n: int) -> str:
    """Bytes as a short human figure (decimal units, as the hub shows them)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def pull_all(specs: Sequence[tuple[str, str]], say: Callable[[str], None]) -> list[PullResult]:
    """List what each (what, spec) will fetch with sizes, then download each; a failure is recorded, not raised."""
    results: dict[str, PullResult] = {}
    planned: list[tuple[str, str]] = []
    remote = [(w, s) for w, s in specs if not is_local(s)]
    if remote and not _offline():
        say("checking the hub for what to fetch...")
    for what, spec in specs:
        if is_local(spec) or _offline():
            try:
                results[spec] = PullResult(what, spec, pull(spec, what), None)
                say(f"{what} {spec}: ready in {results[spec].path}")
            except ModelError as e:
                results[spec] = PullResult(what, spec, None, str(e))
                say(f"FAILED {e}")
            continue
        try:
            p = plan(spec, what)
        except ModelError as e:
            try:  # offline with the model cached: `scripts/run` (pull, then run) must still start the daemon
                cached = resolve(spec, what)
            except ModelError:
                results[spec] = PullResult(what, spec, None, str(e))
                say(f"FAILED {e}")
                continue
            results[spec] = PullResult(what, spec, cached, None)
            say(f"{what} {spec}: cached in {cached}, not checked for updates ({e})")
            continue
        say(
            f"{what} {spec}: {len(p.to_fetch)} file(s), {size_text(p.fetch_bytes)} to fetch"
            + (f" ({size_text(p.cached_bytes)} already cached)" if p.cached_bytes else "")
        )
        planned.append((what, spec))
    for what, spec in planned:
        try:
            path = pull(spec, what)
        except ModelError as e:
            results[spec] = PullResult(what, spec, None, str(e))
            say(f"FAILED {e}")
            continue
        results[spec] = PullResult(what, spec, path, None)
        say(f"{what} {spec}: ready in {path}")
    return [results[spec] for _, spec in specs if spec in results]


def verify(spec: str, what: str = "model") -> list[str]:
    """Re-check the cached files of `spec` against the hub's hashes (sha256 for LFS files, git blob ids for the
    rest); re-fetch each file that differs or is missing. Returns one line per file that was repaired."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.utils import filter_repo_objects

    resolve(spec, what)  # not cached: the ModelError says to pull first
    if _offline():
        raise ModelError(f"{what} `{spec}`: --verify asks the hub for its hashes; unset HF_HUB_OFFLINE")
    try:
        result = HfApi().verify_repo_checksums(spec)
    except Exception as e:
        raise ModelError(explain(e, what, spec)) from e
    wanted = set(filter_repo_objects(result.missing_paths, allow_patterns=_patterns(spec)))
    repairs = [(m["path"], f"{m['algorithm']} differs") for m in result.mismatches]
    repairs += [(path, "missing") for path in sorted(wanted)]
    lines = []
    for path, why in repairs:
        try:
            hf_hub_download(spec, path, revision=result.revision, force_download=True)
        except Exception as e:
            raise ModelError(explain(e, what, spec)) from e
        lines.append(f"{path}: {why}; fetched again")
    return lines


def verify_all(specs: Sequence[tuple[str, str]], say: Callable[[str], None]) -> list[PullResult]:
    """`verify` each remote (what, spec), going on past failures; local folders are only checked to exist."""
    out = []
    for what, spec in specs:
        try:
            if is_local(spec):
                path = resolve(spec, what)
                say(f"{what} {spec}: a local folder, nothing to verify against")
            else:
                repaired = verify(spec, what)
                path = resolve(spec, what)
                for line in repaired:
                    say(f"{what} {spec}: {line}")
                say(f"{what} {spec}: " + (f"{len(repaired)} file(s) repaired" if repaired else "every file matches"))
        except ModelError as e:
            out.append(PullResult(what, spec, None, str(e)))
            say(f"FAILED {e}")
            continue
        out.append(PullResult(what, spec, path, None))
    return out


def read_json_object(path: Path, name: str, fix: str) -> dict[str, Any]:
    """A model file that must hold one JSON object (a config.json): ModelError naming it as `name` and `fix` when it
    cannot be read, does not parse or holds something else."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{name} cannot be read ({e}); {fix}") from e
    if not isinstance(data, dict):
        raise ModelError(f"{name} is not a JSON object; {fix}")
    return data


def check_weights(folder: Path, fix: str) -> None:
    """The weights in `folder` look whole, read from their headers only: each .safetensors file is as long as its
    header says, each shard a `*.safetensors.index.json` names exists, and each sub-folder with a config.json (a
    TTS speech tokenizer) holds weights too. ModelError naming the file and `fix` (a download cut short)."""
    for config_json in sorted(folder.rglob("config.json")):
        part = config_json.parent
        if part != folder and not any(part.glob("*.safetensors")) and not any(part.glob("*.onnx")):
            raise ModelError(f"{part} holds no weights (*.safetensors); {fix}")
    for index in sorted(folder.rglob("*.safetensors.index.json")):
        weight_map = read_json_object(index, str(index), fix).get("weight_map")
        for shard in sorted(set(weight_map.values()) if isinstance(weight_map, dict) else ()):
            if not (index.parent / str(shard)).is_file():
                raise ModelError(f"{shard}, named in {index}, is missing; {fix}")
    for weights in sorted(folder.rglob("*.safetensors")):
        try:
            with weights.open("rb") as f:
                header_bytes = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(min(header_bytes, 100_000_000)))
            size = weights.stat().st_size
        except (OSError, ValueError) as e:
            raise ModelError(f"{weights} cannot be read ({e}); {fix}") from e
        ends = [v["data_offsets"][1] for v in header.values() if isinstance(v, dict) and "data_offsets" in v]
        wanted = 8 + header_bytes + max(ends, default=0)
        if size < wanted:
            raise ModelError(f"{weights} is cut short ({size} of {wanted} bytes); {fix}")
