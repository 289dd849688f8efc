"""Small factories shared by the tests: frames, in-memory sources and sinks, probe stages."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import supervision as sv

from engine.errors import SourceError
from engine.frame import Batch, Frame, SourceInfo
from engine.stage import BaseStage, Context


def make_frame(
    index: int = 0,
    *,
    source_id: str = "cam0",
    width: int = 64,
    height: int = 48,
    fps: float = 25.0,
    value: int = 0,
) -> Frame:
    """A frame of one flat grey level with a pts matching its index at ``fps``."""
    image = np.full((height, width, 3), value, dtype=np.uint8)
    return Frame(source_id=source_id, index=index, pts_ns=int(index * 1e9 / fps), image=image)


def make_detections(
    xyxy: list[list[float]], *, class_id: int = 0, confidence: float = 0.9, class_name: str = "car"
) -> sv.Detections:
    """Detections of one class with the same confidence."""
    boxes = np.asarray(xyxy, dtype=np.float32).reshape(-1, 4)
    count = len(boxes)
    return sv.Detections(
        xyxy=boxes,
        confidence=np.full(count, confidence, dtype=np.float32),
        class_id=np.full(count, class_id, dtype=int),
        data={"class_name": np.array([class_name] * count)},
    )


class ListSource:
    """An in-memory source: yields the given number of frames, then optionally fails."""

    def __init__(
        self, frame_count: int, *, source_id: str = "cam0", fail_after: int | None = None, live: bool = False
    ) -> None:
        self.frame_count = frame_count
        self.source_id = source_id
        self.fail_after = fail_after
        self.live = live
        self.opened = False
        self.closed = threading.Event()

    def open(self) -> SourceInfo:
        self.opened = True
        return SourceInfo(
            source_id=self.source_id,
            uri="memory://",
            width=64,
            height=48,
            fps=25.0,
            live=self.live,
            frame_count=self.frame_count,
        )

    def frames(self) -> Iterator[Frame]:
        for index in range(self.frame_count):
            if self.closed.is_set():
                return
            if self.fail_after is not None and index == self.fail_after:
                raise SourceError(f"memory source broke after {index} frames")
            yield make_frame(index, source_id=self.source_id)

    def close(self) -> None:
        self.closed.set()


class MemorySink:
    """A sink that keeps every frame it is given."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.opened = False
        self.closed = False
        self.ended: list[str] = []

    def open(self, context: Context) -> None:
        self.opened = True

    def write(self, batch: Batch) -> None:
        self.frames.extend(batch)

    def end_of_stream(self, source_id: str) -> None:
        self.ended.append(source_id)

    def close(self) -> None:
        self.closed = True


class ProbeStage(BaseStage):
    """Records its lifecycle into a shared journal; can fail on open or on a given frame."""

    def __init__(
        self,
        *,
        label: str = "probe",
        journal: list[str] | None = None,
        fail_open: bool = False,
        fail_on_frame: int | None = None,
    ) -> None:
        self.label = label
        self.journal = journal if journal is not None else []
        self.fail_open = fail_open
        self.fail_on_frame = fail_on_frame
        self.batch_sizes: list[int] = []

    def open(self, context: Context) -> None:
        self.journal.append(f"open {self.label}")
        if self.fail_open:
            raise RuntimeError(f"{self.label} cannot open")

    def __call__(self, batch: Batch) -> Batch:
        self.batch_sizes.append(len(batch))
        for frame in batch:
            if frame.index == self.fail_on_frame:
                raise ValueError(f"{self.label} broke on frame {frame.index}")
            frame.layers[self.label] = sv.Detections.empty()
        return batch

    def end_of_stream(self, source_id: str) -> None:
        self.journal.append(f"eos {self.label} {source_id}")

    def close(self) -> None:
        self.journal.append(f"close {self.label}")


def frame_indices(frames: list[Frame]) -> list[int]:
    """The index of each frame, in order."""
    return [frame.index for frame in frames]
