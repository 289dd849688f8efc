"""The standard outputs of `vistream run`: which sinks go into an output directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.errors import SinkError
from engine.pipeline import Pipeline
from engine.sinks import JsonlSink, MotSink, VideoSink
from engine.sinks.base import Sink


@dataclass
class Outputs:
    """The sinks of a run and the files they write (name → path)."""

    sinks: list[Sink]
    paths: dict[str, str]


def tracked_layers(pipeline: Pipeline) -> list[str]:
    """Layers that a tracking stage of the pipeline gives track ids to, in stage order."""
    from plugins.track import ByteTrackStage

    layers = [named.stage.layer for named in pipeline.stages if isinstance(named.stage, ByteTrackStage)]
    return list(dict.fromkeys(layers))


def open_outputs(out_dir: Path, pipeline: Pipeline, *, write_video: bool) -> Outputs:
    """Create the output directory and the sinks for it.

    Files: ``events.jsonl`` (one JSON object per frame), ``annotated.mp4`` (unless
    ``write_video`` is False), ``tracks_<layer>.txt`` (MOTChallenge) for each tracked layer;
    the CLI adds ``summary.json`` at the end.

    Raises:
        SinkError: The directory cannot be created or written.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SinkError(f"cannot create output directory {out_dir}: {error.strerror}") from error
    sinks: list[Sink] = [JsonlSink(out_dir / "events.jsonl")]
    paths = {"events": str(out_dir / "events.jsonl")}
    if write_video:
        sinks.append(VideoSink(out_dir / "annotated.mp4"))
        paths["video"] = str(out_dir / "annotated.mp4")
    for layer in tracked_layers(pipeline):
        path = out_dir / f"tracks_{layer}.txt"
        sinks.append(MotSink(path, layer=layer))
        paths[f"tracks_{layer}"] = str(path)
    paths["summary"] = str(out_dir / "summary.json")
    return Outputs(sinks=sinks, paths=paths)
