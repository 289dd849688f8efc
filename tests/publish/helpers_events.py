"""A scripted stream of object events through the real objects sink, and what brokers hold."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import supervision as sv

from engine.frame import Batch, Frame
from engine.publish.delivery import EventDelivery
from engine.sinks.objects import ObjectEventsSink
from engine.stage import Context

TRACK_FRAMES = 40  # each scripted track lives this many frames
NEW_TRACK_EVERY = 4  # ...and one starts every 4 frames: ~10 at once


def scripted_frame(index: int, source_id: str = "cam0") -> Frame:
    """Frame ``index`` of a 25 fps scene where tracks come and go on a fixed schedule, each
    entering a zone and crossing a line once."""
    frame = Frame(
        source_id=source_id, index=index, pts_ns=index * 40_000_000, image=np.zeros((8, 8, 3), np.uint8)
    )
    alive = [
        t for t in range(max(0, (index - TRACK_FRAMES) // NEW_TRACK_EVERY), index // NEW_TRACK_EVERY + 1)
    ]
    alive = [t for t in alive if t * NEW_TRACK_EVERY <= index < t * NEW_TRACK_EVERY + TRACK_FRAMES]
    ids = np.asarray([t + 1 for t in alive], dtype=int)
    frame.layers["objects"] = sv.Detections(
        xyxy=np.tile(np.array([[1, 1, 4, 4]], np.float32), (len(ids), 1)),
        confidence=np.full(len(ids), 0.9, np.float32),
        class_id=np.zeros(len(ids), int),
        tracker_id=ids,
        data={"class_name": np.array(["car"] * len(ids))},
    )
    for t in alive:
        age = index - t * NEW_TRACK_EVERY
        if age == 10:
            frame.events.append({"type": "zone_entered", "zone": "z", "track_id": t + 1, "entered_pts_ns": 0})
        if age == 20:
            frame.events.append({"type": "line_crossed", "line": "l", "direction": "in", "track_id": t + 1})
    return frame


def run_scripted(
    out_dir: Path,
    urls: list[str],
    frames: int,
    *,
    at_frame: dict[int, Callable[[], None]] | None = None,
    frame_period_s: float = 0.001,
    drain_timeout_s: float = 30.0,
) -> tuple[list[dict[str, Any]], EventDelivery]:
    """Write ``frames`` scripted frames through the objects sink into ``urls`` (calling
    ``at_frame[i]()`` before frame i, e.g. to kill the broker); return objects.jsonl's events."""
    delivery = EventDelivery.open(out_dir, urls)
    sink = ObjectEventsSink(out_dir / "objects.jsonl", listeners=[delivery])
    sink.open(Context())
    for index in range(frames):
        if at_frame and index in at_frame:
            at_frame[index]()
        sink.write(Batch.of([scripted_frame(index)]))
        time.sleep(frame_period_s)
    sink.end_of_stream("cam0")
    sink.close()
    delivery.close(drain_timeout_s=drain_timeout_s)
    return [json.loads(line) for line in (out_dir / "objects.jsonl").read_text().splitlines()], delivery


def jetstream_messages(url: str) -> list[dict[str, Any]]:
    """Every message stored in the vistream JetStream stream, in stream order."""

    async def fetch() -> list[dict[str, Any]]:
        import nats

        connection = await nats.connect(url)
        js = connection.jetstream()
        info = await js.stream_info("VISTREAM")
        stored = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            message = await js.get_msg("VISTREAM", seq)
            stored.append({"subject": message.subject, **json.loads(message.data)})
        await connection.close()
        return stored

    return asyncio.run(fetch())


class MqttSubscriber:
    """A QoS 1 subscriber to ``vistream/#`` with a persistent session, reconnecting by itself."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id="vistream-test-subscriber",
            clean_session=False,
        )
        self.client.on_connect = lambda client, *_: client.subscribe("vistream/#", qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        deadline = time.monotonic() + 10
        while not self.client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # the SUBACK

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._lock:
            self.messages.append({"topic": message.topic, **json.loads(message.payload)})

    def wait_for(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if len({m["id"] for m in self.messages}) >= count:
                    return
            time.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def first_occurrences(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """De-duplicated on ``id``, keeping the first copy (what a consumer does)."""
    seen: set[str] = set()
    kept = []
    for message in messages:
        if message["id"] not in seen:
            seen.add(message["id"])
            kept.append(message)
    return kept
