"""Reports of `vistream bench pipeline`: the Markdown table, a console summary, the PNG plots.

Plots (matplotlib, headless): ``latency_cdf.png`` (CDF of each stage, queueing, sink and
end-to-end latency; per stream count too when several were run), ``timeline.png`` (one
second of frames as Gantt bars: waiting, each stage, sink) and ``throughput_vs_streams.png``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.metrics.resources import cpu_features_text

logger = logging.getLogger(__name__)

_SEGMENT_LABELS = {
    "batch_fill": "batch fill (wait for the batch)",
    "queue": "queue (read-ahead / loop busy)",
    "handoff": "hand-off between stages",
    "sink": "sinks (write outputs)",
}
_TIMELINE_MAX_FRAMES = 120


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _machine_line(report: dict[str, Any]) -> str:
    machine = report.get("machine", {})
    memory = f", {machine['memory_gb']} GB RAM" if "memory_gb" in machine else ""
    load = f", load average {machine['load_average'][0]}" if "load_average" in machine else ""
    return (
        f"{machine.get('cpu', '?')}{cpu_features_text(machine)}, "
        f"{machine.get('cpus', '?')} CPUs{memory}{load}; "
        f"GPU: {machine.get('gpu', 'none')}; {machine.get('platform', '')}, "
        f"Python {machine.get('python', '')}"
    )


def _gpu_text(resources: dict[str, Any]) -> str:
    gpu = resources.get("gpu", "n/a")
    if not isinstance(gpu, dict):
        return str(gpu)
    return f"{gpu.get('utilisation_percent', 'n/a')} % / {gpu.get('max_memory_allocated_mb')} MB"


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: throughput table, latency breakdown per run, cameras per machine."""
    lines = [
        f"# vistream bench: `{Path(report['pipeline']).name}` on `{Path(report['source']).name}`",
        "",
        f"- machine: {_machine_line(report)}",
        f"- device {report['device']}, batch size {report['batch_size']}, "
        f"{report.get('workers', 1)} worker(s) for the leading concurrent stages, "
        f"stages {' -> '.join(report['stages'])}, "
        + (
            "live replay" + (f" at {report['replay_fps']:g} fps" if report.get("replay_fps") else "")
            if report["live"]
            else "file read as fast as processed"
        ),
        f"- first {report['warmup_frames_per_stream']} frames of each stream left out; "
        + (
            f"{report['duration_s']:g} s per configuration"
            if report.get("duration_s")
            else f"{report['frames_per_stream']} frames per stream"
            if report.get("frames_per_stream")
            else "whole source"
        )
        + (
            ""
            if report.get("multi_source_pipeline")
            else "; several streams run as one pipeline per stream on threads of one process"
        ),
        "",
        "## Throughput and resources",
        "",
        "| streams | total fps | min fps / stream | source fps | dropped | frame age p99 (worst, ms) "
        "| CPU (% of one core) | peak RSS (MB) | GPU | keeps up |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for run in report["runs"]:
        details = run["streams_detail"].values()
        source_fps = {stream["source_fps"] for stream in details}
        dropped = sum(stream["dropped_frames"] for stream in details)
        resources = run["resources"]
        keeps = run.get("keeps_up")
        lines.append(
            f"| {run['streams']} | {_fmt(run['throughput_fps']['total'])} "
            f"| {_fmt(run['throughput_fps']['min_per_stream'])} "
            f"| {', '.join(_fmt(fps) for fps in sorted(f for f in source_fps if f)) or 'n/a'} "
            f"| {dropped} | {_fmt(run['frame_age_p99_ms_worst'])} "
            f"| {_fmt(resources.get('cpu_percent'))} | {_fmt(resources.get('peak_rss_mb'), 0)} "
            f"| {_gpu_text(resources)} | {'n/a' if keeps is None else 'yes' if keeps else 'no'} |"
        )
    scaling = report.get("scaling")
    if scaling:
        lines += [
            "",
            "## Cameras per machine",
            "",
            f"**{'≥ ' if scaling['at_least'] else ''}{scaling['cameras_per_machine']}** "
            f"(tested {', '.join(map(str, scaling['tested_streams']))} streams; "
            f"a count passes when {scaling['criteria']['meaning']}).",
        ]
    for run in report["runs"]:
        lines += [
            "",
            f"## Where the time goes: {run['streams']} stream(s), {run['frames_measured']} frames measured",
            "",
        ]
        lines += latency_table(run)
    return "\n".join(lines) + "\n"


def latency_table(run: dict[str, Any]) -> list[str]:
    """Markdown rows: each segment's latency percentiles, then the sum check."""
    latency, means = run["latency_ms"], run["mean_ms"]
    rows = [
        ("batch fill (wait for the batch)", latency["batch_fill"]),
        ("queue (read-ahead / loop busy)", latency["queue"]),
    ]
    rows += [(f"stage `{name}`", stats) for name, stats in latency["stages"].items()]
    rows += [
        ("hand-off between stages", latency["handoff"]),
        ("sinks (write outputs)", latency["sink"]),
        ("**end to end** (capture → sink)", latency["end_to_end"]),
    ]
    lines = [
        "| segment | mean | p50 | p95 | p99 | max | share of mean |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    total = means.get("end_to_end") or 0.0
    for label, stats in rows:
        mean = stats.get("mean_ms")
        share = f"{mean / total:.0%}" if mean is not None and total else ""
        lines.append(
            f"| {label} | {_fmt(mean, 2)} | {_fmt(stats.get('p50_ms'), 2)} | {_fmt(stats.get('p95_ms'), 2)} "
            f"| {_fmt(stats.get('p99_ms'), 2)} | {_fmt(stats.get('max_ms'), 2)} | {share} |"
        )
    check = run["decomposition"]
    if check.get("segments_sum_ms") is not None:
        lines += [
            "",
            f"Sum of the segment means {check['segments_sum_ms']:.3f} ms; end-to-end mean measured by the "
            f"pipeline {check['end_to_end_ms']:.3f} ms; residual {check['residual_ms']:.3f} ms "
            f"(largest per-frame residual {check['max_frame_residual_ms']:.6f} ms).",
        ]
    return lines


def render_console(report: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    lines = []
    for run in report["runs"]:
        e2e = run["latency_ms"]["end_to_end"]
        stages = ", ".join(
            f"{name} {stats.get('p50_ms', float('nan')):.1f}"
            for name, stats in run["latency_ms"]["stages"].items()
        )
        keeps = run.get("keeps_up")
        lines.append(
            f"{run['streams']} stream(s): {_fmt(run['throughput_fps']['total'])} fps total, "
            f"end-to-end p50 {_fmt(e2e.get('p50_ms'))} / p99 {_fmt(e2e.get('p99_ms'))} ms "
            f"(stage p50 ms: {stages}; queueing p50 {_fmt(run['latency_ms']['queueing'].get('p50_ms'))})"
            + ("" if keeps is None else f", keeps up: {'yes' if keeps else 'no'}")
        )
    scaling = report.get("scaling")
    if scaling:
        lines.append(
            f"cameras per machine: {'>= ' if scaling['at_least'] else ''}{scaling['cameras_per_machine']} "
            f"({scaling['criteria']['meaning']})"
        )
    return "\n".join(lines)


def load_pyplot() -> Any:
    """Import matplotlib's pyplot for headless use; None (with a warning) when not installed.

    Call it before any GStreamer pipeline runs in the process: importing matplotlib's
    font modules after GStreamer has loaded its plugins aborts the interpreter (pybind11
    "module 'matplotlib.ft2font' has no attribute '__path__'", seen with GStreamer 1.22 and
    matplotlib 3.11); imported first, both work.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plots")
        return None
    return plt


def write_plots(out_dir: Path, report: dict[str, Any], results: Sequence[Any]) -> dict[str, str]:
    """Write the three PNG plots; returns name -> path ({} without matplotlib)."""
    plt = load_pyplot()
    if plt is None:
        return {}
    reference = _reference_result(report, results)
    paths = {
        "latency_cdf": out_dir / "latency_cdf.png",
        "timeline": out_dir / "timeline.png",
        "throughput_vs_streams": out_dir / "throughput_vs_streams.png",
    }
    _plot_cdf(plt, paths["latency_cdf"], reference, results, report)
    _plot_timeline(plt, paths["timeline"], reference, report)
    _plot_throughput(plt, paths["throughput_vs_streams"], report)
    return {name: str(path) for name, path in paths.items()}


def _reference_result(report: dict[str, Any], results: Sequence[Any]) -> Any:
    """The run the stage plots show: the largest that kept up, else the first."""
    kept = [result for result, run in zip(results, report["runs"], strict=True) if run.get("keeps_up")]
    return kept[-1] if kept else results[0]


def _title(report: dict[str, Any], streams: int) -> str:
    return (
        f"{Path(report['pipeline']).name} on {Path(report['source']).name}, {streams} stream(s), "
        f"{report['device']}, batch {report['batch_size']}, workers {report.get('workers', 1)}"
    )


def _cdf(axis: Any, values: np.ndarray, label: str, **style: Any) -> None:
    values = np.sort(values[np.isfinite(values)])
    if values.size == 0:
        return
    values = np.maximum(values, 1e-3)  # log axis
    axis.plot(values, np.arange(1, values.size + 1) / values.size, label=label, **style)


def _plot_cdf(plt: Any, path: Path, reference: Any, results: Sequence[Any], report: dict[str, Any]) -> None:
    panels = 2 if len(results) > 1 else 1
    figure, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.2), squeeze=False)
    axis = axes[0][0]
    segments = reference.segments
    for name in reference.timeline.stage_names:
        _cdf(axis, segments[f"stage:{name}"], f"stage {name}")
    _cdf(axis, segments["batch_fill"] + segments["queue"] + segments["handoff"], "queueing", linestyle="--")
    _cdf(axis, segments["sink"], "sinks", linestyle=":")
    _cdf(axis, segments["end_to_end"], "end to end", color="black", linewidth=2)
    axis.set_xscale("log")
    axis.set_xlabel("latency per frame (ms, log scale)")
    axis.set_ylabel("fraction of frames")
    axis.set_title(_title(report, reference.streams), fontsize=9)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    if panels == 2:
        axis = axes[0][1]
        for result in results:
            _cdf(axis, result.segments["end_to_end"], f"{result.streams} stream(s)")
        axis.set_xscale("log")
        axis.set_xlabel("end-to-end latency = frame age at the sink (ms)")
        axis.set_title("end to end by stream count", fontsize=9)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_timeline(plt: Any, path: Path, reference: Any, report: dict[str, Any]) -> None:
    timeline = reference.timeline.select(reference.measured & reference.timeline.complete)
    figure, axis = plt.subplots(figsize=(10, 5.5))
    if len(timeline):
        order = np.argsort(timeline.capture_ns, kind="stable")
        capture = timeline.capture_ns[order]
        # One second from the middle of the measured run (the start may still be settling).
        middle = capture[len(capture) // 2]
        start_ns = max(int(capture[0]), int(middle) - 500_000_000)
        rows = order[(capture >= start_ns) & (capture < start_ns + 1_000_000_000)][:_TIMELINE_MAX_FRAMES]
        colors = plt.get_cmap("tab10").colors
        names = timeline.stage_names
        for y, row in enumerate(rows):

            def bar(begin_ns: int, end_ns: int, color: Any, y: int = y) -> None:
                axis.barh(
                    y,
                    (end_ns - begin_ns) / 1e6,
                    left=(begin_ns - start_ns) / 1e6,
                    height=0.8,
                    color=color,
                    linewidth=0,
                )

            bar(timeline.capture_ns[row], timeline.stage_start_ns[row, 0], "lightgrey")
            for column in range(len(names)):
                bar(
                    timeline.stage_start_ns[row, column],
                    timeline.stage_end_ns[row, column],
                    colors[column % len(colors)],
                )
            bar(timeline.stage_end_ns[row, -1], timeline.written_ns[row], "black")
        labels = [f"{timeline.source_ids[row]}#{timeline.index[row]}" for row in rows]
        step = max(1, len(rows) // 30)
        axis.set_yticks(range(0, len(rows), step))
        axis.set_yticklabels(labels[::step], fontsize=6)
        handles = [plt.Rectangle((0, 0), 1, 1, color="lightgrey")]
        handles += [plt.Rectangle((0, 0), 1, 1, color=colors[i % len(colors)]) for i in range(len(names))]
        handles += [plt.Rectangle((0, 0), 1, 1, color="black")]
        axis.legend(
            handles,
            ["waiting (batch fill + queue)", *[f"stage {n}" for n in names], "sinks"],
            fontsize=8,
            loc="upper right",
        )
        axis.invert_yaxis()
    axis.set_xlabel("time (ms) from the first frame shown; bars span capture → sink")
    axis.set_ylabel("frame (source#index)")
    axis.set_title("one second of frames: " + _title(report, reference.streams), fontsize=9)
    axis.grid(True, axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_throughput(plt: Any, path: Path, report: dict[str, Any]) -> None:
    runs = report["runs"]
    streams = [run["streams"] for run in runs]
    total = [run["throughput_fps"]["total"] or 0.0 for run in runs]
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    axis.plot(streams, total, marker="o", label="total fps (measured)")
    source_fps = [
        next(iter(run["streams_detail"].values()))["source_fps"] for run in runs if run["streams_detail"]
    ]
    if report["live"] and source_fps and source_fps[0]:
        axis.plot(
            streams,
            [n * source_fps[0] for n in streams],
            linestyle="--",
            color="grey",
            label=f"needed: streams × {source_fps[0]:g} fps",
        )
    for run, value in zip(runs, total, strict=True):
        keeps = run.get("keeps_up")
        if keeps is not None:
            axis.scatter([run["streams"]], [value], color="tab:green" if keeps else "tab:red", zorder=3, s=60)
    axis.set_xlabel("streams")
    axis.set_ylabel("frames per second, all streams")
    axis.set_xticks(streams)
    axis.grid(True, alpha=0.3)
    ages = [run["frame_age_p99_ms_worst"] for run in runs]
    twin = axis.twinx()
    twin.plot(streams, ages, marker="s", color="tab:orange", alpha=0.7, label="worst frame age p99 (ms)")
    twin.set_ylabel("frame age p99 (ms)")
    lines = axis.get_legend_handles_labels()
    twin_lines = twin.get_legend_handles_labels()
    axis.legend(lines[0] + twin_lines[0], lines[1] + twin_lines[1], fontsize=8, loc="upper left")
    scaling = report.get("scaling")
    suffix = ""
    if scaling:
        suffix = (
            f"; cameras per machine: {'≥' if scaling['at_least'] else ''}{scaling['cameras_per_machine']}"
        )
    axis.set_title(f"{Path(report['source']).name}, {report['device']}{suffix} (green: keeps up)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
