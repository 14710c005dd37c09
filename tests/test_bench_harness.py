"""The benchmark harness survives failing jobs and renders what it recorded (no benchmark is run here)."""

from __future__ import annotations

import asyncio
import importlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from assistant.events import LatencyTrace, ResponseDone, StateChanged, TurnState
from benchmarks.__main__ import parse_output, run_job
from benchmarks.report import render, write_markdown
from benchmarks.v2v import HOPS, REPLY_WORDS, JobTime, TimestampSink, _next_trace, breakdown, forced_reply


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


def _job(name: str, started: float, ended: float, made: str = "") -> JobTime:
    return JobTime(name, started, started, ended, 1, made)


def test_v2v_breakdown_clips_each_hop_at_the_endpoint() -> None:
    """The hops after the endpoint add up to endpoint -> first write, a stage done before the endpoint takes 0,
    and the compute thread's time splits into the reply's jobs, other jobs and idle."""
    jobs = [
        _job("ForcedText.finalize", 0.00, 0.05),
        _job("Qwen3TTS.start", 0.05, 0.06),
        _job("start_answer", 0.06, 0.07),
        _job("llm_step", 0.07, 0.12, "token"),  # prefill and the first token: across the endpoint (0.10)
        _job("ForcedText.feed", 0.12, 0.13),
        _job("llm_step", 0.13, 0.15, "text"),
        _job("Utterance.step", 0.15, 0.20, "audio"),
    ]
    hops = breakdown(0.10, 0.21, 0.02, jobs)
    assert hops is not None and hops["stage"] == "STT final"
    got = [round(hops[h], 3) for h in HOPS]
    assert got == [0.0, 20.0, 30.0, 50.0, 10.0] and round(sum(got), 3) == 110.0
    assert round(hops["speculation lead"], 3) == 80.0 and hops["reply starts"] == 1
    assert round(hops["compute: reply jobs"], 3) == 90.0 and round(hops["compute: other jobs"], 3) == 10.0
    assert round(hops["compute: idle"], 3) == 10.0


def test_v2v_pairs_each_decision_with_its_own_speech_and_sample() -> None:
    """A turn answered after a timeout (the source already spoke again) is timed from its own true end to its own
    first sample; a turn decided twice counts its last decision; a true end never decided is no turn."""
    from benchmarks.v2v import answered

    ends = [10.0, 35.0, 60.0, 63.0]  # 35: spoken after a timeout, never decided; 60 answered only at 60.2
    endpoints = [10.2, 60.1, 60.2, 63.2]  # 10.2: the slow first turn; 60.1 and 60.2: one reopened turn
    writes = [40.0, 40.1, 60.3, 60.4, 63.3]  # 40.0: the slow turn's first sample, after the source spoke at 35
    assert answered(ends, endpoints, writes) == [(10.0, 10.2, 40.0), (60.0, 60.2, 60.3), (63.0, 63.2, 63.3)]


def test_v2v_forced_reply_keeps_the_models_steps_and_scripts_the_words() -> None:
    """Prefill steps pass through, each decode step becomes the next scripted word even when the model's delta
    is empty (random weights sample byte tokens that decode to nothing), and the answer ends (closing the
    model's generator) after the script."""
    closed, sampled = [], [0]

    def model() -> Iterator[str]:
        try:
            yield ""  # a prefill chunk: no token sampled
            while True:
                sampled[0] += 1
                yield "" if sampled[0] % 2 else "!"
        finally:
            closed.append(True)

    assert list(forced_reply(model(), lambda: sampled[0])) == ["", *REPLY_WORDS] and closed == [True]
    assert sampled[0] == len(REPLY_WORDS) + 1  # one step per word, and the step that found the script over


def test_v2v_takes_the_trace_sent_before_its_response_done() -> None:
    """The core publishes a turn's LatencyTrace just before its ResponseDone: the harness returns that trace
    at the ResponseDone (it used to wait for a trace after it, and every turn timed out)."""
    trace = LatencyTrace(2, 0.0, None, None, None, None, None)

    async def events() -> AsyncIterator[object]:
        yield StateChanged(TurnState.USER_SPEAKING, TurnState.THINKING, 5.0)
        yield trace
        yield ResponseDone(2, "It will", False, 6.0)
        await asyncio.Event().wait()  # no more events: a harness waiting for another would hang

    endpoints: list[float] = []
    got = asyncio.run(asyncio.wait_for(_next_trace(events(), endpoints, []), 5.0))
    assert got is trace and endpoints == [5.0]


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_v2v_sink_plays_as_playback_and_counts_a_gap_from_running_dry_to_playing_again() -> None:
    """Like Playback, the sink starts a run once the lead (40 ms) is queued, counts a chunk that comes after the
    queue ran dry as an underrun and the silence until the next run plays (after the pacer's rebuilt lead) as a
    gap, and keeps the reply's first sample time through it; after flush() a new reply's first chunk is no gap."""
    clock = Clock()
    sink = TimestampSink(0.04, clock)
    frame = np.zeros(1920, np.float32)  # 80 ms
    sink.write(frame)
    assert sink.first_sample_dac_time == 100.0 and sink.play_left_s() == pytest.approx(0.08)
    clock.t = 100.05
    sink.write(frame)  # 30 ms still queued: no gap
    clock.t = 100.25  # ran dry at 100.16
    sink.write(frame)
    # the rebuilt lead is 130 ms (the queue fell 90 ms below its start): the chunk waits for the pause
    assert sink.underruns == 1 and sink.gap_s == 0.0 and sink.played_samples == 2 * 1920
    clock.t = 100.5
    assert sink.gap_s == pytest.approx(0.22) and sink.first_sample_dac_time == 100.0
    assert [round(q, 3) for _, _, q in sink.log] == [0.0, 0.03, 0.0]
    assert sink.played_samples == 3 * 1920  # it played from 100.38 (the pause of 130 ms) to 100.46
    clock.t = 101.0
    sink.flush()
    sink.write(frame)  # the next reply starts after the lead learned from this one: 80 ms < 130 ms, so a pause
    assert sink.underruns == 1 and sink.first_sample_dac_time is None
    clock.t = 101.2
    assert sink.first_sample_dac_time == pytest.approx(101.13) and sink.underruns == 1


def test_v2v_sink_waits_for_the_lead_or_a_pause_before_playing() -> None:
    """A chunk shorter than the lead waits (as Playback's prebuffer does) until more comes or writes pause for
    the lead (at least 100 ms): the first sample plays then, not when it was written."""
    clock = Clock()
    sink = TimestampSink(0.04, clock)
    sink.write(np.zeros(240, np.float32))  # 10 ms
    assert sink.first_sample_dac_time is None and sink.played_samples == 0
    clock.t = 100.2
    assert sink.first_sample_dac_time == pytest.approx(100.1) and sink.played_samples == 240


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("name", sorted(p.stem for p in BENCHMARKS.glob("*.py") if p.stem != "__init__"))
def test_every_benchmark_imports(name: str) -> None:
    """Every benchmark module imports against the current package (benchmarks/endofturn.py still imported the
    turn core's VadIn a session after it was removed: no test runs the benchmarks themselves)."""
    importlib.import_module(f"benchmarks.{name}")


def test_paired_statistics_of_known_pairs() -> None:
    """The A/B's paired difference is other - base pair by pair: its median, a bootstrap interval around it, the
    pairs won and lost, and the exact two-sided sign test (6 of 6: p = 2/64; ties left out; an even split: 1)."""
    from benchmarks.tts_ab import paired, sign_test

    base = [20.0, 30.0, 18.0, 25.0, 22.0, 19.0]  # a drifting machine: the units differ far more than the pairs
    other = [b - d for b, d in zip(base, [1.0, 1.5, 0.5, 1.0, 2.0, 1.0], strict=True)]
    p = paired(base, other)
    assert p["median_diff"] == -1.0 and p["mean_diff"] == -1.1667 and p["pairs"] == 6
    assert (p["faster"], p["slower"], p["sign_p"]) == (6, 0, 0.03125)
    assert -2.0 <= p["ci95"][0] <= p["median_diff"] <= p["ci95"][1] < 0
    assert sign_test(3, 3) == 1.0 and sign_test(0, 0) == 1.0 and sign_test(1, 0) == 1.0
    tied = paired([1.0, 2.0, 3.0], [1.0, 2.5, 2.0])
    assert (tied["faster"], tied["slower"], tied["pairs"]) == (1, 1, 3)


def test_tts_ab_rejects_an_unknown_layout(capsys: pytest.CaptureFixture[str]) -> None:
    """A layout that is no FuseOptions choice stops the A/B before any checkpoint is built, naming the choices."""
    from benchmarks.tts_ab import main

    with pytest.raises(SystemExit):
        main(["--layouts", "fused", "fuse=residual=sub"])
    assert "residual=addmm|add" in capsys.readouterr().err


def test_tts_ab_runs_layouts_interleaved_and_pairs_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """At tiny size on the CPU, the A/B loads one model per layout (the asked layout is what the model holds),
    runs every layout once per round in a permuted order, and its paired statistics and summaries are those of
    the units it reports; the report renders the row as a table."""
    from benchmarks.checkpoints import BPE_ENV
    from benchmarks.tts_ab import MEASURES, main, paired
    from tools.qwen3_tts_ref import tiny

    monkeypatch.setenv(BPE_ENV, str(tiny.BPE_DIR))
    args = ["--layers", "2", "1", "--tiny-widths", "--cache", str(tmp_path), "--frames", "3", "--rounds", "3"]
    assert main([*args, "--warm-rounds", "1", "--layouts", "fused", "no-addmm", "fused"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["section"] == "tts_ab" and row["rounds"] == 3 and row["frames"] == 3
    layouts = row["layouts"]
    assert [e["label"] for e in layouts] == ["fused", "fused residual=add", "fused #2"]
    assert [e["applied"]["residual"] for e in layouts] == ["addmm", "add", "addmm"]
    assert all(sorted(o) == [0, 1, 2] for o in row["order"]) and len(row["order"]) == 3
    base = layouts[0]["units"]
    for k, e in enumerate(layouts):
        for m in (*MEASURES, "first_chunk_ms"):
            units = e["units"][m]
            assert len(units) == 3 and all(u > 0 for u in units)
            assert e["summary"][m]["median"] == round(float(np.median(units)), 4)
        if k == 0:
            assert "vs_first" not in e
            continue
        for m in MEASURES:
            got = e["vs_first"][m]
            assert got == paired(base[m], e["units"][m], row["seed"] + k)
            diffs = np.subtract(e["units"][m], base[m])
            assert got["median_diff"] == round(float(np.median(diffs)), 4)
            assert got["faster"] == int((diffs < 0).sum()) and got["pairs"] == 3
    (tmp_path / "demo.json").write_text(json.dumps({"label": "demo", "machine": {}, "sections": {}}))
    (tmp_path / "demo-ab.jsonl").write_text(json.dumps(row) + "\n")
    md = write_markdown(tmp_path, tmp_path / "b.md").read_text()
    assert "### TTS layouts A/B, interleaved in one process" in md
    v = layouts[1]["vs_first"]["ms_per_frame"]
    assert f"| fused residual=add | {layouts[1]['summary']['ms_per_frame']['median']:.2f} (" in md
    assert f"{v['median_diff']:+.2f} [{v['ci95'][0]:+.2f}, {v['ci95'][1]:+.2f}] | {v['faster']}/3 (" in md
