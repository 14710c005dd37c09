"""The benchmark harness survives failing jobs and renders what it recorded (no benchmark is run here)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.__main__ import parse_output, run_job
from benchmarks.report import render, write_markdown


def test_failing_job_is_recorded_with_its_rows_and_error() -> None:
    """A job that prints a row then exits non-zero keeps the row and records the exit status and stderr."""
    code = "import json, sys; print(json.dumps({'a': 1})); print('boom', file=sys.stderr); sys.exit(3)"
    rec = run_job("demo", ["-c", code], 60)
    assert rec["results"] == [{"a": 1}]
    assert rec["error"] == "exit status 3"
    assert "boom" in rec["stderr_tail"]


def test_timed_out_job_is_recorded() -> None:
    """A job past its limit is stopped and recorded as timed out, with the rows it printed before."""
    code = "import json, time; print(json.dumps({'b': 2}), flush=True); time.sleep(30)"
    rec = run_job("slow", ["-c", code], 2)
    assert rec["error"] == "timed out after 2 s"
    assert rec["results"] == [{"b": 2}]


def test_parse_output_accepts_a_document_or_json_lines() -> None:
    """Indented single documents (stt.py, llm.py) and one-object-per-line output (tts_vs) both parse."""
    assert parse_output(json.dumps({"x": [1, 2]}, indent=2)) == [{"x": [1, 2]}]
    assert parse_output('{"x": 1}\nprogress\n{"x": 2}\n') == [{"x": 1}, {"x": 2}]


def test_markdown_has_the_tts_ratio_and_the_errors(tmp_path: Path) -> None:
    """The TTS table shows ours, mlx-audio and their ratio from the JSON; failed jobs are listed."""
    spread = {"median": 0.5, "p10": 0.4, "p90": 0.6, "min": 0.4, "max": 0.6, "n": 2}
    row = {
        "size": "0.6B",
        "precision": "bf16",
        "talker_layers": 28,
        "predictor_layers": 5,
        "frames": 100,
        "reps": 2,
        "warmup": 1,
        "ours": {"first_chunk_s": spread, "rtf": spread},
        "mlx_audio": {"first_chunk_s": {**spread, "median": 0.25}, "rtf": spread},
        "ratio_first_chunk_s": 2.0,
        "ratio_rtf": 1.0,
        "ours_ms_per_frame": 40.0,
        "weights_read_per_frame_bytes": 1.2e9,
        "ours_effective_bw_gbs": 30.0,
        "assumed_bw_gbs": 4800.0,
        "ours_fraction_of_bw_limit": 0.00625,
    }
    jobs = [
        {"job": "tts ok", "results": [row]},
        {"job": "tts bad", "results": [], "error": "exit status 1", "stderr_tail": "ValueError: x"},
    ]
    doc = {
        "label": "demo",
        "machine": {"backend": "Device(gpu, 0)", "gpu": "H200"},
        "sections": {"tts": {"command": "python -m benchmarks", "finished": "now", "wall_s": 1.0, "jobs": jobs}},
    }
    (tmp_path / "demo.json").write_text(json.dumps(doc))
    md = write_markdown(tmp_path, tmp_path / "b.md").read_text()
    assert md == render([doc])
    assert "| 0.6B | bf16 | 28/5, 1536 | 100 | 500 (400-600) | 250 (400-600) | 2.00 |" in md
    assert "`tts bad` failed: exit status 1. ValueError: x" in md
