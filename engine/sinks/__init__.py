"""Where processed frames go: JSON Lines, annotated video, MOTChallenge tracks, vehicle table."""

from __future__ import annotations

from engine.sinks.base import Sink
from engine.sinks.jsonl import JsonlSink
from engine.sinks.mot import MotSink
from engine.sinks.vehicles import VehiclesSink
from engine.sinks.video import VideoSink

__all__ = ["JsonlSink", "MotSink", "Sink", "VehiclesSink", "VideoSink"]
