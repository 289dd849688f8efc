"""Stages that break the rules, for the fault tests (usable from a pipeline YAML as
``tests.helpers_faults:ContractBreaker`` and ``tests.helpers_faults:HangingStage``)."""

from __future__ import annotations

import threading

from engine.frame import Batch
from engine.stage import BaseStage


class ContractBreaker(BaseStage):
    """Returns something other than its batch on frame ``on_frame`` (and every frame after
    it when ``always``): ``fewer`` frames, ``more`` (a duplicate), ``none``, ``reorder``, or
    ``drop`` (a declared drop, which is allowed)."""

    def __init__(self, *, mode: str = "fewer", on_frame: int = 3, always: bool = False) -> None:
        self.mode = mode
        self.on_frame = on_frame
        self.always = always

    def __call__(self, batch: Batch) -> Batch:
        hit = [
            frame
            for frame in batch
            if frame.index == self.on_frame or (self.always and frame.index > self.on_frame)
        ]
        if not hit:
            return batch
        if self.mode == "fewer":
            return Batch([frame for frame in batch if frame not in hit])
        if self.mode == "more":
            return Batch([*batch.frames, hit[0]])
        if self.mode == "none":
            return None  # type: ignore[return-value]
        if self.mode == "reorder":
            return Batch(list(reversed(batch.frames)))
        for frame in hit:
            batch.drop(frame, "too dark")
        return batch


class HangingStage(BaseStage):
    """Never returns from the call that sees frame ``on_frame`` (until the process ends)."""

    def __init__(self, *, on_frame: int = 3) -> None:
        self.on_frame = on_frame
        self._forever = threading.Event()

    def __call__(self, batch: Batch) -> Batch:
        if any(frame.index == self.on_frame for frame in batch):
            self._forever.wait()
        return batch
