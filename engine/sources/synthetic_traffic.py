"""Synthetic traffic with ground truth: a road plane seen by a pinhole camera, vehicles at
known speeds, rendered frames, ground-truth boxes and true speeds per frame.

Convention:
    - World frame (metres): x across the road, y along it (away from the camera), z up; the
      road is the plane z = 0. Lanes are ``[i * lane_width_m, (i + 1) * lane_width_m]``.
    - The camera (no lens distortion, principal point at the image centre, square pixels)
      sits at ``(x_m, y_m, height_m)``, panned by ``pan_deg`` about z and tilted down by
      ``tilt_deg``. Its ground homography (world xy → pixels) is exact, so a calibration
      built from world rectangle corners is the true one.
    - Vehicles are rigid boxes (a body and a cabin) driving along a lane, toward the camera
      (``direction = -1``) or away from it (``+1``), at a speed that moves toward a target
      with a constant acceleration, optionally changing lane on a smooth (cosine) profile.
      The true speed is the norm of the footprint centre's velocity.
    - A ground-truth box is the bounding box of a vehicle's projected corners, clipped to the
      image; ``truncated`` marks boxes cut by the image border. Frame ``k`` is at
      ``k / fps`` seconds.
    - Camera bump: with ``bump_s`` and ``camera_after``, the camera is ``camera_after`` from
      that time on (a pole hit by wind, a PTZ preset drift): a calibration of the first view
      no longer fits, as in the field.
    - Traffic keeps its distance (:func:`follow_traffic`, used by :func:`random_vehicles`):
      each vehicle follows the one ahead in its lane (Gipps' safe speed), enters and changes
      lane only into room, so no vehicle drives through another and braking comes from the
      traffic too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import cv2
import numpy as np

from engine.geometry.calibration import Calibration

#: Vehicle kinds: (length_m, width_m, height_m, share of random traffic).
VEHICLE_KINDS: dict[str, tuple[float, float, float, float]] = {
    "car": (4.5, 1.8, 1.45, 0.70),
    "van": (5.3, 2.0, 2.2, 0.15),
    "truck": (12.0, 2.5, 3.6, 0.10),
    "motorcycle": (2.1, 0.8, 1.4, 0.05),
}
_COLORS = [(40, 40, 200), (200, 200, 200), (30, 30, 30), (180, 90, 20), (40, 140, 40), (0, 180, 220)]


@dataclass(frozen=True)
class CameraModel:
    """A pinhole camera above the road (see the module convention)."""

    width: int = 1280
    height: int = 720
    hfov_deg: float = 20.0
    height_m: float = 8.0
    tilt_deg: float = 7.0
    pan_deg: float = -3.0
    x_m: float = 8.0
    y_m: float = 0.0

    @property
    def focal_px(self) -> float:
        """Focal length in pixels."""
        return self.width / 2.0 / math.tan(math.radians(self.hfov_deg) / 2.0)

    def _axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        tilt, pan = math.radians(self.tilt_deg), math.radians(self.pan_deg)
        forward = np.array([math.sin(pan) * math.cos(tilt), math.cos(pan) * math.cos(tilt), -math.sin(tilt)])
        right = np.array([math.cos(pan), -math.sin(pan), 0.0])
        down = np.cross(forward, right)
        return forward, right, down

    def projection_matrix(self) -> np.ndarray:
        """Return the 3×4 matrix mapping homogeneous world points to homogeneous pixels."""
        return self._projection

    @cached_property
    def _projection(self) -> np.ndarray:
        # Computed once per camera: truth() projects every vehicle of every frame.
        forward, right, down = self._axes()
        rotation = np.stack([right, down, forward])
        center = np.array([self.x_m, self.y_m, self.height_m])
        f = self.focal_px
        intrinsics = np.array([[f, 0.0, self.width / 2.0], [0.0, f, self.height / 2.0], [0.0, 0.0, 1.0]])
        return intrinsics @ np.hstack([rotation, (-rotation @ center)[:, None]])

    def project(self, points_xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project ``(n, 3)`` world points; return ``(n, 2)`` pixels and ``(n,)`` depths (m)."""
        pts = np.asarray(points_xyz, dtype=np.float64).reshape(-1, 3)
        matrix = self._projection
        homogeneous = pts @ matrix[:, :3].T + matrix[:, 3]
        depth = homogeneous[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            pixels = homogeneous[:, :2] / depth[:, None]
        return pixels, depth

    def ground_homography(self) -> np.ndarray:
        """Return the exact 3×3 homography from road-plane metres (x, y) to pixels."""
        matrix = self.projection_matrix()[:, [0, 1, 3]]
        return matrix / matrix[2, 2]


@dataclass(frozen=True)
class RoadLayout:
    """Lanes and markings of the road (US interstate style by default)."""

    lanes: int = 3
    lane_width_m: float = 3.66
    dash_m: float = 3.05
    gap_m: float = 9.14
    line_width_m: float = 0.15
    shoulder_m: float = 1.5

    @property
    def width_m(self) -> float:
        """Width of the carriageway (all lanes) in metres."""
        return self.lanes * self.lane_width_m

    def lane_center_m(self, lane: float) -> float:
        """World x of a lane's centre (lane 0 is the one at x = 0)."""
        return (lane + 0.5) * self.lane_width_m


@dataclass(frozen=True)
class Vehicle:
    """One vehicle's size and motion.

    Attributes:
        vehicle_id: Ground-truth id (>= 1).
        lane: Lane index it starts in.
        enter_s: Time at which it is at ``start_y_m``.
        speed_kmh: Speed at ``enter_s``.
        start_y_m: World y at ``enter_s``.
        direction: -1 drives toward the camera (y decreasing), +1 away from it.
        target_speed_kmh: Speed it accelerates or brakes toward (None: constant speed).
        acceleration_ms2: Magnitude of that acceleration (m/s²).
        lane_change: ``(start_s, duration_s, to_lane)``, times relative to ``enter_s``.
        kind: One of :data:`VEHICLE_KINDS`.
        color: BGR body colour.
        trajectory: ``(times_s, distances_m, speeds_ms)`` sampled by the car-following
            simulation (:func:`follow_traffic`), speeds linear between samples; replaces the
            free motion above (the lane change still applies). None: the free motion.
    """

    vehicle_id: int
    lane: float
    enter_s: float
    speed_kmh: float
    start_y_m: float
    direction: int = -1
    target_speed_kmh: float | None = None
    acceleration_ms2: float = 0.0
    lane_change: tuple[float, float, float] | None = None
    kind: str = "car"
    color: tuple[int, int, int] = (40, 40, 200)
    trajectory: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(
        default=None, compare=False, repr=False
    )

    @property
    def size_m(self) -> tuple[float, float, float]:
        """``(length, width, height)`` in metres."""
        length, width, height, _ = VEHICLE_KINDS[self.kind]
        return length, width, height

    def free_motion(self, tau_s: float) -> tuple[float, float]:
        """``(distance_m, speed_ms)`` ``tau_s`` after entry, driving as the vehicle wishes."""
        tau = tau_s
        v0 = self.speed_kmh / 3.6
        target = v0 if self.target_speed_kmh is None else self.target_speed_kmh / 3.6
        a = math.copysign(abs(self.acceleration_ms2), target - v0) if target != v0 else 0.0
        t_ramp = abs(target - v0) / abs(a) if a else 0.0
        if tau <= t_ramp:
            return v0 * tau + 0.5 * a * tau * tau, v0 + a * tau
        return v0 * t_ramp + 0.5 * a * t_ramp * t_ramp + target * (tau - t_ramp), target

    def _followed(self, t_s: float) -> tuple[float, float]:
        times, distances, speeds = self.trajectory  # type: ignore[misc]
        if t_s <= times[0]:
            return float(speeds[0] * (t_s - times[0])), float(speeds[0])
        if t_s >= times[-1]:
            return float(distances[-1] + speeds[-1] * (t_s - times[-1])), float(speeds[-1])
        k = max(int(np.searchsorted(times, t_s, side="right")) - 1, 0)
        step = times[k + 1] - times[k]
        tau = t_s - times[k]
        slope = (speeds[k + 1] - speeds[k]) / step
        return float(distances[k] + speeds[k] * tau + 0.5 * slope * tau * tau), float(speeds[k] + slope * tau)

    def state(self, t_s: float, road: RoadLayout) -> tuple[float, float, float, float]:
        """Return ``(x_m, y_m, vx_ms, vy_ms)`` of the footprint centre at time ``t_s``."""
        tau = t_s - self.enter_s
        distance, speed = self.free_motion(tau) if self.trajectory is None else self._followed(t_s)
        x = road.lane_center_m(self.lane)
        vx = 0.0
        if self.lane_change is not None:
            start, duration, to_lane = self.lane_change
            x1 = road.lane_center_m(to_lane)
            u = min(max((tau - start) / duration, 0.0), 1.0)
            x = x + (x1 - x) * (1.0 - math.cos(math.pi * u)) / 2.0
            if 0.0 < u < 1.0:
                vx = (x1 - road.lane_center_m(self.lane)) * math.pi / (2.0 * duration) * math.sin(math.pi * u)
        vy = self.direction * math.sqrt(max(speed * speed - vx * vx, 0.0))
        return x, self.start_y_m + self.direction * distance, vx, vy


@dataclass
class FrameTruth:
    """Ground truth of one frame; arrays are aligned, one row per vehicle in view.

    Attributes:
        frame: Frame number on the scene's timeline (from 0).
        pts_ns: Its timestamp.
        vehicle_id: ``(n,)`` int ids.
        xyxy: ``(n, 4)`` float boxes in pixels, clipped to the image.
        speed_kmh: ``(n,)`` true speeds.
        world_xy_m: ``(n, 2)`` footprint centres.
        truncated: ``(n,)`` bool, True where the image border cuts the box.
        kind: ``(n,)`` vehicle kinds.
    """

    frame: int
    pts_ns: int
    vehicle_id: np.ndarray
    xyxy: np.ndarray
    speed_kmh: np.ndarray
    world_xy_m: np.ndarray
    truncated: np.ndarray
    kind: np.ndarray


@dataclass
class TrafficScene:
    """A camera, a road and vehicles: renders frames and gives their ground truth."""

    camera: CameraModel = field(default_factory=CameraModel)
    road: RoadLayout = field(default_factory=RoadLayout)
    vehicles: Sequence[Vehicle] = ()
    fps: float = 30.0
    frames: int = 300
    bump_s: float = math.inf
    camera_after: CameraModel | None = None
    _backgrounds: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False)

    def time_s(self, frame: int) -> float:
        """Time of a frame on the scene's timeline."""
        return frame / self.fps

    def camera_at(self, t_s: float) -> CameraModel:
        """The camera at a time: ``camera_after`` from ``bump_s`` on, else ``camera``."""
        if self.camera_after is not None and t_s >= self.bump_s:
            return self.camera_after
        return self.camera

    def pts_ns(self, frame: int) -> int:
        """Timestamp in nanoseconds of a frame."""
        return round(frame * 1e9 / self.fps)

    def _corners(self, x: float, y: float, vehicle: Vehicle) -> tuple[np.ndarray, np.ndarray | None]:
        """Return the 8 corners of the body box and of the cabin box (None: no cabin).

        Corner order: x (left, right) × y (low, high) × z (bottom, top), z fastest.
        """
        length, width, height = vehicle.size_m
        has_cabin = vehicle.kind in ("car", "van")
        body_h = height * (0.6 if has_cabin else 1.0)

        def box(x0: float, x1: float, y0: float, y1: float, z0: float, z1: float) -> np.ndarray:
            return np.array([(cx, cy, cz) for cx in (x0, x1) for cy in (y0, y1) for cz in (z0, z1)])

        body = box(x - width / 2, x + width / 2, y - length / 2, y + length / 2, 0.0, body_h)
        if not has_cabin:
            return body, None
        # The cabin runs from 28 % to 78 % of the length counted from the vehicle's front.
        front = y + vehicle.direction * length / 2
        near, far = sorted(
            (front - vehicle.direction * 0.28 * length, front - vehicle.direction * 0.78 * length)
        )
        inset = 0.08 * width
        return body, box(x - width / 2 + inset, x + width / 2 - inset, near, far, body_h, height)

    def truth(self, frame: int) -> FrameTruth:
        """Return the ground truth of frame ``frame`` (vehicles at least partly in view)."""
        t = self.time_s(frame)
        camera = self.camera_at(t)
        rows = []
        for vehicle in self.vehicles:
            if t < vehicle.enter_s:
                continue
            x, y, vx, vy = vehicle.state(t, self.road)
            if (
                abs(y - camera.y_m) > 5000.0
                or (y - camera.y_m) * math.cos(math.radians(camera.pan_deg)) < -50.0
            ):
                continue  # long gone behind the camera (or kilometres away): not in view
            body, cabin = self._corners(x, y, vehicle)
            pixels, depth = camera.project(body if cabin is None else np.vstack([body, cabin]))
            if (depth <= 1.0).any():
                continue
            x1, y1 = pixels.min(axis=0)
            x2, y2 = pixels.max(axis=0)
            w, h = camera.width, camera.height
            if x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h:
                continue
            box = (max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h)))
            if box[2] - box[0] < 2.0 or box[3] - box[1] < 2.0:
                continue
            truncated = x1 < 0 or y1 < 0 or x2 > w or y2 > h
            rows.append((vehicle.vehicle_id, box, math.hypot(vx, vy) * 3.6, (x, y), truncated, vehicle.kind))
        return FrameTruth(
            frame=frame,
            pts_ns=self.pts_ns(frame),
            vehicle_id=np.array([r[0] for r in rows], dtype=np.int64),
            xyxy=np.array([r[1] for r in rows], dtype=np.float64).reshape(-1, 4),
            speed_kmh=np.array([r[2] for r in rows], dtype=np.float64),
            world_xy_m=np.array([r[3] for r in rows], dtype=np.float64).reshape(-1, 2),
            truncated=np.array([r[4] for r in rows], dtype=bool),
            kind=np.array([r[5] for r in rows], dtype=object),
        )

    # -- rendering --------------------------------------------------------------------------

    def _ground_polygon(
        self, camera: CameraModel, x0: float, x1: float, y0: float, y1: float
    ) -> np.ndarray | None:
        """Project a road-plane rectangle, clipped to the half-space 1 m in front of the camera."""
        corners = np.array([[x0, y0, 0.0], [x1, y0, 0.0], [x1, y1, 0.0], [x0, y1, 0.0]])
        _, depth = camera.project(corners)
        depth = depth - 1.0
        kept = []
        for i in range(4):  # Sutherland-Hodgman against the plane depth == 1 m
            j = (i + 1) % 4
            if depth[i] >= 0:
                kept.append(corners[i])
            if (depth[i] >= 0) != (depth[j] >= 0):
                u = depth[i] / (depth[i] - depth[j])
                kept.append(corners[i] + u * (corners[j] - corners[i]))
        if len(kept) < 3:
            return None
        pixels, _ = camera.project(np.array(kept))
        return np.round(np.clip(pixels, -1e5, 1e5) * 16).astype(np.int32)

    def background(self, camera: CameraModel | None = None) -> np.ndarray:
        """Return the empty road seen by ``camera`` (default: the first one), rendered once:
        sky, verges, asphalt, lane marks."""
        camera = camera or self.camera
        cached = self._backgrounds.get(id(camera))
        if cached is not None:
            return cached
        image = np.empty((camera.height, camera.width, 3), dtype=np.uint8)
        image[:] = (225, 200, 170)  # sky
        far = camera.y_m + 3000.0
        road = self.road

        def fill(x0: float, x1: float, y0: float, y1: float, color: tuple[int, int, int]) -> None:
            polygon = self._ground_polygon(camera, x0, x1, y0, y1)
            if polygon is not None:
                cv2.fillPoly(image, [polygon], color, cv2.LINE_AA, 4)

        fill(-400.0, 400.0, -1e3, far, (70, 130, 90))  # grass
        fill(-road.shoulder_m, road.width_m + road.shoulder_m, -1e3, far, (120, 122, 125))
        half = road.line_width_m / 2
        for edge, color in ((0.0, (235, 235, 235)), (road.width_m, (40, 200, 230))):
            fill(edge - half, edge + half, -1e3, far, color)
        cycle = road.dash_m + road.gap_m
        start = math.floor((camera.y_m - 50.0) / cycle) * cycle
        for lane in range(1, road.lanes):
            x = lane * road.lane_width_m
            for k in range(int((min(far, camera.y_m + 600.0) - start) / cycle) + 1):
                y = start + k * cycle
                fill(x - half, x + half, y, y + road.dash_m, (235, 235, 235))
        self._backgrounds[id(camera)] = image
        return image

    def render(self, frame: int) -> np.ndarray:
        """Return frame ``frame`` as an H×W×3 uint8 BGR image."""
        t = self.time_s(frame)
        camera = self.camera_at(t)
        image = self.background(camera).copy()
        drawn = []
        for vehicle in self.vehicles:
            if t < vehicle.enter_s:
                continue
            x, y, _, _ = vehicle.state(t, self.road)
            body, cabin = self._corners(x, y, vehicle)
            _, depth = camera.project(np.array([[x, y, 0.0]]))
            if depth[0] > 1.0:
                drawn.append((depth[0], vehicle, body, cabin))
        for _, vehicle, body, cabin in sorted(drawn, key=lambda item: -item[0]):
            self._draw_box(camera, image, body, vehicle.color, vehicle.direction)
            if cabin is not None:
                shade = tuple(int(c * 0.55) for c in vehicle.color)
                self._draw_box(camera, image, cabin, shade, vehicle.direction)
        return image

    def _draw_box(
        self,
        camera: CameraModel,
        image: np.ndarray,
        corners: np.ndarray,
        color: tuple[int, ...],
        direction: int,
    ) -> None:
        pixels, depth = camera.project(corners)
        if (depth <= 1.0).any():
            return
        points = np.round(pixels * 16).astype(np.int32)
        hull = cv2.convexHull(points)
        shade = tuple(int(c * 0.7) for c in color)
        cv2.fillConvexPoly(image, hull, shade, cv2.LINE_AA, 4)
        top = points[[1, 3, 7, 5]]  # z = high corners, in order around the face
        cv2.fillConvexPoly(image, top, tuple(min(255, int(c * 1.15) + 20) for c in color), cv2.LINE_AA, 4)
        near = [0, 1, 5, 4] if direction < 0 else [2, 3, 7, 6]  # the face toward the camera
        cv2.fillConvexPoly(image, points[near], color, cv2.LINE_AA, 4)
        cv2.polylines(image, [hull], True, (20, 20, 20), 1, cv2.LINE_AA, 4)

    # -- calibration ------------------------------------------------------------------------

    def rectangle(self, lane: int | None = None, cycles: int = 3, y0_m: float | None = None) -> np.ndarray:
        """Return world corners of a road rectangle: one lane wide, ``cycles`` dash cycles long.

        Order (0,0), (W,0), (W,L), (0,L) relative to the lane's left edge and ``y0_m``
        (default: the middle lane, from the first dash start 5 m or more beyond the image's
        bottom edge).
        """
        road = self.road
        lane = road.lanes // 2 if lane is None else lane
        cycle = road.dash_m + road.gap_m
        if y0_m is None:
            y0_m = math.ceil((self.visible_y_range_m()[0] + 5.0) / cycle) * cycle
        x0 = lane * road.lane_width_m
        length = cycles * cycle
        return np.array(
            [
                [x0, y0_m],
                [x0 + road.lane_width_m, y0_m],
                [x0 + road.lane_width_m, y0_m + length],
                [x0, y0_m + length],
            ]
        )

    def top_y_m(self, limit_m: float = 400.0) -> float:
        """World y of the road seen at the image's top edge (centre column), at most ``limit_m``."""
        inverse = np.linalg.inv(self.camera.ground_homography())
        point = np.array([self.camera.width / 2, 0.0, 1.0]) @ inverse.T
        if point[2] == 0 or point[1] / point[2] < self.camera.y_m:  # the horizon is in view
            return self.camera.y_m + limit_m
        return float(min(point[1] / point[2], self.camera.y_m + limit_m))

    def visible_y_range_m(self) -> tuple[float, float]:
        """World y of the road at the bottom and at 20 % from the top of the image (centre column)."""
        inverse = np.linalg.inv(self.camera.ground_homography())
        points = (
            np.array(
                [
                    [self.camera.width / 2, self.camera.height - 1, 1.0],
                    [self.camera.width / 2, self.camera.height * 0.2, 1.0],
                ]
            )
            @ inverse.T
        )
        ys = points[:, 1] / points[:, 2]
        return float(ys[0]), float(ys[1])

    def calibration(
        self,
        *,
        rectangle: np.ndarray | None = None,
        perturb_px: float = 0.0,
        rng: np.random.Generator | None = None,
        mask: bool = True,
    ) -> Calibration:
        """Return a calibration of this view built from a road rectangle.

        Args:
            rectangle: ``(4, 2)`` world corners (default :meth:`rectangle`).
            perturb_px: Move each image point by this many pixels in a random direction, to
                study how marking errors bias speeds.
            rng: Random generator for the perturbation.
            mask: Add a mask polygon covering the carriageway over the visible range.
        """
        world = self.rectangle() if rectangle is None else np.asarray(rectangle, dtype=np.float64)
        homography = self.camera.ground_homography()
        homogeneous = np.hstack([world, np.ones((4, 1))]) @ homography.T
        pixels = homogeneous[:, :2] / homogeneous[:, 2:]
        if perturb_px:
            rng = rng or np.random.default_rng()
            angles = rng.uniform(0.0, 2.0 * math.pi, size=4)
            pixels = pixels + perturb_px * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        origin = world[0]
        local = world - origin
        width_m = float(np.linalg.norm(local[1]))
        length_m = float(np.linalg.norm(local[3]))
        polygon = None
        if mask:
            near, far = self.visible_y_range_m()
            corners = np.array(
                [
                    [-0.5, near + 1.0],
                    [self.road.width_m + 0.5, near + 1.0],
                    [self.road.width_m + 0.5, far],
                    [-0.5, far],
                ]
            )
            projected = np.hstack([corners, np.ones((4, 1))]) @ homography.T
            quad = (projected[:, :2] / projected[:, 2:]).astype(np.float32)
            frame_rect = np.array(
                [
                    [0, 0],
                    [self.camera.width, 0],
                    [self.camera.width, self.camera.height],
                    [0, self.camera.height],
                ],
                dtype=np.float32,
            )
            _, inside = cv2.intersectConvexConvex(quad, frame_rect)
            polygon = None if inside is None else inside.reshape(-1, 2).astype(np.float64)
        return Calibration(
            camera="synthetic",
            image_width=self.camera.width,
            image_height=self.camera.height,
            image_points=pixels,
            width_m=width_m,
            length_m=length_m,
            mask=polygon,
            notes="generated from the synthetic scene's exact camera"
            + (f", points perturbed by {perturb_px} px" if perturb_px else ""),
        )


#: Car-following (:func:`follow_traffic`): simulation step (s), reaction time (s, Gipps' 2/3 s), standstill
#: gap (m), the braking a follower plans with and the acceleration it recovers with (m/s²).
_STEP_S = 0.05
_HEADWAY_S = 0.67
_GAP_M = 2.0
_BRAKE_MS2 = 6.0
_RECOVER_MS2 = 1.5
#: Free road kept beside a vehicle (m).
_SIDE_GAP_M = 0.3
#: Entries (:func:`random_vehicles`): time grid (s) and free road kept on the planned paths (m).
_ENTRY_STEP_S = 0.1
_ENTRY_GAP_M = 4.0


def _lateral(vehicle: Vehicle, road: RoadLayout, tau_s: float) -> float:
    x = road.lane_center_m(vehicle.lane)
    if vehicle.lane_change is None:
        return x
    start, duration, to_lane = vehicle.lane_change
    u = min(max((tau_s - start) / duration, 0.0), 1.0)
    return x + (road.lane_center_m(to_lane) - x) * (1.0 - math.cos(math.pi * u)) / 2.0


def _lateral_span(
    vehicle: Vehicle, change: tuple[float, float, float] | None, road: RoadLayout, tau_s: float
) -> tuple[float, float]:
    """Lowest and highest x of the footprint centre now and until its lane change ends."""
    x = _lateral(replace(vehicle, lane_change=change), road, tau_s)
    if change is None or not change[0] <= tau_s < change[0] + change[1]:
        return x, x
    goal = road.lane_center_m(change[2])
    return min(x, goal), max(x, goal)


def _safe_speed(gap_m: float, leader_ms: float) -> float:
    """Gipps' safe speed behind a leader ``gap_m`` ahead (see :func:`follow_traffic`)."""
    room = _BRAKE_MS2**2 * _HEADWAY_S**2 + leader_ms**2 + 2.0 * _BRAKE_MS2 * (gap_m - _GAP_M)
    return -_BRAKE_MS2 * _HEADWAY_S + math.sqrt(max(room, 0.0))


def follow_traffic(vehicles: Sequence[Vehicle], road: RoadLayout, *, travel_m: float) -> list[Vehicle]:
    """Drive the vehicles together, each following the one ahead of it in its lane.

    Each vehicle wants its free motion (:meth:`Vehicle.free_motion`: its speed, acceleration
    or braking); behind a slower one it keeps Gipps' safe speed,
    ``-b τ + sqrt(b² τ² + v_leader² + 2 b (gap - s0))`` (``τ`` = ``_HEADWAY_S``, ``b`` =
    ``_BRAKE_MS2``, ``s0`` = ``_GAP_M``; the speed from which it could stop behind a leader
    braking as hard), and never more than closes the gap to half of ``s0`` in one step. Once
    free again it regains its wished speed at ``_RECOVER_MS2``. A vehicle enters at its
    ``enter_s`` (beyond the view: it comes from upstream traffic) at the lower of its wished
    and its safe speed, or waits while its entry spot is taken; a lane change starts only
    when the target lane has ``s0`` and half a headway of room beside it, else it is called
    off. So no vehicle drives through another, and braking comes from the traffic too.
    Steps of ``_STEP_S`` until each vehicle has driven ``travel_m``.

    Returns:
        The vehicles, in the given order, with ``enter_s`` when they really entered, their
        ``trajectory`` and (where called off) no ``lane_change``.
    """
    n = len(vehicles)
    if n == 0:
        return []
    wanted = np.array([v.enter_s for v in vehicles])
    length = np.array([v.size_m[0] for v in vehicles])
    width = np.array([v.size_m[1] for v in vehicles])
    heading = np.array([v.direction for v in vehicles], dtype=np.float64)
    start_y = np.array([v.start_y_m for v in vehicles])
    changes: list[tuple[float, float, float] | None] = [v.lane_change for v in vehicles]
    entered = np.full(n, np.nan)
    distance = np.zeros(n)
    speed = np.zeros(n)
    done = np.zeros(n, dtype=bool)
    samples: list[list[tuple[float, float, float]]] = [[] for _ in range(n)]
    order = np.argsort(wanted, kind="stable")
    t = float(wanted.min())
    for _ in range(int(600.0 / _STEP_S)):
        active = np.isfinite(entered)  # done ones still drive: they lead those behind
        for i in order.tolist():  # entries, in order of their wish
            if np.isfinite(entered[i]) or wanted[i] > t + 1e-9:
                continue
            _, free = vehicles[i].free_motion(0.0)
            x_i = _lateral(vehicles[i], road, 0.0)
            clear = True
            entry_speed = free
            for j in np.flatnonzero(active).tolist():
                x_j = _lateral(replace(vehicles[j], lane_change=changes[j]), road, t - entered[j])
                if abs(x_i - x_j) < (width[i] + width[j]) / 2 + _SIDE_GAP_M:
                    gap = (
                        abs(start_y[j] + heading[j] * distance[j] - start_y[i]) - (length[i] + length[j]) / 2
                    )
                    if gap < _GAP_M:
                        clear = False
                        break
                    if heading[j] * (start_y[j] + heading[j] * distance[j] - start_y[i]) > 0:  # j is ahead
                        entry_speed = min(entry_speed, _safe_speed(gap, speed[j]))
            if clear:
                entered[i], speed[i] = t, entry_speed
                samples[i].append((t, 0.0, entry_speed))
                active[i] = True
        index = np.flatnonzero(active)
        if len(index) == 0 and np.isfinite(entered).all():
            break
        tau = t - entered[index]
        for k, i in enumerate(index.tolist()):  # lane changes start only into free room
            change = changes[i]
            if change is not None and change[0] <= tau[k] < change[0] + _STEP_S:
                x_to = road.lane_center_m(change[2])
                for j in index.tolist():
                    x_j = _lateral(replace(vehicles[j], lane_change=changes[j]), road, t - entered[j])
                    if j != i and abs(x_to - x_j) < (width[i] + width[j]) / 2 + _SIDE_GAP_M:
                        gap = abs(
                            distance[j] * heading[j] + start_y[j] - distance[i] * heading[i] - start_y[i]
                        )
                        if gap - (length[i] + length[j]) / 2 < _GAP_M + _HEADWAY_S * speed[i] / 2:
                            changes[i] = None
                            break
        # A vehicle changing lane takes room in both lanes from the start of the change.
        spans = np.array(
            [_lateral_span(vehicles[i], changes[i], road, t - entered[i]) for i in index.tolist()]
        )
        low = spans[:, 0] - width[index] / 2 - _SIDE_GAP_M / 2
        high = spans[:, 1] + width[index] / 2 + _SIDE_GAP_M / 2
        y = start_y[index] + heading[index] * distance[index]
        ahead = heading[index][:, None] * (y[None, :] - y[:, None])  # [i, j] > 0: j ahead of i
        gap = ahead - (length[index][:, None] + length[index][None, :]) / 2
        beside = (low[:, None] < high[None, :]) & (low[None, :] < high[:, None])
        leading = beside & (ahead > 0) & (heading[index][:, None] == heading[index][None, :])
        gap = np.where(leading, gap, np.inf)
        leader = np.argmin(gap, axis=1)
        new_speed = np.empty(len(index))
        for k, i in enumerate(index.tolist()):
            now_free = vehicles[i].free_motion(tau[k])[1]
            wish = vehicles[i].free_motion(tau[k] + _STEP_S)[1]
            if speed[i] < now_free - 1e-6:  # slowed down by traffic: recover gently
                wish = min(wish, speed[i] + _RECOVER_MS2 * _STEP_S)
            g = gap[k, leader[k]]
            if np.isfinite(g):
                v_lead = speed[index[leader[k]]]
                wish = min(wish, _safe_speed(g, v_lead), v_lead + (g - _GAP_M / 2) / _STEP_S)
            new_speed[k] = max(wish, 0.0)
        distance[index] += (speed[index] + new_speed) / 2 * _STEP_S
        speed[index] = new_speed
        t += _STEP_S
        for i in index.tolist():
            samples[i].append((t, float(distance[i]), float(speed[i])))
        done |= np.isfinite(entered) & (distance >= travel_m)
        if done.all():
            break
    followed = []
    for i, vehicle in enumerate(vehicles):
        rows = samples[i]
        if not rows:  # it found no room within the simulated time: it never comes into view
            rows = [(float(wanted[i]) + 600.0, 0.0, vehicle.free_motion(0.0)[1])]
        if len(rows) == 1:
            t0, d0, v0 = rows[0]
            rows = [rows[0], (t0 + _STEP_S, d0 + v0 * _STEP_S, v0)]
        table = np.array(rows, dtype=np.float64)
        followed.append(
            replace(
                vehicle,
                enter_s=float(table[0, 0]),
                lane_change=changes[i],
                trajectory=(table[:, 0].copy(), table[:, 1].copy(), table[:, 2].copy()),
            )
        )
    return followed


def _path(vehicle: Vehicle, road: RoadLayout, travel_m: float) -> np.ndarray:
    """``(m, 2)`` footprint centres every ``_ENTRY_STEP_S`` from entry until ``travel_m`` is covered."""
    points = []
    for k in range(int(600 / _ENTRY_STEP_S)):
        x, y, _, _ = vehicle.state(vehicle.enter_s + k * _ENTRY_STEP_S, road)
        points.append((x, y))
        if abs(y - vehicle.start_y_m) >= travel_m:
            break
    return np.asarray(points)


def _conflicts(
    candidate: tuple[int, np.ndarray, Vehicle], placed: list[tuple[int, np.ndarray, Vehicle]]
) -> bool:
    """True when the candidate's path comes closer than the safe gap to a placed vehicle's."""
    start, path, vehicle = candidate
    length, width, _ = vehicle.size_m
    for other_start, other_path, other in placed:
        first = max(start, other_start)
        last = min(start + len(path), other_start + len(other_path))
        if last <= first:
            continue
        mine = path[first - start : last - start]
        theirs = other_path[first - other_start : last - other_start]
        other_length, other_width, _ = other.size_m
        beside = np.abs(mine[:, 0] - theirs[:, 0]) < (width + other_width) / 2 + _SIDE_GAP_M
        behind = np.abs(mine[:, 1] - theirs[:, 1]) < (length + other_length) / 2 + _ENTRY_GAP_M
        if (beside & behind).any():
            return True
    return False


def random_vehicles(
    rng: np.random.Generator,
    count: int,
    *,
    road: RoadLayout,
    start_s: float,
    end_s: float,
    start_y_m: float,
    travel_m: float,
    speed_range_kmh: tuple[float, float] = (20.0, 150.0),
    behaviours: bool = True,
    following: bool = True,
) -> list[Vehicle]:
    """Draw ``count`` approaching vehicles entering between ``start_s`` and ``end_s``.

    With ``behaviours``, about a quarter accelerate or brake (1–3 m/s²) toward another speed
    and about a sixth change lane; the rest keep a constant speed. A vehicle enters (on a
    ``_ENTRY_STEP_S`` grid) when its planned path keeps ``_ENTRY_GAP_M`` to every vehicle
    already placed beside it (a driver waiting for a gap; it may enter after ``end_s`` in
    dense traffic), and then, with ``following``, they drive together
    (:func:`follow_traffic`): each follows the one ahead in its lane (braking behind a
    slower one) and changes lane only into room. Either way no vehicle drives through another.
    """
    kinds = list(VEHICLE_KINDS)
    shares = np.array([VEHICLE_KINDS[k][3] for k in kinds])
    entries = np.sort(rng.uniform(start_s, end_s, size=count))
    vehicles: list[Vehicle] = []
    placed: list[tuple[int, np.ndarray, Vehicle]] = []
    for vehicle_id, wanted in enumerate(entries.tolist(), start=1):
        lane = int(rng.integers(road.lanes))
        speed = float(rng.uniform(*speed_range_kmh))
        kind = str(rng.choice(kinds, p=shares / shares.sum()))
        target, accel, change = None, 0.0, None
        draw = rng.uniform()
        if behaviours and draw < 0.25:
            target = float(np.clip(speed + rng.choice([-1, 1]) * rng.uniform(15.0, 40.0), *speed_range_kmh))
            accel = float(rng.uniform(1.0, 3.0))
        elif behaviours and draw < 0.42 and road.lanes > 1:
            to_lane = lane + (1 if lane == 0 else -1 if lane == road.lanes - 1 else int(rng.choice([-1, 1])))
            change = (float(rng.uniform(0.3, 1.5)), float(rng.uniform(2.0, 4.0)), float(to_lane))
        vehicle = Vehicle(
            vehicle_id=vehicle_id,
            lane=lane,
            enter_s=0.0,
            speed_kmh=speed,
            start_y_m=start_y_m,
            direction=-1,
            target_speed_kmh=target,
            acceleration_ms2=accel,
            lane_change=change,
            kind=kind,
            color=_COLORS[int(rng.integers(len(_COLORS)))],
        )
        path = _path(vehicle, road, travel_m)  # relative to the entry: the same whenever it enters
        step = math.ceil(wanted / _ENTRY_STEP_S)
        while _conflicts((step, path, vehicle), placed):
            step += 1
        vehicle = replace(vehicle, enter_s=step * _ENTRY_STEP_S)
        placed.append((step, path, vehicle))
        vehicles.append(vehicle)
    return follow_traffic(vehicles, road, travel_m=travel_m) if following else vehicles


def highway_scene(
    *,
    bump_s: float = math.inf,
    bump_tilt_deg: float = 0.0,
    bump_pan_deg: float = 0.0,
    fps: float = 30.0,
    frames: int = 300,
    seed: int = 1,
    width: int = 1280,
    height: int = 720,
    vehicles: int = 12,
    lanes: int = 3,
    hfov_deg: float = 20.0,
    speed_range_kmh: tuple[float, float] = (20.0, 150.0),
    behaviours: bool = True,
    following: bool = True,
) -> TrafficScene:
    """Return a view like the highway overpass video, with random approaching traffic.

    The camera is 8 m above the median edge of the carriageway, tilted 9° down and panned
    3° toward the road (the overpass video's camera, fitted to its lane marks, sits 7.95 m
    high, tilted 6.2°, panned 4.1°); ``hfov_deg`` sets the zoom. From ``bump_s`` on, the
    camera is tilted by ``bump_tilt_deg`` more and panned by ``bump_pan_deg`` more (a bump).
    """
    road = RoadLayout(lanes=lanes)
    camera = CameraModel(
        width=width,
        height=height,
        hfov_deg=hfov_deg,
        height_m=8.0,
        tilt_deg=9.0,
        pan_deg=-3.0,
        x_m=road.width_m + 0.8,
        y_m=0.0,
    )
    camera_after = None
    if bump_tilt_deg or bump_pan_deg:
        camera_after = replace(
            camera, tilt_deg=camera.tilt_deg + bump_tilt_deg, pan_deg=camera.pan_deg + bump_pan_deg
        )
    scene = TrafficScene(
        camera=camera, road=road, fps=fps, frames=frames, bump_s=bump_s, camera_after=camera_after
    )
    near, _ = scene.visible_y_range_m()
    top = scene.top_y_m()
    start_y = top + 8.0  # just beyond the top edge: vehicles drive into view
    duration = frames / fps
    rng = np.random.default_rng(seed)
    # Entries from before the first frame, so that the clip opens on traffic already in view.
    lead = (start_y - near) / (speed_range_kmh[1] / 3.6)
    scene.vehicles = random_vehicles(
        rng,
        vehicles,
        road=road,
        start_s=-lead,
        end_s=max(duration - 1.0, 0.1),
        start_y_m=start_y,
        travel_m=start_y - near + 10.0,
        speed_range_kmh=speed_range_kmh,
        behaviours=behaviours,
        following=following,
    )
    return scene
