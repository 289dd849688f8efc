"""``vistream bench model``: percentiles, JSON, plot, CLI wiring (timings are not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.cli.bench.model import (
    ModelBenchOptions,
    bench_model,
    main,
    parse_batches,
    render_table,
    summarize_latencies,
    time_interleaved,
)
from engine.errors import ConfigError
from tests.conftest import shared_path


def test_parse_batches() -> None:
    assert parse_batches("1,8,32") == (1, 8, 32)
    assert parse_batches("4") == (4,)
    for bad in ("", "0,1", "a,b", "-2"):
        with pytest.raises(ConfigError, match="positive integers"):
            parse_batches(bad)


def test_summarize_latencies() -> None:
    summary = summarize_latencies([10.0] * 98 + [20.0, 30.0], batch=4)
    assert summary["p50_ms"] == 10.0 and summary["p95_ms"] == 10.0
    assert 19.0 < summary["p99_ms"] < 21.0
    assert summary["mean_ms"] == pytest.approx(10.3)
    assert summary["images_per_s"] == pytest.approx(4 * 100 / 1.03)


def test_time_interleaved_alternates() -> None:
    order: list[str] = []
    synced = []
    latencies = time_interleaved(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")},
        iterations=3,
        warmup=1,
        sync=lambda: synced.append(1),
    )
    assert order == ["a", "b", "a", "b", "a", "b", "a", "b"]  # warm-ups first, then alternating
    assert [len(values) for values in latencies.values()] == [3, 3] and len(synced) == 7


def test_bench_fixed_batch_model(tmp_path: Path) -> None:
    """The shared fixed-batch-1 model: batch 2 runs chunked, and the stage is timed too."""
    report = bench_model(
        ModelBenchOptions(
            model=shared_path("models/yolo11n_fp32_320.onnx"),
            out_dir=tmp_path,
            batches=(1, 2),
            iterations=3,
            warmup=1,
            source=shared_path("media/traffic/highway_overpass_320x240_60fps.avi"),
            threads=1,
        )
    )
    written = json.loads((tmp_path / "model_bench.json").read_text())
    assert written == report
    assert (tmp_path / "model_bench.png").stat().st_size > 10_000
    assert report["device"] == "cpu" and report["imgsz"] == [320, 320] and report["fixed_batch"] == 1
    assert report["machine"]["cpus"] >= 1
    assert [entry["batch"] for entry in report["results"]] == [1, 2]
    assert [entry["chunked"] for entry in report["results"]] == [False, True]
    for entry in report["results"]:
        for kind in ("model", "stage"):
            stats = entry[kind]
            assert 0 < stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"] and stats["images_per_s"] > 0
        assert entry["stage_over_model"] == pytest.approx(
            entry["stage"]["images_per_s"] / entry["model"]["images_per_s"]
        )
    table = render_table(report)
    assert "yolo11n_fp32_320.onnx on cpu" in table and "(chunked)" in table


def test_standalone_and_vistream_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = str(shared_path("models/yolo11n_fp32_320.onnx"))
    argv = [
        model,
        "--batch",
        "1",
        "--iterations",
        "2",
        "--warmup",
        "0",
        "--no-stage",
        "--no-plot",
        "-o",
        str(tmp_path / "a"),
    ]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    report = json.loads((tmp_path / "a" / "model_bench.json").read_text())
    assert "stage" not in report["results"][0] and not (tmp_path / "a" / "model_bench.png").exists()
    assert main([model, "--batch", "1", "--iterations", "0", "-o", str(tmp_path / "b")]) == 2

    from engine.cli.main import build_parser

    args = build_parser().parse_args(["bench", "model", model, "--batch", "1,8", "-o", str(tmp_path / "c")])
    assert args.batch == (1, 8) and args.handler.__module__ == "engine.cli.bench.model"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "model", model, "--batch", "x", "-o", "out"])


def test_the_frame_source_is_a_file_or_folder_named_in_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = str(shared_path("models/yolo11n_fp32_320.onnx"))
    base = [model, "--batch", "1", "--iterations", "1", "--no-stage", "--no-plot", "-o", str(tmp_path)]
    with pytest.raises(SystemExit):  # a stream has no "whole" to spread frames over
        main([*base, "--source", "rtsp://127.0.0.1:9/cam"])
    assert "not the rtsp source rtsp://127.0.0.1:9/cam" in capsys.readouterr().err
    assert main([*base, "--source", f"file://{tmp_path}/missing.mp4"]) == 2
    assert f"benchmark source not found: {tmp_path}/missing.mp4" in capsys.readouterr().err
