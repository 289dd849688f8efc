"""`make bench`: a short run of every benchmark, compared with the committed baseline.

Runs (about 4 minutes on a 2-core machine):

1. ``vistream bench pipeline traffic`` on the highway video (``--frames``), ``--repeats``
   times: throughput, end-to-end and per-stage latency p50;
2. a live sweep (``--streams 1,2,4`` replayed at ``--sweep-fps``): cameras per machine;
3. ``compare.py`` on the first ``--compare-frames`` frames, ``--repeats`` rounds: each tool's
   fps and its ratio to vistream (ratios measured side by side hold up best on a shared box).

Every figure measured more than once gets its run-to-run noise (``(max - min) / median``).
A figure *moved* when it differs from ``benchmarks/baseline.json`` by more than the larger of
its noise now, its noise in the baseline and ``--min-noise``; the table says which way.
``--update-baseline`` writes the new figures as the baseline instead.

    python benchmarks/regression.py [--update-baseline] [--strict]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common  # noqa: E402  (puts the repository root on sys.path)

BASELINE = Path(__file__).resolve().parent / "baseline.json"
#: Relative change never reported as a move, however quiet the runs were.
DEFAULT_MIN_NOISE = 0.05


def figure(values: Sequence[float | None], *, unit: str, better: str) -> dict[str, Any]:
    """A measured figure: median of the runs, their relative spread, unit and direction."""
    present = [float(value) for value in values if value is not None]
    noise = common.spread(present)
    return {
        "value": round(statistics.median(present), 4) if present else None,
        "noise": None if noise is None else round(noise, 4),
        "runs": [round(value, 4) for value in present],
        "unit": unit,
        "better": better,
    }


def compare_figures(
    baseline: dict[str, dict[str, Any]],
    current: dict[str, dict[str, Any]],
    *,
    min_noise: float = DEFAULT_MIN_NOISE,
) -> list[dict[str, Any]]:
    """Which figures moved by more than the noise, and which way.

    Args:
        baseline: Figure name -> ``{"value", "noise", "better"}`` from the baseline file.
        current: The same for this run.
        min_noise: Smallest relative change that can count as a move.

    Returns:
        One row per figure in either set: ``name``, ``baseline``, ``current``, ``change``
        (relative, None when either side is missing or zero), ``threshold`` and ``verdict``:
        ``same``, ``better``, ``worse``, ``moved`` (no direction), ``new`` or ``missing``.
    """
    rows = []
    for name in sorted(set(baseline) | set(current)):
        old, new = baseline.get(name), current.get(name)
        row: dict[str, Any] = {
            "name": name,
            "baseline": old and old.get("value"),
            "current": new and new.get("value"),
            "change": None,
            "threshold": None,
        }
        if old is None or old.get("value") is None:
            row["verdict"] = "new"
        elif new is None or new.get("value") is None:
            row["verdict"] = "missing"
        else:
            before, after = float(old["value"]), float(new["value"])
            threshold = max(min_noise, old.get("noise") or 0.0, new.get("noise") or 0.0)
            change = (after - before) / abs(before) if before else (0.0 if after == before else float("inf"))
            row.update(change=round(change, 4), threshold=round(threshold, 4))
            if abs(change) <= threshold:
                row["verdict"] = "same"
            else:
                better = (new.get("better") or old.get("better") or "").lower()
                if better == "higher":
                    row["verdict"] = "better" if change > 0 else "worse"
                elif better == "lower":
                    row["verdict"] = "better" if change < 0 else "worse"
                else:
                    row["verdict"] = "moved"
        rows.append(row)
    return rows


def render(rows: Sequence[dict[str, Any]]) -> str:
    """The comparison as a Markdown table, moved figures marked."""
    marks = {"worse": "**WORSE**", "better": "better", "moved": "**moved**"}
    table = []
    for row in rows:
        change = "" if row["change"] is None else f"{row['change']:+.1%}"
        threshold = "" if row["threshold"] is None else f"±{row['threshold']:.1%}"
        table.append(
            [
                row["name"],
                _number(row["baseline"]),
                _number(row["current"]),
                change,
                threshold,
                marks.get(row["verdict"], row["verdict"]),
            ]
        )
    return common.markdown_table(
        ["figure", "baseline", "now", "change", "noise", "verdict"], table, align="lrrrrl"
    )


def _number(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.1f}"


def measure_pipeline(video: Path, out: Path, *, frames: int, repeats: int) -> dict[str, dict[str, Any]]:
    """Repeated `bench pipeline traffic` on the file: fps and latency figures."""
    from engine.cli.bench.pipeline import BenchOptions, bench_pipeline

    runs = []
    for repeat in range(repeats):
        options = BenchOptions(
            pipeline="traffic",
            source=str(video),
            out_dir=out / f"pipeline_{repeat}",
            frames=frames,
            plots=repeat == 0,
        )
        runs.append(bench_pipeline(options)["runs"][0])
        _log(f"pipeline run {repeat + 1}/{repeats}: {runs[-1]['throughput_fps']['total']} fps")
    figures = {
        "pipeline.fps": figure([run["throughput_fps"]["total"] for run in runs], unit="fps", better="higher"),
        "pipeline.end_to_end_p50_ms": figure(
            [run["latency_ms"]["end_to_end"].get("p50_ms") for run in runs], unit="ms", better="lower"
        ),
        "pipeline.processing_p50_ms": figure(
            [
                run["mean_ms"]["end_to_end"] - run["mean_ms"]["batch_fill"] - run["mean_ms"]["queue"]
                for run in runs
            ],
            unit="ms",
            better="lower",
        ),
    }
    for name in runs[0]["latency_ms"]["stages"]:
        figures[f"pipeline.stage.{name}.p50_ms"] = figure(
            [run["latency_ms"]["stages"][name].get("p50_ms") for run in runs], unit="ms", better="lower"
        )
    return figures


def measure_sweep(video: Path, out: Path, *, fps: float, duration_s: float) -> dict[str, dict[str, Any]]:
    """A short live sweep: cameras per machine at ``fps``."""
    from engine.cli.bench.pipeline import BenchOptions, bench_pipeline

    options = BenchOptions(
        pipeline="traffic",
        source=str(video),
        out_dir=out / "sweep",
        streams=(1, 2, 4),
        fps=fps,
        duration_s=duration_s,
    )
    report = bench_pipeline(options)
    scaling = report["scaling"]
    _log(f"sweep at {fps:g} fps: cameras per machine {scaling['cameras_per_machine']}")
    return {
        f"streams.cameras_per_machine_at_{fps:g}fps": figure(
            [scaling["cameras_per_machine"]], unit="streams", better="higher"
        ),
        **{
            f"streams.{run['streams']}.total_fps": figure(
                [run["throughput_fps"]["total"]], unit="fps", better="higher"
            )
            for run in report["runs"]
        },
    }


def measure_compare(
    video: Path, model: Path, out: Path, *, frames: int, repeats: int
) -> dict[str, dict[str, Any]]:
    """A short side-by-side comparison: fps per tool and ratios to vistream."""
    import compare

    tools = ["vistream", "ort"]
    if common.importable("ultralytics"):
        tools[1:1] = ["ultralytics", "ultralytics_track", "supervision"]
    report = compare.compare(
        video, model, tools=tools, repeats=repeats, frames=frames, warmup=20, out=out / "compare", log=_log
    )
    (out / "compare.md").write_text(compare.render_markdown(report))
    figures: dict[str, dict[str, Any]] = {}
    for tool, values in report["tools"].items():
        runs = values["all_fps"]
        figures[f"compare.{tool}.fps"] = figure(runs, unit="fps", better="higher")
        if tool != "vistream":
            vistream_runs = report["tools"]["vistream"]["all_fps"]
            ratios = [run / base for run, base in zip(runs, vistream_runs, strict=False) if base]
            figures[f"compare.{tool}.fps_vs_vistream"] = figure(ratios, unit="ratio", better="")
    return figures


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=common.default_shared())
    parser.add_argument("--out", type=Path, default=common.REPO_ROOT / "out" / "bench")
    parser.add_argument("--baseline", type=Path, default=BASELINE)
    parser.add_argument("--update-baseline", action="store_true", help="write this run as the baseline")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a figure got worse")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, default=400, help="frames per pipeline run")
    parser.add_argument("--compare-frames", type=int, default=300)
    parser.add_argument("--compare-repeats", type=int, default=2)
    parser.add_argument("--sweep-fps", type=float, default=15.0)
    parser.add_argument("--sweep-duration", type=float, default=4.0, help="seconds per stream count")
    parser.add_argument("--min-noise", type=float, default=DEFAULT_MIN_NOISE)
    parser.add_argument("--skip", default="", help="comma list of parts to skip: pipeline,sweep,compare")
    args = parser.parse_args()

    video, model = args.shared / common.DEFAULT_VIDEO, args.shared / common.DEFAULT_MODEL
    if not video.is_file() or not model.is_file():
        print(f"regression: {video} or {model} is missing (set --shared or VISTREAM_SHARED)", file=sys.stderr)
        return 2
    os.environ.setdefault("VISTREAM_SHARED", str(args.shared))
    os.environ.setdefault("VISTREAM_MODELS", str(model.parent))
    common.offline_ultralytics()
    common.load_pyplot()  # before any GStreamer pipeline runs
    args.out.mkdir(parents=True, exist_ok=True)
    skip = {part.strip() for part in args.skip.split(",") if part.strip()}

    from engine.metrics.resources import machine_description

    started = time.monotonic()
    machine = machine_description()
    figures: dict[str, dict[str, Any]] = {}
    if "pipeline" not in skip:
        figures.update(measure_pipeline(video, args.out, frames=args.frames, repeats=args.repeats))
    if "sweep" not in skip:
        figures.update(measure_sweep(video, args.out, fps=args.sweep_fps, duration_s=args.sweep_duration))
    if "compare" not in skip:
        figures.update(
            measure_compare(video, model, args.out, frames=args.compare_frames, repeats=args.compare_repeats)
        )
    current = {"machine": machine, "seconds": round(time.monotonic() - started, 1), "figures": figures}
    (args.out / "regression.json").write_text(json.dumps(current, indent=2) + "\n")
    if args.update_baseline:
        args.baseline.write_text(json.dumps(current, indent=2) + "\n")
        print(f"baseline written to {args.baseline} ({len(figures)} figures, {current['seconds']} s)")
        return 0
    if not args.baseline.is_file():
        print(f"no baseline at {args.baseline}; run with --update-baseline first", file=sys.stderr)
        return 2
    baseline = json.loads(args.baseline.read_text())
    rows = compare_figures(baseline["figures"], figures, min_noise=args.min_noise)
    print(f"against {args.baseline.name} measured on: {common.machine_line(baseline.get('machine', {}))}")
    print(f"this run ({current['seconds']} s) on: {common.machine_line(machine)}\n")
    print(render(rows))
    moved = [row for row in rows if row["verdict"] in ("worse", "better", "moved")]
    print(
        f"\n{len(moved)} of {len(rows)} figures moved by more than their noise"
        + (": " + ", ".join(f"{row['name']} ({row['verdict']})" for row in moved) if moved else "")
    )
    worse = any(row["verdict"] == "worse" for row in rows)
    return 1 if args.strict and worse else 0


if __name__ == "__main__":
    sys.exit(main())
