"""The ``triton://`` backend against a real Triton Inference Server started here on 127.0.0.1.

The server is the Triton 2.51 binary inside the ``nvidia-pytriton`` wheel, installed once into
its own virtualenv (``.venv-triton``, or ``$VISTREAM_TRITON_VENV``) by
:func:`engine.backends.triton_server.install_server_venv`; the tests skip (with the reason) only
when that cannot be installed. Its model repository is written here: the shared YOLO11n ONNX
(fixed batch 1), a dynamic-batch export of ``yolo11n.yaml`` with dynamic batching on, a slow
model for timeouts and a model left unloaded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engine.backends import load_backend
from engine.backends.triton import TritonBackend, parse_triton_uri
from engine.backends.triton_server import (
    LocalTritonServer,
    free_port,
    install_server_venv,
    write_model_repository,
)
from engine.config import PipelineSettings, bind_arguments
from engine.errors import ConfigError, ModelError
from engine.frame import Batch, Frame, SourceInfo
from engine.pipeline import NamedStage, Pipeline
from engine.stage import Context
from plugins.detect import YoloDetector
from plugins.emotion import EmotionClassifier
from plugins.faces import FaceDetector
from tests.backends.helpers_yolo import HIGHWAY, exported_yolo, read_frames
from tests.conftest import REPO_ROOT, shared_path
from tests.helpers import ListSource, MemorySink

pytestmark = pytest.mark.triton

TRITON_VENV = Path(os.environ.get("VISTREAM_TRITON_VENV", REPO_ROOT / ".venv-triton"))
YOLO = "models/yolo11n_fp32_320.onnx"
EMOTION = "models/emotion_mini_xception_fer2013_7cls.onnx"


@pytest.fixture(scope="module")
def server_venv() -> Path:
    """The server's virtualenv, installed on first use (skips only when it cannot be)."""
    pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed (extra 'triton')")
    try:
        return install_server_venv(TRITON_VENV)
    except ModelError as error:
        pytest.skip(f"the Triton server cannot be installed here: {error}")


@pytest.fixture(scope="module")
def server(server_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTritonServer]:
    """One server for the module, stopped by PID (SIGTERM) at the end."""
    yolo = shared_path(YOLO)
    repository = tmp_path_factory.mktemp("triton") / "models"
    write_model_repository(repository, "yolo11n", yolo)
    write_model_repository(
        repository,
        "yolo11n_dynamic",
        exported_yolo(tmp_path_factory).onnx_dynamic,
        max_batch_size=8,
        max_queue_delay_us=50_000,  # generous: this machine is loaded, requests arrive ms apart
    )
    write_model_repository(repository, "emotion", shared_path(EMOTION), max_batch_size=16)
    write_model_repository(repository, "slow", yolo, parameters={"delay_s": "3"})
    write_model_repository(repository, "idle", yolo)
    triton = LocalTritonServer(
        server_venv, repository, load_models=["yolo11n", "yolo11n_dynamic", "emotion", "slow"]
    )
    triton.start()
    yield triton
    triton.stop()


def _uri(server: LocalTritonServer, protocol: str, model: str) -> str:
    return (
        f"triton://{server.grpc_url}/{model}"
        if protocol == "grpc"
        else f"triton+http://{server.http_url}/{model}"
    )


# -- URIs and configuration (no server needed) ---------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("triton://127.0.0.1:8001/yolo11n", ("grpc", "127.0.0.1:8001", "yolo11n", "")),
        ("triton+http://gpu-box:9000/yolo11n/3", ("http", "gpu-box:9000", "yolo11n", "3")),
        ("triton://gpu-box/yolo11n", ("grpc", "gpu-box:8001", "yolo11n", "")),
        ("triton+http://gpu-box/yolo11n", ("http", "gpu-box:8000", "yolo11n", "")),
    ],
)
def test_uri_parsing(uri: str, expected: tuple[str, str, str, str]) -> None:
    target = parse_triton_uri(uri)
    assert (target.protocol, target.url, target.model, target.version) == expected
    assert str(parse_triton_uri(str(target))) == str(target)


@pytest.mark.parametrize(
    "uri",
    [
        "triton://host:8001",
        "triton://:8001/m",
        "triton://h:8001/m/latest",
        "triton://h:8001/a/1/x",
        "triton://h:x/m",
    ],
)
def test_malformed_uri_is_a_config_error(uri: str) -> None:
    with pytest.raises(ConfigError, match="Triton"):
        TritonBackend(uri)


def test_config_keeps_uris_and_resolves_paths(tmp_path: Path) -> None:
    uri = "triton://127.0.0.1:8001/yolo11n"
    assert bind_arguments(YoloDetector, {"model": uri}, "stages[0] (detect)", tmp_path)["model"] == uri
    bound = bind_arguments(YoloDetector, {"model": "m.onnx"}, "stages[0] (detect)", tmp_path)
    assert bound["model"] == tmp_path / "m.onnx"
    assert YoloDetector(model=uri).model == uri
    with pytest.raises(
        ConfigError, match="stages\\[1\\] \\(faces\\): argument 'model': expected a file path"
    ):
        bind_arguments(FaceDetector, {"model": uri}, "stages[1] (faces)", tmp_path)


# -- against the server ---------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_specs_batch_size_and_metadata_come_from_the_server(server: LocalTritonServer, protocol: str) -> None:
    fixed = load_backend(_uri(server, protocol, "yolo11n"))
    dynamic = load_backend(_uri(server, protocol, "yolo11n_dynamic"))
    try:
        assert [(s.name, s.shape, s.dtype) for s in fixed.inputs] == [("images", (1, 3, 320, 320), "float32")]
        assert [(s.name, s.shape) for s in fixed.outputs] == [("output0", (1, 84, 2100))]
        assert dynamic.inputs[0].dynamic_batch and isinstance(dynamic, TritonBackend)
        assert dynamic.max_batch_size == 8
        assert fixed.metadata["imgsz"] == "[320, 320]" and fixed.metadata["stride"] == "32"
        assert "'car'" in fixed.metadata["names"] and fixed.thread_safe
        # A batch above max_batch_size goes out as several requests, transparently.
        blob = np.random.default_rng(0).random((10, 3, 320, 320), dtype=np.float32)
        assert dynamic.run({"images": blob})["output0"].shape == (10, 84, 2100)
    finally:
        fixed.close()
        dynamic.close()


def _detect(model: str | Path, frames: list[np.ndarray], **kwargs: object) -> list[Frame]:
    detector = YoloDetector(model=model, **kwargs)  # type: ignore[arg-type]
    detector.open(Context())
    try:
        batch = Batch.of([Frame("cam", i, i * 1000, image) for i, image in enumerate(frames)])
        return detector(batch).frames
    finally:
        detector.close()


@pytest.mark.parametrize(
    ("protocol", "options"),
    [
        ("grpc", {}),
        ("http", {}),
        ("grpc", {"shared_memory": "system"}),
        ("http", {"shared_memory": "system"}),
    ],
)
def test_detections_identical_to_local_onnx_runtime(
    server: LocalTritonServer, protocol: str, options: dict[str, str]
) -> None:
    frames = read_frames(HIGHWAY, [100, 400, 700, 1000, 1300, 1600])
    local = _detect(shared_path(YOLO), frames)
    remote = _detect(_uri(server, protocol, "yolo11n"), frames, backend_options=options)
    assert sum(len(frame.layers["objects"]) for frame in local) >= 6  # real vehicles, not an empty test
    for ours, theirs in zip(local, remote, strict=True):
        a, b = ours.layers["objects"], theirs.layers["objects"]
        assert np.array_equal(a.xyxy, b.xyxy) and np.array_equal(a.confidence, b.confidence)
        assert np.array_equal(a.class_id, b.class_id)
        assert list(a.data["class_name"]) == list(b.data["class_name"])


def test_emotion_stage_through_triton_matches_local(server: LocalTritonServer) -> None:
    crops = np.random.default_rng(1).integers(0, 256, (20, 64, 64, 3), dtype=np.uint8)  # > max batch 16
    probabilities = []
    for model in (shared_path(EMOTION), _uri(server, "grpc", "emotion")):
        stage = EmotionClassifier(model=model)
        stage.open(Context())
        assert stage.labels == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
        probabilities.append(stage.classify(crops))
        stage.close()
    assert probabilities[0].shape == (20, 7) and np.array_equal(probabilities[0], probabilities[1])


class FrameListSource(ListSource):
    """Real frames from memory, as a source with its own id."""

    def __init__(self, images: list[np.ndarray], source_id: str) -> None:
        super().__init__(len(images), source_id=source_id)
        self.images = images

    def open(self) -> SourceInfo:
        height, width = self.images[0].shape[:2]
        return SourceInfo(self.source_id, "memory://", width, height, 60.0, False, len(self.images))

    def frames(self) -> Iterator[Frame]:
        for index, image in enumerate(self.images):
            yield Frame(self.source_id, index, int(index * 1e9 / 60), image)


def test_two_sources_and_two_workers_are_batched_by_the_server(server: LocalTritonServer) -> None:
    uri = _uri(server, "grpc", "yolo11n_dynamic")
    stats_before = load_backend(uri)
    assert isinstance(stats_before, TritonBackend)
    before = stats_before.statistics()
    images = read_frames(HIGHWAY, list(range(0, 480, 20)))  # 24 frames per source
    sources = [FrameListSource(images, "cam0"), FrameListSource(images[::-1], "cam1")]
    pipeline = Pipeline(
        [NamedStage("detect", YoloDetector(model=uri))], PipelineSettings(workers=2, batch_size=1)
    )
    sink = MemorySink()
    pipeline.run(sources, [sink])
    # Triton counts a request when it releases it, which can be just after the reply arrived.
    deadline = time.monotonic() + 10
    expected = int(before.get("inference_count", 0)) + 48 + 1  # every frame, plus the warm-up
    while int((after := stats_before.statistics()).get("inference_count", 0)) < expected:
        assert time.monotonic() < deadline, after
        time.sleep(0.1)
    stats_before.close()
    assert len(sink.frames) == 48 and not any(frame.skipped_reason for frame in sink.frames)

    def sizes(stats: dict[str, object]) -> dict[int, int]:
        entries = stats.get("batch_stats", [])
        assert isinstance(entries, list)
        return {int(e["batch_size"]): int(e["compute_infer"]["count"]) for e in entries}

    grown = {size: count - sizes(before).get(size, 0) for size, count in sizes(after).items()}
    rows = int(after["inference_count"]) - int(before.get("inference_count", 0))  # type: ignore[call-overload]
    executions = int(after["execution_count"]) - int(before.get("execution_count", 0))  # type: ignore[call-overload]
    assert rows == 48 + 1, (before, after)  # every frame, plus the stage's warm-up request
    # Requests of one frame each were merged on the server: fewer executions than rows.
    assert executions < rows and any(count > 0 for size, count in grown.items() if size > 1), grown


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize(
    ("model", "options", "blob_shape", "match"),
    [
        (
            "nope",
            {},
            None,
            r"unknown model 'nope' on the server; available: emotion, idle, slow, yolo11n, yolo11n_dynamic",
        ),
        ("idle", {}, None, r"model 'idle' is not ready \(UNAVAILABLE: "),
        ("yolo11n/7", {}, None, r"model 'yolo11n' has no version 7 on the server; versions: 1"),
        (
            "yolo11n",
            {},
            (1, 3, 640, 640),
            r"input images is float32 \[1, 3, 640, 640\], expected float32 \[1, 3, 320",
        ),
        ("slow", {"timeout_s": 1.0}, (1, 3, 320, 320), r"slow: infer timed out after 1 s"),
    ],
)
def test_errors_are_one_line(
    server: LocalTritonServer,
    protocol: str,
    model: str,
    options: dict[str, float],
    blob_shape: tuple[int, ...] | None,
    match: str,
) -> None:
    with pytest.raises(ModelError, match=match) as caught:
        backend = load_backend(_uri(server, protocol, model), **options)
        try:
            backend.run({"images": np.zeros(blob_shape or (1,), np.float32)})
        finally:
            backend.close()
    assert "\n" not in str(caught.value)


def test_type_mismatch_and_unreachable_server(server: LocalTritonServer) -> None:
    backend = load_backend(_uri(server, "grpc", "yolo11n"))
    with pytest.raises(ModelError, match=r"input images is float64 \[1, 3, 320, 320\], expected float32"):
        backend.run({"images": np.zeros((1, 3, 320, 320), np.float64)})
    backend.close()
    for scheme in ("triton", "triton+http"):
        with pytest.raises(ModelError, match=r"Triton server at 127\.0\.0\.1:\d+ is unreachable") as caught:
            load_backend(f"{scheme}://127.0.0.1:{free_port()}/yolo11n", timeout_s=5)
        assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="does not accept option"):
        load_backend(_uri(server, "grpc", "yolo11n"), half=True)


def _live_group_members(pgid: int) -> list[int]:
    """Processes of a process group that are still running (zombies excluded)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            members.append(int(stat.parent.name))
    return members


@pytest.mark.slow
def test_server_killed_mid_run_follows_on_error_and_reconnects(server_venv: Path, tmp_path: Path) -> None:
    repository = tmp_path / "models"
    write_model_repository(repository, "yolo11n", shared_path(YOLO))
    triton = LocalTritonServer(server_venv, repository).start()
    images = read_frames(HIGHWAY, list(range(0, 300, 12)))  # 25 frames
    uri = f"triton://{triton.grpc_url}/yolo11n"

    killed: list[int] = []

    def on_batch(batch: Batch) -> None:  # runs on the pipeline thread, after frame k is written
        if batch[0].index == 9:
            killed.append(int(triton.pid or 0))
            triton.kill()  # SIGKILL, as a crash
        elif batch[0].index == 14:
            triton.start()  # same ports; blocks until ready

    try:
        pipeline = Pipeline(
            [NamedStage("detect", YoloDetector(model=uri))], PipelineSettings(on_error="skip")
        )
        sink = MemorySink()
        pipeline.run(FrameListSource(images, "cam"), [sink], on_batch=on_batch)
        skipped = [frame.index for frame in sink.frames if frame.skipped_reason]
        assert skipped == [10, 11, 12, 13, 14]
        assert "is unreachable" in str(sink.frames[10].skipped_reason)
        assert all("objects" in frame.layers for frame in sink.frames if frame.index not in skipped)
        assert sum(len(frame.layers["objects"]) for frame in sink.frames[15:]) > 0
        assert not _live_group_members(killed[0])  # no orphaned backend stub is left running

        triton.stop()  # under "fail" a dead server stops the run with one clear line
        failing = Pipeline([NamedStage("detect", YoloDetector(model=uri))], PipelineSettings(on_error="fail"))
        with pytest.raises(ModelError, match=r"is unreachable"):
            failing.run(FrameListSource(images[:2], "cam"), [MemorySink()])
    finally:
        triton.stop()


@pytest.mark.slow
def test_traffic_pipeline_through_triton_gives_the_local_tracks(
    server: LocalTritonServer, tmp_path: Path
) -> None:
    from engine.cli.main import main

    video = shared_path("media/traffic/highway_overpass_320x240_60fps.avi")
    shipped = (REPO_ROOT / "engine" / "pipelines" / "traffic.yaml").read_text()
    local_model = "${VISTREAM_MODELS}/yolo11n_fp32_320.onnx"
    assert local_model in shipped
    served = tmp_path / "traffic_triton.yaml"
    served.write_text(shipped.replace(local_model, f"triton://{server.grpc_url}/yolo11n"))
    outputs = {}
    for label, pipeline in (("local", "traffic"), ("triton", str(served))):
        out = tmp_path / label
        # 900 of the 1,700 frames keep CI time down; the whole video matched too (see README).
        arguments = ["--out", str(out), "--max-frames", "900", "--no-video", "--quiet"]
        code = main(["run", str(video), "--pipeline", pipeline, *arguments])
        assert code == 0
        outputs[label] = (out / "tracks_objects.txt").read_text()
    assert outputs["local"].count("\n") > 500
    assert outputs["triton"] == outputs["local"]
