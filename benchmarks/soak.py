"""Soak test: a multi-camera pipeline left running for minutes; RSS, fps and frame age over time.

Cameras are replays of a recording paced like live cameras (the latest-frame policy drops
what the machine cannot keep up with), optionally plus an RTSP test camera that is killed
and restarted every ``--flap-every-s`` seconds (reconnections must not leak either). Every
``--interval-s`` the process's resident memory, the output rate, the frame age (p50/p99 over
the interval), drops and reconnections are sampled. After a warm-up, memory must be flat:
the least-squares slope of RSS is reported in MB per minute, with the growth it implies
over the measured span.

Writes ``soak.json`` and ``soak.png`` to ``--out`` and prints a table::

    python benchmarks/soak.py --minutes 5 --cameras 2 --flap-every-s 30 --out out/soak
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import REPO_ROOT, default_shared, load_pyplot


def rss_mb() -> float:
    """Resident memory of this process, in MiB (from /proc, no extra package)."""
    with open(f"/proc/{os.getpid()}/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class Sampler:
    """Samples the pipeline's metrics and the process's memory on a thread."""

    def __init__(self, pipeline: Any, interval_s: float) -> None:
        self.pipeline = pipeline
        self.interval_s = interval_s
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)
        self._started_s = time.monotonic()

    def start(self) -> None:
        self._started_s = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        before = self.pipeline.metrics.snapshot()
        before_s = time.monotonic()
        while not self._stop.wait(self.interval_s):
            now = self.pipeline.metrics.snapshot()
            now_s = time.monotonic()
            fresh = sum(now.frames_out.values()) - sum(before.frames_out.values())
            ages = [
                series.recent(now.frames_out[sid] - before.frames_out[sid])
                for sid, series in now.frame_age_ms.items()
            ]
            ages_ms = np.concatenate(ages) if ages else np.zeros(0)
            self.samples.append(
                {
                    "t_s": round(now_s - self._started_s, 2),
                    "rss_mb": round(rss_mb(), 2),
                    "fps": round(fresh / (now_s - before_s), 2),
                    "age_p50_ms": round(float(np.percentile(ages_ms, 50)), 1) if ages_ms.size else None,
                    "age_p99_ms": round(float(np.percentile(ages_ms, 99)), 1) if ages_ms.size else None,
                    "frames_out": sum(now.frames_out.values()),
                    "dropped": sum(now.frames_dropped.values()),
                    "reconnects": sum(now.reconnects.values()),
                    "threads": threading.active_count(),
                }
            )
            before, before_s = now, now_s


def memory_verdict(samples: list[dict[str, Any]], warmup_s: float) -> dict[str, Any]:
    """Slope of RSS after the warm-up (MB/min) and the growth it implies over that span."""
    kept = [s for s in samples if s["t_s"] >= warmup_s]
    if len(kept) < 3:
        return {"flat": None, "reason": "too few samples after the warm-up"}
    t_min = np.array([s["t_s"] for s in kept]) / 60
    rss = np.array([s["rss_mb"] for s in kept])
    slope, _ = np.polyfit(t_min, rss, 1)
    span_min = float(t_min[-1] - t_min[0])
    growth_mb = float(slope * span_min)
    return {
        "warmup_s": warmup_s,
        "rss_after_warmup_mb": {
            "min": round(float(rss.min()), 1),
            "max": round(float(rss.max()), 1),
            "first": round(float(rss[0]), 1),
            "last": round(float(rss[-1]), 1),
        },
        "slope_mb_per_min": round(float(slope), 3),
        "implied_growth_mb": round(growth_mb, 2),
        # Flat: less than 2 % (or 5 MB) of drift over the measured span.
        "flat": bool(abs(growth_mb) < max(5.0, 0.02 * float(rss.mean()))),
    }


def plot(plt: Any, samples: list[dict[str, Any]], warmup_s: float, path: Path, title: str) -> None:
    t = [s["t_s"] / 60 for s in samples]
    figure, axes = plt.subplots(3, 1, figsize=(7, 7.5), sharex=True)
    axes[0].plot(t, [s["rss_mb"] for s in samples], marker=".")
    axes[0].set_ylabel("RSS (MiB)")
    axes[1].plot(t, [s["fps"] for s in samples], marker=".", color="tab:green")
    axes[1].set_ylabel("frames out / s")
    axes[2].plot(t, [s["age_p50_ms"] for s in samples], marker=".", label="p50")
    axes[2].plot(t, [s["age_p99_ms"] for s in samples], marker=".", label="p99")
    axes[2].set_ylabel("frame age (ms)")
    axes[2].set_xlabel("minutes")
    axes[2].legend()
    for axis in axes:
        axis.axvline(warmup_s / 60, color="grey", linestyle="--", linewidth=0.8)
        axis.grid(alpha=0.3)
    axes[0].set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--warmup-s", type=float, default=None, help="default: a fifth of the run")
    parser.add_argument("--interval-s", type=float, default=5.0)
    parser.add_argument("--cameras", type=int, default=2, help="replayed cameras")
    parser.add_argument("--fps", type=float, default=15.0, help="frame rate of each replayed camera")
    parser.add_argument("--video", type=Path, default=None, help="recording to replay (default: highway)")
    parser.add_argument("--pipeline", default="default")
    parser.add_argument(
        "--flap-every-s",
        type=float,
        default=0.0,
        help="add an RTSP test camera killed and restarted this often (0: none)",
    )
    parser.add_argument("--write-video", action="store_true", help="also write annotated mp4s")
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="keep glibc's default malloc arenas (vistream run caps them at 2)",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "out" / "soak")
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    plt = load_pyplot()  # before GStreamer loads its plugins (see engine.cli.bench.report)
    from engine.cli.run import limit_malloc_arenas

    if not options.default_malloc:
        limit_malloc_arenas()  # what `vistream run` does

    from engine.config import load_pipeline
    from engine.pipeline import Pipeline
    from engine.sinks.outputs import open_outputs
    from engine.sources import open_source
    from engine.sources.base import Feed
    from engine.sources.replay import LiveReplaySource

    os.environ.setdefault("VISTREAM_SHARED", str(default_shared()))
    video = options.video or default_shared() / "media/traffic/highway_overpass_320x240_60fps.avi"
    feeds: list[Feed] = []
    for number in range(options.cameras):
        source_id = f"cam{number}"
        feeds.append(
            Feed(
                LiveReplaySource(
                    lambda source_id=source_id: open_source(str(video), source_id=source_id),
                    source_id=source_id,
                    fps=options.fps,
                    phase=number / max(options.cameras, 1),
                )
            )
        )
    camera = None
    if options.flap_every_s > 0:
        from engine.sources.supervised import ReconnectPolicy, open_supervised
        from tests.helpers_live import RtspCamera

        camera = RtspCamera(width=320, height=240, fps=15)
        camera.start()
        feeds.append(
            Feed(
                open_supervised(
                    camera.url("soak:secret"), source_id="rtsp", policy=ReconnectPolicy(stall_timeout_s=3.0)
                )
            )
        )
    spec = load_pipeline(options.pipeline)
    pipeline = Pipeline.from_spec(spec, with_drawing=options.write_video)
    ids = [f"cam{n}" for n in range(options.cameras)] + (["rtsp"] if camera else [])
    outputs = open_outputs(options.out / "outputs", pipeline, write_video=options.write_video, source_ids=ids)
    sampler = Sampler(pipeline, options.interval_s)
    duration_s = options.minutes * 60
    warmup_s = options.warmup_s if options.warmup_s is not None else duration_s / 5
    error: list[BaseException] = []

    def run() -> None:
        try:
            pipeline.run(feeds, outputs.sinks)
        except BaseException as failure:
            error.append(failure)

    runner = threading.Thread(target=run, name="soak-pipeline")
    print(
        f"soak: {options.cameras} replayed camera(s) at {options.fps:g} fps"
        + (f" + an RTSP camera flapping every {options.flap_every_s:g} s" if camera else "")
        + f", pipeline {options.pipeline}, {options.minutes:g} min",
        flush=True,
    )
    started_s = time.monotonic()
    sampler.start()
    runner.start()
    next_flap_s = started_s + options.flap_every_s
    flaps = 0
    while time.monotonic() - started_s < duration_s and runner.is_alive():
        time.sleep(0.2)
        if camera is not None and time.monotonic() >= next_flap_s:
            camera.kill()
            time.sleep(0.5)
            camera.start()
            flaps += 1
            next_flap_s += options.flap_every_s
    pipeline.request_stop()
    runner.join(timeout=60)
    sampler.stop()
    if camera is not None:
        camera.kill()
    if error:
        raise error[0]

    samples = sampler.samples
    verdict = memory_verdict(samples, warmup_s)
    after = [s for s in samples if s["t_s"] >= warmup_s] or samples
    report = {
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
        },
        "options": {key: str(value) for key, value in vars(options).items()},
        "duration_s": round(time.monotonic() - started_s, 1),
        "camera_kills": flaps,
        "memory": verdict,
        "fps_after_warmup": {
            "mean": round(float(np.mean([s["fps"] for s in after])), 2),
            "min": round(float(np.min([s["fps"] for s in after])), 2),
        },
        "frame_age_p99_ms_after_warmup": {
            "median": round(float(np.median([s["age_p99_ms"] for s in after if s["age_p99_ms"]])), 1),
            "max": round(float(np.max([s["age_p99_ms"] for s in after if s["age_p99_ms"]])), 1),
        },
        "pipeline_summary": pipeline.metrics.summary(),
        "samples": samples,
    }
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    if plt is not None:
        plot(
            plt,
            samples,
            warmup_s,
            options.out / "soak.png",
            f"{options.cameras} cameras @ {options.fps:g} fps, {options.pipeline} pipeline"
            + (f", RTSP camera killed {flaps}x" if camera else "")
            + f"; {platform.node()}",
        )

    print("\n| t (min) | RSS (MiB) | fps | age p50 (ms) | age p99 (ms) | dropped | reconnects |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    step = max(1, len(samples) // 12)
    for sample in samples[::step]:
        print(
            f"| {sample['t_s'] / 60:.1f} | {sample['rss_mb']:.1f} | {sample['fps']:.1f} | "
            f"{sample['age_p50_ms']} | {sample['age_p99_ms']} | {sample['dropped']} | "
            f"{sample['reconnects']} |"
        )
    print(f"\nmemory after {warmup_s:.0f} s warm-up: {verdict}")
    print(f"results in {options.out}/: soak.json" + (", soak.png" if plt is not None else ""))
    return 0 if verdict.get("flat") in (True, None) else 1


if __name__ == "__main__":
    sys.exit(main())
