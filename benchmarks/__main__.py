"""The benchmark suite: every section in its own subprocess, raw JSON plus a regenerated docs/benchmarks.md.

    python -m benchmarks [--small] [--only tts,stt,llm,v2v] [--label NAME] [--out DIR]

Sections: tts (ours vs mlx-audio 0.6.2 Qwen3-TTS on one random checkpoint), stt (benchmarks/stt.py: Parakeet TDT
and Nemotron streaming, forced token counts), llm (benchmarks/llm.py: turn-N TTFT, persistent prompt cache vs
full re-prefill), v2v (benchmarks/v2v.py: the headless daemon, end of speech to first output sample). A failing
job is recorded with its error and the suite goes on. Results of a label are merged section by section into
DIR/<label>.json, so one label can be filled by several calls (e.g. `--only tts`, then `--only stt,llm,v2v`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
SECTIONS = ("tts", "stt", "llm", "v2v")
Job = tuple[str, list[str], int]  # name, argv after `python`, timeout in seconds


def tts_jobs(small: bool, cache: str, sizes: list[str]) -> list[Job]:
    base = ["-m", "benchmarks.tts_vs", "--cache", cache]
    if fuse := os.environ.get("TTS_FUSE", ""):  # gpu.sh TTS_FUSE="attention=gemv,...": ours in that layout
        base += ["--fuse", fuse]
    if small:  # real widths, 2 talker / 2 predictor layers, a few frames (the real-size codec is slow on a CPU)
        small_args = ["--frames", "3", "--reps", "2", "--layers", "2", "2", "--decoder-dim", "1088"]
        return [("tts 0.6B 4-bit", [*base, "--bits", "4", *small_args], 1800)]
    peer = ["--frames", "100", "250", "--reps", "2"]  # bf16 and 4-bit affine: side by side with mlx-audio
    alone = ["--frames", "100", "250", "--reps", "2", "--peer", "no"]  # other layouts: ours only
    out: list[Job] = []
    for s in sizes:
        out += [
            # the first job on a fresh machine also JIT-compiles MLX's CUDA kernels: 0.6B timed out at 200 s on an H100
            (f"tts {s} bf16", [*base, "--size", s, "--bits", "0", *peer], 300),
            # the same without mlx-audio loaded in the process: ours alone ran faster on the H200 (docs/benchmarks.md)
            (f"tts {s} bf16 alone", [*base, "--size", s, "--bits", "0", *peer[:-2], "--reps", "3", *alone[-2:]], 150),
            # a quantized job's first run writes its checkpoint and JIT-compiles the quantized matmuls: 120 s and 70 s
            # limits cut them on a fresh H100 (2026-12-07 17:08 UTC); the same jobs ran in 18-65 s once compiled
            (f"tts {s} 4-bit", [*base, "--size", s, "--bits", "4", *peer], 240),
        ]
        if s == "0.6B":
            out += [
                # the quantized layouts of the bf16 row's checkpoint, ours only (a short device lease affords these;
                # mxfp4 first: a part's time limit cut it when it came last)
                (f"tts {s} mxfp4", [*base, "--size", s, "--bits", "4", "--mode", "mxfp4", *alone], 150),
                (f"tts {s} 4-bit alone", [*base, "--size", s, "--bits", "4", *alone], 150),
                (f"tts {s} 8-bit", [*base, "--size", s, "--bits", "8", *alone], 150),
            ]
    return out


def jobs(section: str, small: bool, cache: str, sizes: list[str]) -> list[Job]:
    if section == "tts":
        return tts_jobs(small, cache, sizes)
    if section == "stt":
        vs = ["-m", "benchmarks.stt_vs", "--cache", cache, *(["--small", "--reps", "2"] if small else [])]
        return [
            ("stt parakeet vs mlx-audio", vs, 900 if small else 190),
            (
                "stt ours (parakeet, nemotron)",
                ["benchmarks/stt.py", *(["--small"] if small else [])],
                900 if small else 90,
            ),
        ]
    if section == "llm":
        if small:
            return [("llm small", ["-m", "benchmarks.llm", "--small", "--history", "500,2000"], 600)]
        return [("llm e2b,e4b", ["-m", "benchmarks.llm", "--sizes", "e2b,e4b"], 200)]
    if section == "v2v":
        turn = os.environ.get("SMART_TURN_DIR", "")  # the real end-of-turn model, where one was carried
        # a lost turn waits 25 s on a GPU (its default 120 s would spend a device call's whole limit on one)
        argv = ["-m", "benchmarks.v2v", *(["--small"] if small else ["--turn-timeout", "25"]), "--turns", "20"]
        return [("v2v", [*argv, *(["--smart-turn", turn] if turn else [])], 1500 if small else 400)]
    raise ValueError(section)


def parse_output(text: str) -> list[Any]:
    """One JSON document, or JSON objects one per line."""
    text = text.strip()
    if not text:
        return []
    try:
        return [json.loads(text)]
    except ValueError:
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def run_job(name: str, argv: list[str], timeout: int) -> dict[str, Any]:
    cmd = [PY, *argv]
    print(f"[bench] {name}: {shlex.join(cmd)} (limit {timeout} s)", flush=True)
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(":")}
    rec: dict[str, Any] = {"job": name, "command": shlex.join(["python", *argv])}
    try:
        p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        rec["rc"] = p.returncode
        try:
            rec["results"] = parse_output(p.stdout)
        except ValueError as e:
            rec["error"] = f"unparsable output: {e}"
            rec["stdout_tail"] = p.stdout[-2000:]
        if p.returncode != 0:
            rec["error"] = f"exit status {p.returncode}"
            rec["stderr_tail"] = p.stderr[-3000:]
    except subprocess.TimeoutExpired as e:
        rec["error"] = f"timed out after {timeout} s"
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        try:
            rec["results"] = parse_output(out)  # rows printed before the limit still count
        except ValueError:
            rec["results"] = []
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        rec["stderr_tail"] = err[-3000:]
    rec["wall_s"] = round(time.perf_counter() - t0, 1)
    status = rec.get("error", "ok")
    print(f"[bench] {name}: {status} in {rec['wall_s']} s, {len(rec.get('results', []))} result(s)", flush=True)
    return rec


def machine() -> dict[str, Any]:
    """Platform, backend (mx.default_device()) and versions, asked of a subprocess so this one stays MLX-free."""
    probe = (
        "import json, platform, mlx.core as mx\n"
        "d = {'platform': platform.platform(), 'python': platform.python_version(), 'mlx': mx.__version__,"
        " 'backend': str(mx.default_device())}\n"
        "try:\n import mlx_audio.version as v; d['mlx_audio'] = v.__version__\n"
        "except Exception as e: d['mlx_audio'] = 'absent (' + type(e).__name__ + ')'\n"
        "try:\n d['device_info'] = {k: str(v) for k, v in mx.device_info().items()}\n"
        "except Exception: pass\n"
        "print(json.dumps(d))"
    )
    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    try:
        p = subprocess.run([PY, "-c", probe], capture_output=True, text=True, timeout=120)
        info.update(json.loads(p.stdout))
    except (subprocess.SubprocessError, ValueError) as e:
        info["probe_error"] = str(e)
    try:
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if gpu.returncode == 0:
            info["gpu"] = gpu.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="CPU-sized shapes (real widths where cheap, few layers)")
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections: tts,stt,llm,v2v")
    ap.add_argument("--label", default="", help="name of the JSON file (default: cpu-small or gpu)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks", help="folder of the JSON files")
    ap.add_argument("--tts-sizes", default="0.6B,1.7B", help="TTS model sizes of the full run (0.6B, 1.7B)")
    ap.add_argument("--jobs", default="", help="comma-separated: jobs whose name has one (NAME$: exactly NAME)")
    ap.add_argument("--cache", default=os.environ.get("BENCH_CACHE", "/tmp/bench-checkpoints"), help="checkpoints")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {', '.join(bad)}; choose from {', '.join(SECTIONS)}")
    label = args.label or ("cpu-small" if args.small else "gpu")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{label}.json"
    doc: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"label": label, "sections": {}}
    doc["machine"] = machine()
    doc["small"] = args.small
    print(f"[bench] {label}: {doc['machine'].get('backend')} {doc['machine'].get('gpu', '')}", flush=True)
    command = shlex.join(["python", "-m", "benchmarks", *(argv if argv is not None else sys.argv[1:])])
    from benchmarks.report import write_markdown

    for section in only:
        t0 = time.perf_counter()
        keep = (section == "tts" or args.jobs) and not args.small  # a later call adds rows to an earlier one's
        earlier = doc["sections"].get(section, {}).get("jobs", []) if keep else []
        records: list[dict[str, Any]] = []
        wanted = [w for w in args.jobs.split(",") if w]
        for job in jobs(section, args.small, args.cache, args.tts_sizes.split(",")):
            if wanted and not any(job[0] == w[:-1] if w.endswith("$") else w in job[0] for w in wanted):
                continue
            records.append(run_job(*job))
            done = {r["job"] for r in records}  # a later call adds TTS sizes to the rows of an earlier one
            doc["sections"][section] = {
                "command": command,
                "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                "wall_s": round(time.perf_counter() - t0, 1),
                "jobs": [r for r in earlier if r["job"] not in done] + records,
            }
            path.write_text(json.dumps(doc, indent=1) + "\n")  # after every job: a later kill loses nothing
            write_markdown(args.out, args.out.parent / "benchmarks.md")
    md = write_markdown(args.out, args.out.parent / "benchmarks.md")
    print(f"[bench] wrote {path} and {md}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
