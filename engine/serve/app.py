"""The HTTP face of the service: the REST API, the live video, the metrics and the web UI.

Every route is a thin call into :class:`~engine.serve.service.StreamService`. Errors become
a 4xx with a one-line ``{"detail": reason}``: 400 invalid (unknown pipeline, bad URI, invalid
calibration), 401 no or wrong token, 403 another origin, 404 no such stream, 409 a clash (a
name taken, no frame yet), 413 a body over the cap, 422 a body of the wrong shape.
OpenAPI docs at ``/docs``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from starlette.middleware.trustedhost import TrustedHostMiddleware

from engine import __version__
from engine.errors import EngineError
from engine.serve.metrics import render_metrics
from engine.serve.security import MUTATING_METHODS, BodySizeLimit, cross_origin, token_matches
from engine.serve.service import ConflictError, NotFoundError, StreamService
from engine.serve.streams import calibration_stages

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_MJPEG_BOUNDARY = "vistreamframe"
_POLL_S = 0.02
# A live frame older than this (a stopped or restarting worker) is not shown to a new viewer.
_STALE_FRAME_S = 2.0


class ImageSize(BaseModel):
    """Size of the image the points were marked on."""

    model_config = ConfigDict(extra="forbid")
    width: int = Field(gt=0, le=16384)
    height: int = Field(gt=0, le=16384)


class CalibrationIn(BaseModel):
    """A calibration from the editor: four points in order, the rectangle's size in metres."""

    model_config = ConfigDict(extra="forbid")
    points: list[tuple[float, float]] = Field(max_length=16)
    width_m: float
    length_m: float
    image_size: ImageSize | None = None
    mask: list[tuple[float, float]] | None = Field(default=None, max_length=64)
    notes: str = Field(default="", max_length=4000)
    camera: str | None = Field(default=None, pattern=_NAME_PATTERN)


class StreamIn(BaseModel):
    """A new stream."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=_NAME_PATTERN, description="letters, digits, '.', '_', '-'; also the source id")
    uri: str = Field(min_length=1, max_length=2048, description="file, rtsp://, /dev/videoN or test:// URI")
    pipeline: str = Field(
        default="default", max_length=128, description="name of a pipeline (GET /api/pipelines)"
    )
    source: dict[str, Any] = Field(
        default_factory=dict, description="source options: frame_policy, reconnect..."
    )
    record_video: StrictBool = False
    publish: list[str] | None = Field(
        default=None,
        max_length=8,
        description="broker URLs for the object events (nats://HOST:PORT, mqtt://HOST:PORT); "
        "null: the service's --publish",
    )
    enabled: StrictBool = True


class MoveIn(BaseModel):
    """Where to move a stream's worker: a node's id, a unique id prefix or its address."""

    model_config = ConfigDict(extra="forbid")
    node: str = Field(min_length=1, max_length=128)


class StreamPatch(BaseModel):
    """Changes to a stream; only the keys given change. ``calibration: null`` restores the pipeline's."""

    model_config = ConfigDict(extra="forbid")
    uri: str | None = Field(default=None, min_length=1, max_length=2048)
    pipeline: str | None = Field(default=None, max_length=128)
    source: dict[str, Any] | None = None
    calibration: CalibrationIn | None = None
    record_video: StrictBool | None = None
    publish: list[str] | None = Field(default=None, max_length=8, description="null: the service's --publish")
    enabled: StrictBool | None = None


def create_app(
    service: StreamService,
    *,
    token: str | None = None,
    allowed_hosts: list[str] | None = None,
    ui: bool = True,
) -> FastAPI:
    """Build the ASGI app around a service (started and closed with the app's lifespan).

    Args:
        service: The streams.
        token: Required on mutating requests and video when set.
        allowed_hosts: Host header values accepted (None: any). A service on 127.0.0.1 accepts
            only its loopback names, so a web page cannot reach it through DNS rebinding.
        ui: Serve the web UI at ``/``.
    """
    closing = asyncio.Event()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(service.start)
        yield
        closing.set()
        await asyncio.to_thread(service.close)

    app = FastAPI(
        title="vistream",
        version=__version__,
        description="Camera streams through vistream pipelines: add, change, watch, calibrate.",
        lifespan=lifespan,
    )
    app.add_middleware(BodySizeLimit)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    started_s = time.monotonic()

    def authorized(request: Request) -> None:
        headers = {key.lower(): value for key, value in request.headers.items()}
        if request.method in MUTATING_METHODS and cross_origin(headers):
            raise HTTPException(403, "cross-origin request refused")
        if not token_matches(token, headers, dict(request.query_params)):
            raise HTTPException(401, "missing or wrong token (Authorization: Bearer TOKEN)")

    guarded = [Depends(authorized)]

    @app.exception_handler(NotFoundError)
    async def not_found(_request: Request, error: NotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=404)

    @app.exception_handler(ConflictError)
    async def conflict(_request: Request, error: ConflictError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=409)

    @app.exception_handler(EngineError)
    async def invalid(_request: Request, error: EngineError) -> JSONResponse:
        return JSONResponse({"detail": _one_line(str(error))}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def malformed(_request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(part) for part in first.get("loc", ())[1:])
        reason = f"{where}: {first['msg']}" if where else str(first["msg"])
        return JSONResponse({"detail": _one_line(reason)}, status_code=422)

    # -- API ---------------------------------------------------------------------------------

    @app.get("/api/health", tags=["service"])
    def health() -> dict[str, Any]:
        """Liveness: always ``{"status": "ok"}`` while the service answers."""
        return {
            "status": "ok",
            "version": __version__,
            "streams": len(service.names()),
            "uptime_s": round(time.monotonic() - started_s, 1),
            "auth": token is not None,
        }

    @app.get("/api/pipelines", tags=["service"])
    def pipelines() -> list[dict[str, Any]]:
        """The pipelines a stream may name, and which of their stages take a calibration."""
        result = []
        for name in service.catalog.names():
            try:
                stages = calibration_stages(service.catalog.load(name))
                result.append({"name": name, "calibration_stages": stages})
            except EngineError as error:
                result.append({"name": name, "error": _one_line(str(error))})
        return result

    @app.get("/api/streams", tags=["streams"])
    def list_streams() -> list[dict[str, Any]]:
        """Every stream: configuration (URI masked) and live status."""
        return service.views()

    @app.post("/api/streams", status_code=201, tags=["streams"], dependencies=guarded)
    def add_stream(body: StreamIn) -> dict[str, Any]:
        """Add a stream and start its worker."""
        return service.add(body.model_dump())

    @app.get("/api/streams/{name}", tags=["streams"])
    def get_stream(name: str) -> dict[str, Any]:
        """A stream's configuration (URI masked) and, as top-level fields, its live status."""
        return service.get(name)

    @app.patch("/api/streams/{name}", tags=["streams"], dependencies=guarded)
    def patch_stream(name: str, body: StreamPatch) -> dict[str, Any]:
        """Change a stream; its worker restarts with the new configuration (the others go on)."""
        changes = body.model_dump(exclude_unset=True)
        if not changes:
            raise HTTPException(400, "nothing to change")
        return service.update(name, changes)

    @app.delete("/api/streams/{name}", status_code=204, tags=["streams"], dependencies=guarded)
    def delete_stream(name: str) -> Response:
        """Stop a stream's worker and remove the stream (its outputs stay on disk)."""
        service.delete(name)
        return Response(status_code=204)

    @app.post("/api/streams/{name}/move", tags=["cluster"], dependencies=guarded)
    def move_stream(name: str, body: MoveIn) -> dict[str, Any]:
        """Move the stream's worker to another node of the cluster (outputs finalized first)."""
        return service.move(name, body.node)

    @app.get("/api/nodes", tags=["cluster"])
    def nodes() -> list[dict[str, Any]]:
        """The cluster's nodes (alive or lost) and the streams running on each."""
        return service.nodes()

    @app.get("/api/streams/{name}/snapshot.jpg", tags=["video"], dependencies=guarded)
    def snapshot(name: str, raw: bool = False) -> Response:
        """The latest frame as JPEG: annotated, or as decoded with ``?raw=1`` (for calibration)."""
        data = service.supervisor(name).snapshot(annotated=not raw)
        if data is None:
            raise HTTPException(409, f"stream {name!r} has no frame yet")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    @app.get("/api/streams/{name}/live.mjpg", tags=["video"], dependencies=guarded)
    def live(name: str) -> StreamingResponse:
        """The annotated video as MJPEG (``multipart/x-mixed-replace``), capped at the live rate."""
        supervisor = service.supervisor(name)

        async def frames() -> AsyncIterator[bytes]:
            sent: int | None = None
            opened_s = time.monotonic()
            while not closing.is_set() and supervisor in service.supervisors():
                supervisor.watch()
                frame, received_s = supervisor.frame, supervisor.frame_received_s
                if frame is not None and frame[0] != sent and received_s > opened_s - _STALE_FRAME_S:
                    sent = frame[0]
                    yield _mjpeg_part(frame[1])
                await asyncio.sleep(_POLL_S)

        return StreamingResponse(
            frames(),
            media_type=f"multipart/x-mixed-replace; boundary={_MJPEG_BOUNDARY}",
            headers={"Cache-Control": "no-store"},
        )

    @app.get("/api/streams/{name}/events", tags=["streams"], response_model=None)
    def events(name: str, request: Request) -> list[dict[str, Any]] | StreamingResponse:
        """The latest events (JSON); with ``Accept: text/event-stream``, Server-Sent Events as they come."""
        recent = service.events(name)
        if "text/event-stream" not in request.headers.get("accept", ""):
            return recent
        supervisor = service.supervisor(name)

        async def stream() -> AsyncIterator[bytes]:
            last = int(request.headers.get("last-event-id") or 0) if recent else 0
            while not closing.is_set() and supervisor in service.supervisors():
                for event in list(supervisor.events):
                    if event["id"] > last:
                        last = event["id"]
                        yield _sse(last, event)
                await asyncio.sleep(0.25)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    @app.get("/api/streams/{name}/calibration", tags=["calibration"])
    def get_calibration(name: str) -> dict[str, Any]:
        """The calibration the stream uses (its own or its pipeline's) and the stages that use it."""
        return service.calibration(name)

    @app.post("/api/streams/{name}/calibration/preview", tags=["calibration"], dependencies=guarded)
    def preview_calibration(name: str, body: CalibrationIn) -> dict[str, Any]:
        """Validate a calibration and return its metric grid in image pixels (nothing is saved)."""
        return service.preview_calibration(name, body.model_dump(exclude_none=True))

    @app.put("/api/streams/{name}/calibration", tags=["calibration"], dependencies=guarded)
    def save_calibration(name: str, body: CalibrationIn) -> dict[str, Any]:
        """Write the stream's calibration file and restart its worker with it (the same as a PATCH)."""
        return service.save_calibration(name, body.model_dump(exclude_none=True))

    @app.get("/metrics", tags=["service"], response_class=Response)
    def metrics() -> Response:
        """Prometheus metrics, every series labelled with its stream."""
        return Response(render_metrics(service), media_type="text/plain; version=0.0.4")

    if ui:
        assets = resources.files("engine.serve") / "ui"

        @app.get("/", include_in_schema=False)
        def index() -> FileResponse:
            return FileResponse(str(assets / "index.html"), headers={"Cache-Control": "no-store"})

        app.mount("/ui", StaticFiles(directory=str(assets)), name="ui")
    return app


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _mjpeg_part(jpeg: bytes) -> bytes:
    head = f"--{_MJPEG_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
    return head.encode() + jpeg + b"\r\n"


def _sse(event_id: int, event: dict[str, Any]) -> bytes:
    data = json.dumps(event, separators=(",", ":"), default=str)
    return f"id: {event_id}\nevent: {event.get('type', 'event')}\ndata: {data}\n\n".encode()
