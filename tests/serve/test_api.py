"""The REST API of a real `vistream serve` (uvicorn on 127.0.0.1) with real worker processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.serve.helpers_serve import REPO_ROOT, Service, stream_state, wait_for, write_pipelines

for _module in ("fastapi", "uvicorn"):
    pytest.importorskip(_module, reason=f"{_module} is not installed (the serve extra)")
httpx = pytest.importorskip("httpx", reason="httpx is not installed (the dev extra)")


pytestmark = [pytest.mark.slow, pytest.mark.gst]

BALL = "test://?width=320&height=240&fps=10&pattern=ball"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("serve") / "data"
    write_pipelines(data_dir)
    with Service(data_dir) as running:
        yield running


@pytest.fixture(scope="module")
def client(service: Service) -> Iterator[httpx.Client]:
    with service.client() as http:
        yield http


@pytest.fixture(scope="module")
def cam(client: httpx.Client) -> str:
    """A running light stream shared by the tests of this module."""
    response = client.post("/api/streams", json={"name": "cam", "uri": BALL, "pipeline": "light"})
    assert response.status_code == 201, response.text
    wait_for(lambda: stream_state(client, "cam"), 60, "cam running")
    return "cam"


def test_health_and_docs(client: httpx.Client) -> None:
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["auth"] is False
    assert client.get("/docs").status_code == 200
    assert "/api/streams" in client.get("/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "<html" in page.text and "/ui/app.js" in page.text
    assert client.get("/ui/app.js").status_code == 200
    assert "access-control-allow-origin" not in {key.lower() for key in page.headers}


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ({"name": "x1", "uri": "test://", "pipeline": "no_such"}, 400, "unknown pipeline 'no_such'"),
        ({"name": "x1", "uri": "gopher://h/x", "pipeline": "plain"}, 400, "unsupported source URI scheme"),
        (
            {"name": "bad name", "uri": "test://", "pipeline": "plain"},
            422,
            "name: String should match pattern",
        ),
        ({"name": "x1", "uri": "test://", "pipeline": "plain", "colour": 1}, 422, "colour: Extra inputs"),
        ({"name": "x1", "pipeline": "plain"}, 422, "uri: Field required"),
        (
            {"name": "x1", "uri": "test://", "record_video": "yes"},
            422,
            "record_video: Input should be a valid boolean",
        ),
        ({"name": "x1", "uri": "x" * 5000}, 422, "uri: String should have at most 2048 characters"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_one_line_reason(
    client: httpx.Client, body: dict, status: int, reason: str
) -> None:
    response = client.post("/api/streams", json=body)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and reason in detail
    assert client.get("/api/streams/x1").status_code == 404


def test_malformed_oversized_and_cross_origin_requests_are_refused(client: httpx.Client, cam: str) -> None:
    response = client.post("/api/streams", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    big = client.post(
        "/api/streams", content=b"{" + b" " * 70_000 + b"}", headers={"content-type": "application/json"}
    )
    assert big.status_code == 413 and "64" not in "" and "bytes" in big.json()["detail"]
    foreign = client.post(
        "/api/streams", json={"name": "x2", "uri": "test://"}, headers={"origin": "http://evil.example"}
    )
    assert foreign.status_code == 403
    assert client.delete(f"/api/streams/{cam}", headers={"origin": "http://evil.example"}).status_code == 403
    assert client.get("/api/streams/nope").json() == {"detail": "no stream named 'nope'"}
    assert client.patch(f"/api/streams/{cam}", json={}).status_code == 400
    assert client.patch(f"/api/streams/{cam}", json={"name": "other"}).status_code == 422


def test_stream_runs_with_its_status_snapshot_metrics_and_events(client: httpx.Client, cam: str) -> None:
    view = client.get(f"/api/streams/{cam}").json()
    for key in (
        "state",
        "fps",
        "frame_age_p50_ms",
        "frame_age_p99_ms",
        "dropped",
        "reconnects",
        "worker_restarts",
    ):
        assert key in view
    assert view["state"] == "running" and view["fps"] > 0 and isinstance(view["pid"], int)
    assert view["pid"] != os.getpid() and view["last_error"] is None
    assert client.post("/api/streams", json={"name": cam, "uri": "test://"}).status_code == 409
    assert [stream["name"] for stream in client.get("/api/streams").json()] == [cam]
    for query in ("", "?raw=1"):
        snapshot = client.get(f"/api/streams/{cam}/snapshot.jpg{query}")
        assert snapshot.status_code == 200 and snapshot.headers["content-type"] == "image/jpeg"
        assert snapshot.content[:2] == b"\xff\xd8"
    metrics = client.get("/metrics").text
    assert f'vistream_stream_up{{stream="{cam}"}} 1.0' in metrics
    assert f'vistream_stream_state{{state="running",stream="{cam}"}} 1.0' in metrics
    assert f'vistream_stream_frames_total{{stream="{cam}"}}' in metrics
    events = client.get(f"/api/streams/{cam}/events").json()
    assert events[0]["type"] == "source_connected" and events[0]["stream"] == cam


def test_live_mjpeg_and_server_sent_events(client: httpx.Client, cam: str) -> None:
    with client.stream("GET", f"/api/streams/{cam}/live.mjpg") as response:
        assert response.headers["content-type"].startswith("multipart/x-mixed-replace; boundary=")
        received = b""
        for chunk in response.iter_bytes():
            received += chunk
            if received.count(b"\xff\xd9") >= 3:  # three whole JPEGs
                break
    parts = [part for part in received.split(b"--vistreamframe\r\n") if part]
    assert len(parts) >= 3 and all(b"Content-Type: image/jpeg" in part for part in parts[:3])
    with client.stream(
        "GET", f"/api/streams/{cam}/events", headers={"accept": "text/event-stream"}
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = []
        for line in response.iter_lines():
            lines.append(line)
            if line.startswith("data: "):
                break
    event = json.loads(lines[-1][6:])
    assert lines[0].startswith("id: ") and event["stream"] == cam


def test_calibration_preview_errors_in_words_and_save_restarts_the_worker(
    client: httpx.Client, cam: str, service: Service
) -> None:
    current = client.get(f"/api/streams/{cam}/calibration").json()
    assert current["source"] == "pipeline" and current["stages"] == ["grid"]
    points = [[127.6, 216.2], [252.2, 217.7], [263.1, 98.6], [192.4, 98.1]]
    preview = client.post(
        f"/api/streams/{cam}/calibration/preview", json={"points": points, "width_m": 3.66, "length_m": 24.19}
    )
    assert preview.status_code == 200, preview.text
    grid = preview.json()
    assert len(grid["segments"]) > 4 and grid["rectangle"] == points and grid["cells"][0] == 2
    collinear = client.post(
        f"/api/streams/{cam}/calibration/preview",
        json={"points": [[10, 10], [20, 20], [30, 30], [10, 50]], "width_m": 3, "length_m": 10},
    )
    assert collinear.status_code == 400
    assert "points 1, 2 and 3 lie on one line" in collinear.json()["detail"]
    crossed = client.post(
        f"/api/streams/{cam}/calibration/preview",
        json={"points": [points[0], points[2], points[1], points[3]], "width_m": 3.66, "length_m": 24.19},
    )
    assert crossed.status_code == 400 and "crosses itself" in crossed.json()["detail"]
    wrong_size = client.post(
        f"/api/streams/{cam}/calibration/preview",
        json={
            "points": points,
            "width_m": 3.66,
            "length_m": 24.19,
            "image_size": {"width": 640, "height": 480},
        },
    )
    assert wrong_size.status_code == 400 and "delivers 320x240" in wrong_size.json()["detail"]
    negative = client.put(
        f"/api/streams/{cam}/calibration", json={"points": points, "width_m": -1, "length_m": 5}
    )
    assert negative.status_code == 400 and "width_m must be a positive number" in negative.json()["detail"]

    before = client.get(f"/api/streams/{cam}").json()
    saved = client.put(
        f"/api/streams/{cam}/calibration", json={"points": points, "width_m": 3.5, "length_m": 20}
    )
    assert saved.status_code == 200, saved.text
    path = Path(saved.json()["calibration"])
    assert path == service.data_dir.resolve() / "calibrations" / f"{cam}.yaml"
    document = yaml.safe_load(path.read_text())
    assert document["width_m"] == 3.5 and document["points"][0] == points[0]
    after = wait_for(lambda: stream_state(client, cam), 60, "cam running again")
    assert after["pid"] != before["pid"] and after["calibration"] == str(path)
    assert client.get(f"/api/streams/{cam}/calibration").json()["source"] == "stream"
    # the worker uses it: its outputs folder is new and the grid stage loaded the new file
    assert after["outputs"] != before["outputs"]


def test_calibration_needs_a_pipeline_that_uses_one(client: httpx.Client) -> None:
    assert (
        client.post("/api/streams", json={"name": "plain1", "uri": BALL, "pipeline": "plain"}).status_code
        == 201
    )
    try:
        response = client.put(
            "/api/streams/plain1/calibration",
            json={
                "points": [[1, 1], [100, 1], [100, 100], [1, 100]],
                "width_m": 3,
                "length_m": 3,
                "image_size": {"width": 320, "height": 240},
            },
        )
        assert response.status_code == 400
        assert response.json()["detail"] == "pipeline 'plain' has no stage that takes a calibration"
    finally:
        assert client.delete("/api/streams/plain1").status_code == 204


def test_killed_worker_comes_back_and_the_others_go_on(client: httpx.Client, cam: str) -> None:
    other = client.post("/api/streams", json={"name": "other", "uri": BALL, "pipeline": "plain"})
    assert other.status_code == 201
    try:
        other_view = wait_for(lambda: stream_state(client, "other"), 60, "other running")
        victim = wait_for(lambda: stream_state(client, cam), 60, "cam running")
        os.kill(victim["pid"], signal.SIGKILL)
        back = wait_for(
            lambda: (v := stream_state(client, cam)) and v["pid"] != victim["pid"] and v, 30, "cam back"
        )
        assert back["worker_restarts"] == victim["worker_restarts"] + 1
        still = client.get("/api/streams/other").json()
        assert still["pid"] == other_view["pid"] and still["state"] == "running"
        assert still["frames"] > other_view["frames"]
        assert client.get("/api/health").status_code == 200
        exits = [
            event
            for event in client.get(f"/api/streams/{cam}/events").json()
            if event["type"] == "worker_exited"
        ]
        assert exits and "SIGKILL" in exits[-1]["reason"]
    finally:
        client.delete("/api/streams/other")


def test_patch_disable_enable_and_delete(client: httpx.Client) -> None:
    assert (
        client.post("/api/streams", json={"name": "tmp", "uri": BALL, "pipeline": "plain"}).status_code == 201
    )
    wait_for(lambda: stream_state(client, "tmp"), 60, "tmp running")
    off = client.patch("/api/streams/tmp", json={"enabled": False})
    assert off.status_code == 200 and off.json()["state"] == "stopped" and off.json()["pid"] is None
    assert client.get("/api/streams/tmp/snapshot.jpg").status_code == 409
    assert client.patch("/api/streams/tmp", json={"pipeline": "nope"}).status_code == 400
    on = client.patch("/api/streams/tmp", json={"enabled": True, "uri": "test://?width=320&height=240&fps=5"})
    assert on.status_code == 200 and on.json()["uri"].endswith("fps=5")
    wait_for(lambda: stream_state(client, "tmp"), 60, "tmp running again")
    assert client.delete("/api/streams/tmp").status_code == 204
    assert client.get("/api/streams/tmp").status_code == 404
    assert client.delete("/api/streams/tmp").status_code == 404


def test_passwords_never_leave_the_service(client: httpx.Client, service: Service) -> None:
    body = {"name": "door", "uri": "rtsp://admin:hunter2secret@127.0.0.1:9/live", "pipeline": "plain"}
    created = client.post("/api/streams", json=body)
    assert created.status_code == 201
    try:
        view = wait_for(
            lambda: (v := client.get("/api/streams/door").json())["state"] == "reconnecting" and v,
            40,
            "reconnecting",
        )
        assert view["uri"] == "rtsp://admin:***@127.0.0.1:9/live" and view["last_error"]
        for path in ("/api/streams", "/api/streams/door", "/api/streams/door/events", "/metrics"):
            assert "hunter2secret" not in client.get(path).text, path
        assert "hunter2secret" not in created.text
    finally:
        client.delete("/api/streams/door")
    assert "hunter2secret" not in service.log()


def test_streams_are_resumed_after_a_service_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    write_pipelines(data_dir)
    with Service(data_dir) as first, first.client() as http:
        assert (
            http.post("/api/streams", json={"name": "keep", "uri": BALL, "pipeline": "plain"}).status_code
            == 201
        )
        wait_for(lambda: stream_state(http, "keep"), 60, "keep running")
    with Service(data_dir) as second, second.client() as http:
        view = wait_for(lambda: stream_state(http, "keep"), 60, "keep running after the restart")
        assert view["uri"] == BALL and view["worker_restarts"] == 0


def test_token_guards_changes_and_video(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    write_pipelines(data_dir)
    token = "t0ken-of-at-least-16-chars"
    with Service(data_dir, "--token", token) as running, running.client() as http:
        assert http.get("/api/health").json()["auth"] is True
        body = {"name": "cam", "uri": BALL, "pipeline": "plain"}
        assert http.post("/api/streams", json=body).status_code == 401
        assert (
            http.post("/api/streams", json=body, headers={"authorization": "Bearer wrong"}).status_code == 401
        )
        assert (
            http.post("/api/streams", json=body, headers={"authorization": f"Bearer {token}"}).status_code
            == 201
        )
        assert http.get("/api/streams/cam").status_code == 200  # reading the status needs none
        wait_for(lambda: stream_state(http, "cam"), 60, "cam running")
        assert http.get("/api/streams/cam/snapshot.jpg").status_code == 401
        assert http.get(f"/api/streams/cam/snapshot.jpg?token={token}").status_code == 200
        with http.stream("GET", "/api/streams/cam/live.mjpg") as response:
            assert response.status_code == 401
        assert http.delete("/api/streams/cam").status_code == 401
        assert (
            http.delete("/api/streams/cam", headers={"authorization": f"Bearer {token}"}).status_code == 204
        )
    assert token not in running.log()


def test_another_bind_address_needs_a_token() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "serve", "--host", "0.0.0.0", "--port", "1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={key: value for key, value in os.environ.items() if key != "VISTREAM_TOKEN"},
        timeout=120,
    )
    assert result.returncode == 2
    assert "give a token (--token or the VISTREAM_TOKEN environment variable)" in result.stderr


def test_workers_stop_when_the_service_is_killed(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    write_pipelines(data_dir)
    service = Service(data_dir).start()
    with service.client() as http:
        assert (
            http.post("/api/streams", json={"name": "orphan", "uri": BALL, "pipeline": "plain"}).status_code
            == 201
        )
        pid = wait_for(lambda: stream_state(http, "orphan"), 60, "orphan running")["pid"]
    assert service.process is not None
    service.process.kill()  # SIGKILL: no shutdown handler runs; the worker sees its pipe close
    service.process.wait(10)

    def gone() -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        return state == "Z"  # exited, waiting to be reaped by whoever adopted it

    wait_for(gone, 20, f"worker {pid} gone")


def test_a_request_for_another_host_name_is_refused(service: Service) -> None:
    # A page on another site that rebinds its name to 127.0.0.1 sends its own Host header.
    response = httpx.get(f"{service.base_url}/api/health", headers={"host": "evil.example"})
    assert response.status_code == 400
