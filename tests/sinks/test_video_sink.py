"""VideoSink: frame count and fps kept, canvas written, odd sizes, crash-safe fragmented MP4."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from engine.errors import SinkError
from engine.frame import Batch
from engine.sinks import VideoSink
from engine.stage import Context
from tests.sinks.helpers_sinks import level, picture_frame, source_info

REPO_ROOT = Path(__file__).resolve().parents[2]


def _decode(path: Path) -> tuple[list[np.ndarray], Fraction | None]:
    """All pictures (BGR) of the file and its stream's average frame rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pictures = [frame.to_ndarray(format="bgr24") for frame in container.decode(stream)]
        return pictures, stream.average_rate


def _ffprobe(path: Path) -> dict[str, str]:
    if shutil.which("ffprobe") is None:
        pytest.skip("ffprobe is not installed")
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames,r_frame_rate,avg_frame_rate,width,height,pix_fmt,codec_name",
            "-of",
            "json",
            str(path),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {key: str(value) for key, value in json.loads(out)["streams"][0].items()}


def _write(sink: VideoSink, frames: list, context: Context, batch_size: int = 4) -> None:
    sink.open(context)
    for start in range(0, len(frames), batch_size):
        sink.write(Batch.of(frames[start : start + batch_size]))
    sink.close()


@pytest.mark.parametrize(("fps", "expected_rate"), [(25.0, "25/1"), (30000 / 1001, "30000/1001")])
def test_output_has_the_input_frame_count_and_fps(tmp_path: Path, fps: float, expected_rate: str) -> None:
    path = tmp_path / "out.mp4"
    frames = [picture_frame(i, fps=fps) for i in range(37)]
    _write(VideoSink(path), frames, Context(sources={"cam": source_info(fps=fps)}))

    pictures, rate = _decode(path)
    assert len(pictures) == 37
    assert rate == Fraction(expected_rate)
    for index, picture in enumerate(pictures):  # in order, none repeated or lost
        assert abs(float(picture.mean()) - level(index)) < 4, index
    probe = _ffprobe(path)
    assert probe["nb_read_frames"] == "37"
    assert probe["r_frame_rate"] == probe["avg_frame_rate"] == expected_rate
    assert (probe["codec_name"], probe["pix_fmt"], probe["width"], probe["height"]) == (
        "h264",
        "yuv420p",
        "64",
        "48",
    )


def test_canvas_is_written_when_present(tmp_path: Path) -> None:
    frames = [picture_frame(i) for i in range(5)]
    for frame in frames[::2]:
        frame.draw_target()[8:24, 8:40] = 255
    path = tmp_path / "drawn.mp4"
    _write(VideoSink(path, fps=5), frames, Context())
    pictures, rate = _decode(path)
    assert rate == 5
    for index, picture in enumerate(pictures):
        drawn = float(picture[10:22, 10:38].mean()) > 240
        assert drawn == (index % 2 == 0), index


@pytest.mark.fault(
    "Frame size changes mid-stream (a camera back at another resolution)",
    "The video sink keeps the first size (resizes, warns once); trackers were reset by the reconnect",
)
def test_odd_sizes_are_padded_and_other_sizes_resized(tmp_path: Path) -> None:
    frames = [picture_frame(i, width=33, height=25) for i in range(4)]
    frames.append(picture_frame(4, width=66, height=50))  # a resolution change midway
    path = tmp_path / "odd.mp4"
    _write(VideoSink(path), frames, Context(sources={"cam": source_info()}))
    pictures, _ = _decode(path)
    assert len(pictures) == 5 and pictures[0].shape == (26, 34, 3)
    assert abs(float(pictures[4].mean()) - level(4)) < 4


def test_one_file_per_source_and_per_restart(tmp_path: Path) -> None:
    context = Context(sources={"a": source_info("a"), "b": source_info("b", fps=None)})
    single = VideoSink(tmp_path / "one.mp4")
    single.open(context)
    single.write(Batch.of([picture_frame(0, source_id="a")]))
    with pytest.raises(SinkError, match=r"\{source_id\}"):
        single.write(Batch.of([picture_frame(0, source_id="b")]))
    single.close()

    sink = VideoSink(tmp_path / "{source_id}.mp4")
    sink.open(context)
    sink.write(Batch.of([picture_frame(i, source_id=s) for i in range(3) for s in ("a", "b")]))
    sink.end_of_stream("a")
    assert len(_decode(tmp_path / "a.mp4")[0]) == 3  # finished before close
    sink.write(Batch.of([picture_frame(i, source_id="a") for i in range(2)]))  # a restarted
    sink.close()
    sink.close()
    assert len(_decode(tmp_path / "a-2.mp4")[0]) == 2
    pictures, rate = _decode(tmp_path / "b.mp4")
    assert len(pictures) == 3 and rate == 30  # b reports no fps: the fallback
    assert sink.written == [tmp_path / "a.mp4", tmp_path / "b.mp4", tmp_path / "a-2.mp4"]


def test_killed_writer_leaves_a_decodable_file(tmp_path: Path) -> None:
    path = tmp_path / "killed.mp4"
    script = textwrap.dedent(
        f"""
        import time
        from engine.frame import Batch
        from engine.sinks import VideoSink
        from engine.stage import Context
        from tests.sinks.helpers_sinks import picture_frame, source_info

        sink = VideoSink({str(path)!r}, keyframe_interval_s=1.0)
        sink.open(Context(sources={{"cam": source_info(fps=10.0)}}))
        for index in range(45):
            sink.write(Batch.of([picture_frame(index, fps=10.0)]))
        print("written", flush=True)
        time.sleep(60)
        """
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = writer.stdout.readline() if writer.stdout else ""
        assert line.strip() == "written", writer.stderr.read() if writer.stderr else ""
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=10)

    pictures, rate = _decode(path)
    # Lost: the open fragment (< 1 s = 10 frames) and the encoder's lookahead.
    assert 20 <= len(pictures) < 45
    assert rate == 10
    for index, picture in enumerate(pictures):
        assert abs(float(picture.mean()) - level(index)) < 4, index


def test_bad_arguments_and_unknown_encoders_raise_sink_error(tmp_path: Path) -> None:
    for kwargs in ({"fps": 0}, {"crf": 60}, {"keyframe_interval_s": 0}, {"preset": ""}):
        with pytest.raises(SinkError):
            VideoSink(tmp_path / "x.mp4", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(SinkError, match="not available"):
        VideoSink(tmp_path / "x.mp4", codec="no_such_encoder").open(Context())
    with pytest.raises(SinkError, match="not open"):
        VideoSink(tmp_path / "x.mp4").write(Batch.of([picture_frame(0)]))


@pytest.mark.slow
def test_real_video_keeps_its_frame_count_and_fps(tmp_path: Path, highway_video: Path) -> None:
    with av.open(str(highway_video)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        images = [frame.to_ndarray(format="bgr24") for frame in container.decode(stream)]
    frames = [picture_frame(0) for _ in images]
    for index, (frame, image) in enumerate(zip(frames, images, strict=True)):
        frame.index, frame.image = index, image
    path = tmp_path / "highway.mp4"
    _write(
        VideoSink(path),
        frames,
        Context(sources={"cam": source_info(fps=fps, width=320, height=240)}),
        batch_size=16,
    )
    probe = _ffprobe(path)
    assert int(probe["nb_read_frames"]) == len(images)
    assert Fraction(probe["avg_frame_rate"]) == Fraction(fps).limit_denominator(1001)
