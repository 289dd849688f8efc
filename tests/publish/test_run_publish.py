"""`vistream run --publish` on the real traffic video with the broker SIGKILLed mid-run."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, SHARED_DIR
from tests.publish.helpers_brokers import NatsServer
from tests.publish.helpers_events import jetstream_messages

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_run_publishes_every_object_event_across_a_broker_kill(
    tmp_path: Path, nats_server: NatsServer, highway_video: Path
) -> None:
    env = {**os.environ, "VISTREAM_SHARED": str(SHARED_DIR), "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0"}
    vistream = REPO_ROOT / ".venv/bin/vistream"
    command = [str(vistream)] if vistream.exists() else ["python", "-m", "engine.cli.main"]
    out = tmp_path / "run"
    run = subprocess.Popen(
        [*command, "run", str(highway_video), "--pipeline", "traffic", "--no-video", "--quiet"]
        + ["--max-frames", "700", "--publish", nats_server.url, "--out", str(out)],
        env=env,
        cwd=REPO_ROOT,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "objects.jsonl").exists() or (out / "objects.jsonl").stat().st_size < 2000:
            assert run.poll() is None and time.monotonic() < deadline, "the run ended before any event"
            time.sleep(0.1)
        nats_server.kill()
        time.sleep(2.0)
        nats_server.start()
        assert run.wait(timeout=300) == 0
    finally:
        if run.poll() is None:
            run.kill()
    local = [json.loads(line) for line in (out / "objects.jsonl").read_text().splitlines()]
    stored = jetstream_messages(nats_server.url)
    assert [m["id"] for m in stored] == [e["id"] for e in local]
    new = Counter(e["object"]["track_id"] for e in local if e["type"] == "new")
    end = Counter(e["object"]["track_id"] for e in local if e["type"] == "end")
    assert new == end and set(new.values()) == {1}
    summary = json.loads((out / "summary.json").read_text())
    publisher = summary["publish"]["publishers"][nats_server.url]
    assert publisher["pending"] == 0 and publisher["published"] >= len(local)
