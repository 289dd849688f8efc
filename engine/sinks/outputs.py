"""The standard outputs of `vistream run`: which sinks go into an output directory."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.pipeline import Pipeline
from engine.sinks import JsonlSink, MotSink, VehiclesSink, VideoSink
from engine.sinks.base import SOURCE_PLACEHOLDER, Sink
from engine.sinks.objects import EventListener, ObjectEventsSink
from engine.sinks.ownership import OutputDirectory, check_file_part

#: How long ``events.jsonl`` lines are held so each track is written with one class: its
#: vote after this much evidence (on the two traffic videos, the final vote of every track).
EVENTS_CLASS_DELAY_S = 2.0


@dataclass
class Outputs:
    """The sinks of a run and the files they write (name → path; per-source files of a
    multi-source run are given with ``{source_id}`` in the path), and the locked directory
    (release it when the run is over; see :mod:`engine.sinks.ownership`)."""

    sinks: list[Sink]
    paths: dict[str, str]
    objects: ObjectEventsSink | None = None
    directory: OutputDirectory | None = None


def tracked_layers(pipeline: Pipeline) -> list[str]:
    """Layers that stages of the pipeline give track ids to (their declared
    ``tracked_layers``), in stage order: any tracker, built in or not, gets its MOT file."""
    layers = [layer for named in pipeline.stages for layer in named.stage.tracked_layers]
    return list(dict.fromkeys(layers))


def open_outputs(
    out_dir: Path,
    pipeline: Pipeline,
    *,
    write_video: bool,
    source_ids: Sequence[str] = (),
    event_listeners: Sequence[EventListener] = (),
) -> Outputs:
    """Create the output directory and the sinks for it.

    Files: ``events.jsonl`` (one JSON object per frame, every source, with its ``source``;
    written :data:`EVENTS_CLASS_DELAY_S` behind the stream so each track has one class in it,
    see :mod:`engine.sinks.jsonl`),
    ``annotated.mp4`` (unless ``write_video`` is False), ``tracks_<layer>.txt``
    (MOTChallenge) for each tracked layer, ``vehicles.csv`` (one row per vehicle final
    speed, every source; header only when no stage issued any, see
    :mod:`engine.sinks.vehicles`), ``objects.jsonl`` (lifecycle events of the first
    tracked layer's objects, every source; also given to ``event_listeners``, e.g. the
    publishers' spool) with best crops in ``snapshots/``; the CLI adds ``summary.json`` at the end. With
    several ``source_ids`` the video and track files are per source:
    ``annotated_<source_id>.mp4`` and ``tracks_<layer>_<source_id>.txt``.

    The directory is locked for this run and the outputs of an earlier run in it are replaced
    as a whole (:class:`engine.sinks.ownership.OutputDirectory`).

    Raises:
        SinkError: The directory cannot be created or written.
        OutputBusyError: Another run writes into the directory.
        ConfigError: A layer name or source id cannot be part of a file name.
    """
    layers = tracked_layers(pipeline)
    for layer in layers:
        check_file_part("layer", layer)
    for source_id in source_ids:
        check_file_part("source id", source_id)
    directory = OutputDirectory(out_dir)
    try:
        directory.replace_earlier_outputs()
    except BaseException:
        directory.release()
        raise
    per_source = f"_{SOURCE_PLACEHOLDER}" if len(source_ids) > 1 else ""
    sinks: list[Sink] = [JsonlSink(out_dir / "events.jsonl", class_delay_s=EVENTS_CLASS_DELAY_S)]
    paths = {"events": str(out_dir / "events.jsonl")}
    if write_video:
        path = out_dir / f"annotated{per_source}.mp4"
        sinks.append(VideoSink(path))
        paths["video"] = str(path)
    for layer in layers:
        path = out_dir / f"tracks_{layer}{per_source}.txt"
        sinks.append(MotSink(path, layer=layer))
        paths[f"tracks_{layer}"] = str(path)
    sinks.append(VehiclesSink(out_dir / "vehicles.csv", summaries=pipeline.stage_summaries))
    paths["vehicles"] = str(out_dir / "vehicles.csv")
    objects = None
    if layers:
        objects = ObjectEventsSink(
            out_dir / "objects.jsonl",
            layer=layers[0],
            listeners=event_listeners,
            snapshot_dir=out_dir / "snapshots",
        )
        sinks.append(objects)
        paths["objects"] = str(objects.path)
    paths["summary"] = str(out_dir / "summary.json")
    return Outputs(sinks=sinks, paths=paths, objects=objects, directory=directory)


def source_paths(paths: dict[str, str], source_ids: Sequence[str]) -> dict[str, str]:
    """``paths`` with each ``{source_id}`` path expanded to one entry per source
    (``video`` → ``video_<id>``): the files a multi-source run really wrote."""
    expanded: dict[str, str] = {}
    for name, path in paths.items():
        if SOURCE_PLACEHOLDER in path:
            for source_id in source_ids:
                expanded[f"{name}_{source_id}"] = path.replace(SOURCE_PLACEHOLDER, source_id)
        else:
            expanded[name] = path
    return expanded
