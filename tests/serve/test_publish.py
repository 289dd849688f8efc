"""`vistream serve --publish`: each stream's object events reach a real NATS JetStream server,
and nothing is lost when the broker is SIGKILLed and the stream's worker is SIGKILLed while the
broker is down: the stream's spool outlives the killed run, and its next run sends the rest.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from engine.publish.stream import read_stream
from tests.publish.helpers_brokers import NatsServer
from tests.serve.helpers_serve import (
    Service,
    read_objects_files,
    wait_for,
    write_replayed_pipeline,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]

# 25 fps for 16 s a run: long enough to kill the worker halfway on a loaded machine.
URI = "test://?width=160&height=120&fps=25&frames=400&live=1&pattern=black"


def _broker_events(url: str) -> list[dict[str, Any]]:
    try:
        return [event for _, event in asyncio.run(read_stream(url))]
    except Exception:  # no stream yet (nothing published), or the broker restarting
        return []


def _view(client: Any, name: str) -> dict[str, Any]:
    response = client.get(f"/api/streams/{name}")
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


def test_stream_events_reach_the_broker_across_a_broker_kill_and_a_worker_kill(tmp_path: Path) -> None:
    nats = NatsServer(tmp_path)
    nats.start()
    data_dir = tmp_path / "data"
    write_replayed_pipeline(data_dir)
    try:
        with Service(data_dir, "--publish", nats.url) as service, service.client() as client:
            # One stream on the service's brokers, one that opts out with an empty list.
            for name, publish in (("gate", None), ("quiet", [])):
                body = {"name": name, "uri": URI, "pipeline": "replayed", "publish": publish}
                response = client.post("/api/streams", json=body)
                assert response.status_code == 201, response.text
            assert _view(client, "gate")["publish"] is None  # stored as given: the service's
            assert _view(client, "quiet")["publish"] == []

            wait_for(lambda: len(_broker_events(nats.url)) >= 4, 120, "first events at the broker")
            metrics = client.get("/metrics").text
            assert f'vistream_publisher_up{{publisher="{nats.url}",stream="gate"}} 1.0' in metrics, metrics
            assert 'stream="quiet"' not in metrics.split("vistream_spool_events")[-1].split("\n# ")[0]

            # The broker dies; the worker goes on spooling, then is SIGKILLed while it is down.
            nats.kill()
            first = _view(client, "gate")
            wait_for(
                lambda: (
                    (_view(client, "gate").get("delivery") or {}).get("spooled", 0)
                    > (first.get("delivery") or {}).get("spooled", 0) + 2
                ),
                60,
                "events spooled while the broker is down",
            )
            pid = _view(client, "gate")["pid"]
            os.kill(pid, signal.SIGKILL)
            nats.start()  # same port and store
            wait_for(
                lambda: (v := _view(client, "gate"))["worker_restarts"] == 1 and v["pid"] != pid,
                60,
                "the worker restarted",
            )
            wait_for(lambda: _view(client, "gate")["state"] == "stopped", 120, "the second run ended")
            wait_for(lambda: _view(client, "quiet")["state"] == "stopped", 60, "the quiet stream ended")
            service_log = service.log()
        stream_dir = data_dir / "streams" / "gate"
        runs = sorted(path for path in stream_dir.iterdir() if path.is_dir())
        assert len(runs) == 2, runs
        written = read_objects_files(stream_dir)
        received = wait_for(
            lambda: (events := _broker_events(nats.url)) and len(events) >= len(written) and events,
            30,
            "every written event at the broker",
        )
    finally:
        nats.stop()

    ids = [event["id"] for event in received]
    assert len(ids) == len(set(ids)), "the broker kept a duplicate"
    assert {event["source"] for event in received} == {"gate"}  # nothing of the opted-out stream
    assert {event["id"] for event in written} <= set(ids), "an event written to objects.jsonl is missing"
    # The completed (second) run: exactly its file, in order.
    second_ids = [
        event["id"]
        for event in read_objects_files(runs[-1].parent)
        if event["id"].startswith(_token(runs[-1]))
    ]
    assert second_ids and [i for i in ids if i in set(second_ids)] == second_ids
    # Per run (the id's token), the broker holds the events in the order they were made.
    by_run: dict[str, list[int]] = defaultdict(list)
    for event_id in ids:
        token, _, number = event_id.rpartition("-")
        by_run[token].append(int(number))
    assert len(by_run) == 2 and all(numbers == sorted(numbers) for numbers in by_run.values())
    types = [event["type"] for event in received]
    assert types.count("new") >= 10 and types.count("end") >= 10, types
    assert "Traceback" not in service_log


def _token(run_dir: Path) -> str:
    """The id prefix of a run's events (its first event's)."""
    first_line = (run_dir / "objects.jsonl").read_text(encoding="utf-8").splitlines()[0]
    return str(json.loads(first_line)["id"].rpartition("-")[0])
