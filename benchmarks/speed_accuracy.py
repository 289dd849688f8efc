"""Speed accuracy against synthetic ground truth: error vs speed, box jitter, n and k, and
calibration errors.

Each scene is a synthetic road (:mod:`engine.sources.synthetic_traffic`) seen by a camera like the
highway overpass video's (8 m above the median edge, looking down the carriageway at
approaching traffic). Vehicles (cars, vans, trucks, motorcycles, all lanes) drive at known
speeds from 20 to 150 km/h. Their ground-truth boxes go through the real stages: ``replay``
(from a MOT file, Gaussian jitter of every box coordinate, true ids as track ids so tracking
errors do not mix in) then ``speed`` with the scene's exact calibration, or one whose four
points were each moved by 1 or 2 px in a random direction. Every reported speed is compared
with the vehicle's true speed at that frame.

Cameras (``--cameras``):

- ``hd``: 1280x720 at 30 fps, 20° horizontal field of view (the main one: the targets are
  MAE <= 1.0 km/h and p95 <= 2.5 km/h with 2 px jitter and the exact calibration);
- ``video``: the overpass video's own camera as fitted to its lane marks: 320x240 at 60 fps,
  11.4° field of view (the real file's resolution; expect larger errors).

Motion (``--motion``): ``constant`` speeds (the accuracy tables) and ``accelerating`` (a third
accelerate or brake at 1-3 m/s², to show the moving average's lag).

Writes ``speed_accuracy.json``, ``speed_accuracy.md`` and ``speed_accuracy_*.png`` to
``--out`` and prints the tables::

    python benchmarks/speed_accuracy.py --out out/speed_accuracy [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from engine.frame import Batch, Frame, SourceInfo  # noqa: E402
from engine.sources.synthetic_traffic import CameraModel, RoadLayout, TrafficScene, Vehicle  # noqa: E402
from engine.stage import Context  # noqa: E402
from plugins.replay import ReplayDetector  # noqa: E402
from plugins.speed import SpeedEstimator  # noqa: E402

SPEEDS_KMH = (20, 30, 50, 70, 90, 110, 130, 150)
KINDS = ("car", "car", "van", "truck", "car", "motorcycle")


@dataclass(frozen=True)
class Setting:
    """One speed-stage configuration: n, k and the stride between windows."""

    n: int
    k: int
    stride: int

    @property
    def name(self) -> str:
        mode = "sliding" if self.stride == 1 else f"stride {self.stride}"
        return f"n={self.n} k={self.k} {mode}"


def camera_scene(camera: str) -> TrafficScene:
    """Return the empty road scene of a camera preset (see the module docstring)."""
    road = RoadLayout(lanes=2 if camera == "video" else 3)
    if camera == "hd":
        model = CameraModel(
            width=1280,
            height=720,
            hfov_deg=20.0,
            height_m=8.0,
            tilt_deg=9.0,
            pan_deg=-3.0,
            x_m=road.width_m + 0.8,
        )
        return TrafficScene(camera=model, road=road, fps=30.0)
    if camera == "video":  # the fit of calibrations/highway_overpass.yaml's notes
        model = CameraModel(
            width=320,
            height=240,
            hfov_deg=11.35,
            height_m=7.95,
            tilt_deg=6.24,
            pan_deg=-4.14,
            x_m=road.width_m + 0.66,
        )
        return TrafficScene(camera=model, road=road, fps=60.0)
    raise SystemExit(f"unknown camera {camera!r}")


def traffic(scene: TrafficScene, motion: str, seed: int) -> TrafficScene:
    """Add one vehicle per (speed, lane) pair, staggered, entering just beyond the zone."""
    rng = np.random.default_rng(seed)
    _, far = scene.visible_y_range_m()
    vehicles: list[Vehicle] = []
    for lane in range(scene.road.lanes):
        for speed in SPEEDS_KMH:
            vehicle_id = len(vehicles) + 1
            target, accel = None, 0.0
            if motion == "accelerating" and vehicle_id % 3 == 0:
                target = float(np.clip(speed + rng.choice([-1, 1]) * rng.uniform(15, 30), 10, 170))
                accel = float(rng.uniform(1.0, 3.0))
            vehicles.append(
                Vehicle(
                    vehicle_id=vehicle_id,
                    lane=lane,
                    enter_s=float(rng.uniform(0.0, 3.0)),
                    speed_kmh=float(speed),
                    start_y_m=far + 15.0 + float(rng.uniform(0, 10)),
                    target_speed_kmh=target,
                    acceleration_ms2=accel,
                    kind=KINDS[vehicle_id % len(KINDS)],
                )
            )
    near, _ = scene.visible_y_range_m()
    slowest_s = (far + 25.0 - near + 15.0) / (min(SPEEDS_KMH) / 3.6 * 0.6)
    frames = int((3.0 + slowest_s) * scene.fps)
    return replace(scene, vehicles=vehicles, frames=frames)


def write_mot(scene: TrafficScene, path: Path) -> dict[int, dict[int, float]]:
    """Write the scene's ground truth as a MOT file; return {frame: {id: true km/h}}."""
    truth: dict[int, dict[int, float]] = {}
    lines = []
    for frame in range(scene.frames):
        t = scene.truth(frame)
        truth[frame] = dict(zip(t.vehicle_id.tolist(), t.speed_kmh.tolist(), strict=True))
        for vehicle_id, (x1, y1, x2, y2) in zip(t.vehicle_id.tolist(), t.xyxy.tolist(), strict=True):
            lines.append(f"{frame + 1},{vehicle_id},{x1:.4f},{y1:.4f},{x2 - x1:.4f},{y2 - y1:.4f},1,-1,-1,-1")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return truth


def run_once(
    scene: TrafficScene,
    mot: Path,
    truth: dict[int, dict[int, float]],
    calibration: Path,
    setting: Setting,
    jitter_px: float,
    seed: int,
) -> dict[str, Any]:
    """Replay + speed over the whole scene; return errors and coverage."""
    info = SourceInfo(
        "bench", "synthetic", scene.camera.width, scene.camera.height, scene.fps, False, scene.frames
    )
    context = Context(sources={"bench": info})
    replay = ReplayDetector(path=mot, jitter_px=jitter_px, seed=seed, track_ids=True)
    speed = SpeedEstimator(
        calibration=calibration,
        window_frames=setting.n,
        smoothing_window=setting.k,
        window_stride=setting.stride,
        shift_statistic="off",
    )
    replay.open(context)
    speed.open(context)
    image = np.zeros((scene.camera.height, scene.camera.width, 3), dtype=np.uint8)
    errors, true_speeds, in_zone, with_speed = [], [], 0, 0
    first_frame: dict[int, int] = {}
    first_speed: dict[int, int] = {}
    for number in range(scene.frames):
        frame = Frame(source_id="bench", index=number, pts_ns=scene.pts_ns(number), image=image)
        batch = Batch([frame])
        speed(replay(batch))
        detections = frame.layers["objects"]
        if len(detections) == 0:
            continue
        measured = np.asarray(detections.data["speed_kmh"])
        zone = np.isfinite(np.asarray(detections.data["world_xy_m"])).all(axis=1)
        in_zone += int(zone.sum())
        ids = np.asarray(detections.tracker_id)
        for vehicle_id, value, inside in zip(ids.tolist(), measured.tolist(), zone.tolist(), strict=True):
            if inside:
                first_frame.setdefault(vehicle_id, number)
            if value == value:  # not NaN
                with_speed += 1
                first_speed.setdefault(vehicle_id, number)
                true = truth[number][vehicle_id]
                errors.append(value - true)
                true_speeds.append(true)
    speed.end_of_stream("bench")
    totals = speed.summary()["sources"]["bench"]["totals"]
    delays = [first_speed[v] - first_frame[v] for v in first_speed if v in first_frame]
    return {
        "errors": np.asarray(errors),
        "true": np.asarray(true_speeds),
        "coverage": with_speed / max(in_zone, 1),
        "first_speed_delay_s": float(np.median(delays)) / scene.fps if delays else float("nan"),
        "rejected": totals["rejected_max_speed"] + totals["rejected_max_acceleration"],
        "restarts": totals["restarts"],
    }


def stats(errors: np.ndarray) -> dict[str, float]:
    """MAE, p95 of |error|, bias (mean signed error), all in km/h."""
    if len(errors) == 0:
        return {"mae_kmh": float("nan"), "p95_kmh": float("nan"), "bias_kmh": float("nan"), "count": 0}
    absolute = np.abs(errors)
    return {
        "mae_kmh": float(absolute.mean()),
        "p95_kmh": float(np.percentile(absolute, 95)),
        "bias_kmh": float(errors.mean()),
        "count": int(len(errors)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/speed_accuracy"))
    parser.add_argument("--cameras", default="hd,video")
    parser.add_argument("--seeds", type=int, default=3, help="traffic and jitter seeds per condition")
    parser.add_argument("--perturb-draws", type=int, default=20, help="random calibrations per perturbation")
    parser.add_argument("--quick", action="store_true", help="fewer settings and seeds (a smoke run)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = 1 if args.quick else args.seeds
    draws = 4 if args.quick else args.perturb_draws
    jitters = (0.0, 1.0, 2.0, 3.0, 4.0)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
        },
        "cameras": {},
    }
    for camera in args.cameras.split(","):
        fps_scale = 2 if camera == "video" else 1  # windows in frames: keep the same seconds at 60 fps
        settings = [
            Setting(
                n * fps_scale, k * fps_scale if stride == 1 else k, stride * fps_scale if stride > 1 else 1
            )
            for n, k, stride in (
                [(10, 10, 1), (15, 15, 1), (20, 20, 1)]
                if args.quick
                else [
                    (5, 5, 1),
                    (10, 5, 1),
                    (10, 10, 1),
                    (15, 10, 1),
                    (15, 15, 1),
                    (20, 20, 1),
                    (10, 3, 10),
                    (15, 3, 15),
                    (15, 5, 15),
                ]
            )
        ]
        camera_result: dict[str, Any] = {
            "fps": None,
            "settings": {},
            "by_speed": {},
            "perturbation": {},
            "accelerating": {},
        }
        with tempfile.TemporaryDirectory() as tmp:
            scenes = {}
            for motion in ("constant", "accelerating"):
                for seed in range(seeds):
                    scene = traffic(camera_scene(camera), motion, seed)
                    mot = Path(tmp) / f"{motion}_{seed}.txt"
                    scenes[(motion, seed)] = (scene, mot, write_mot(scene, mot))
            base = scenes[("constant", 0)][0]
            camera_result["fps"] = base.fps
            camera_result["size"] = [base.camera.width, base.camera.height]
            exact = Path(tmp) / "exact.yaml"
            base.calibration().save(exact)
            for setting in settings:
                rows = {}
                for jitter in jitters:
                    runs = [
                        run_once(*scenes[("constant", s)], exact, setting, jitter, s) for s in range(seeds)
                    ]
                    errors = np.concatenate([r["errors"] for r in runs])
                    rows[str(jitter)] = {
                        **stats(errors),
                        "coverage": float(np.mean([r["coverage"] for r in runs])),
                        "first_speed_delay_s": float(np.mean([r["first_speed_delay_s"] for r in runs])),
                        "rejected": int(sum(r["rejected"] for r in runs)),
                    }
                camera_result["settings"][setting.name] = rows
                print(
                    f"[{camera}] {setting.name}: 2 px jitter MAE {rows['2.0']['mae_kmh']:.2f} "
                    f"p95 {rows['2.0']['p95_kmh']:.2f}  ({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
            # The chosen setting: the quickest (first speed soonest) that meets both targets at
            # 2 px; when none does, the one with the best p95.
            at_2px = {s.name: camera_result["settings"][s.name]["2.0"] for s in settings}
            passing = [
                s for s in settings if at_2px[s.name]["mae_kmh"] <= 1.0 and at_2px[s.name]["p95_kmh"] <= 2.5
            ]
            if passing:
                chosen = min(
                    passing, key=lambda s: (at_2px[s.name]["first_speed_delay_s"], at_2px[s.name]["p95_kmh"])
                )
            else:
                chosen = min(settings, key=lambda s: at_2px[s.name]["p95_kmh"])
            camera_result["chosen"] = chosen.name
            runs = [run_once(*scenes[("constant", s)], exact, chosen, 2.0, s) for s in range(seeds)]
            errors = np.concatenate([r["errors"] for r in runs])
            true = np.concatenate([r["true"] for r in runs])
            for speed in SPEEDS_KMH:
                near = np.abs(true - speed) < 0.5
                camera_result["by_speed"][str(speed)] = stats(errors[near])
            accelerating = [
                run_once(*scenes[("accelerating", s)], exact, chosen, 2.0, s) for s in range(seeds)
            ]
            camera_result["accelerating"] = stats(np.concatenate([r["errors"] for r in accelerating]))
            for perturb in (1.0, 2.0):
                biases, maes = [], []
                for draw in range(draws):
                    rng = np.random.default_rng(1000 + draw)
                    path = Path(tmp) / f"perturbed_{perturb}_{draw}.yaml"
                    base.calibration(perturb_px=perturb, rng=rng).save(path)
                    runs = [run_once(*scenes[("constant", s)], path, chosen, 2.0, s) for s in range(seeds)]
                    errors = np.concatenate([r["errors"] for r in runs])
                    true = np.concatenate([r["true"] for r in runs])
                    biases.append(float(np.mean(errors / true)) * 100.0)
                    maes.append(stats(errors)["mae_kmh"])
                camera_result["perturbation"][str(perturb)] = {
                    "draws": draws,
                    "scale_bias_percent": biases,
                    "median_abs_scale_bias_percent": float(np.median(np.abs(biases))),
                    "max_abs_scale_bias_percent": float(np.max(np.abs(biases))),
                    "mae_kmh_median": float(np.median(maes)),
                    "mae_kmh_max": float(np.max(maes)),
                }
        results["cameras"][camera] = camera_result
    results["elapsed_s"] = time.perf_counter() - started
    (args.out / "speed_accuracy.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    markdown = render_markdown(results)
    (args.out / "speed_accuracy.md").write_text(markdown, encoding="utf-8")
    plot(results, args.out)
    print(markdown)
    return 0


def render_markdown(results: dict[str, Any]) -> str:
    """Tables of every camera: settings × jitter, error by speed, calibration sensitivity."""
    lines = []
    for camera, result in results["cameras"].items():
        width, height = result["size"]
        lines += [
            f"## Camera `{camera}`: {width}x{height} at {result['fps']:.0f} fps",
            "",
            "MAE / p95 of |error| in km/h, constant speeds 20-150 km/h, exact calibration; "
            "coverage = share of in-zone vehicle-frames with a speed; delay = median time from "
            "zone entry to the first speed.",
            "",
            "| setting | 0 px | 1 px | 2 px | 3 px | 4 px | coverage (2 px) | delay (2 px) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, rows in result["settings"].items():
            cells = [
                f"{rows[j]['mae_kmh']:.2f} / {rows[j]['p95_kmh']:.2f}"
                for j in ("0.0", "1.0", "2.0", "3.0", "4.0")
            ]
            mark = " **(chosen)**" if name == result["chosen"] else ""
            lines.append(
                f"| {name}{mark} | "
                + " | ".join(cells)
                + f" | {rows['2.0']['coverage']:.0%} | {rows['2.0']['first_speed_delay_s']:.2f} s |"
            )
        lines += [
            "",
            f"Error by true speed ({result['chosen']}, 2 px jitter):",
            "",
            "| km/h | MAE | p95 | bias |",
            "|---|---|---|---|",
        ]
        for speed, row in result["by_speed"].items():
            lines.append(
                f"| {speed} | {row['mae_kmh']:.2f} | {row['p95_kmh']:.2f} | {row['bias_kmh']:+.2f} |"
            )
        acc = result["accelerating"]
        lines += [
            "",
            f"With a third of the vehicles accelerating or braking at 1-3 m/s² (2 px): "
            f"MAE {acc['mae_kmh']:.2f}, p95 {acc['p95_kmh']:.2f}, bias {acc['bias_kmh']:+.2f} km/h "
            "(the moving average lags a changing speed).",
            "",
            "Calibration sensitivity (each of the 4 points moved by p px in a random direction; "
            "2 px jitter): scale bias = mean of error / true speed over all vehicles.",
            "",
            "| p | draws | median abs. scale bias | worst | MAE median | MAE worst |",
            "|---|---|---|---|---|---|",
        ]
        for perturb, row in result["perturbation"].items():
            lines.append(
                f"| {perturb} px | {row['draws']} | {row['median_abs_scale_bias_percent']:.2f} % | "
                f"{row['max_abs_scale_bias_percent']:.2f} % | {row['mae_kmh_median']:.2f} | "
                f"{row['mae_kmh_max']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(results: dict[str, Any], out: Path) -> None:
    """PNG plots: MAE and p95 against jitter per setting; error by speed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for camera, result in results["cameras"].items():
        figure, axes = plt.subplots(1, 3, figsize=(16, 4.5))
        jitters = [0.0, 1.0, 2.0, 3.0, 4.0]
        for name, rows in result["settings"].items():
            style = "-" if name == result["chosen"] else "--"
            axes[0].plot(jitters, [rows[str(j)]["mae_kmh"] for j in jitters], style, marker="o", label=name)
            axes[1].plot(jitters, [rows[str(j)]["p95_kmh"] for j in jitters], style, marker="o", label=name)
        for axis, target, title in ((axes[0], 1.0, "MAE (km/h)"), (axes[1], 2.5, "p95 |error| (km/h)")):
            axis.axhline(target, color="red", linewidth=0.8)
            axis.set_xlabel("box jitter σ (px)")
            axis.set_title(title)
            axis.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        speeds = [int(s) for s in result["by_speed"]]
        axes[2].bar(
            [str(s) for s in speeds], [result["by_speed"][str(s)]["mae_kmh"] for s in speeds], label="MAE"
        )
        axes[2].plot(
            [str(s) for s in speeds],
            [result["by_speed"][str(s)]["p95_kmh"] for s in speeds],
            "k^",
            label="p95",
        )
        axes[2].set_xlabel("true speed (km/h)")
        axes[2].set_title(f"{result['chosen']}, 2 px jitter")
        axes[2].legend()
        width, height = result["size"]
        figure.suptitle(f"speed error, camera {camera} ({width}x{height}, {result['fps']:.0f} fps)")
        figure.tight_layout()
        figure.savefig(out / f"speed_accuracy_{camera}.png", dpi=110)
        plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
