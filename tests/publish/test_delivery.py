"""Nothing lost: real brokers SIGKILLed mid-run and restarted; received == objects.jsonl."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine.publish.delivery import EventDelivery
from engine.publish.mqtt import topic_for
from engine.publish.nats import subject_for
from engine.sinks.serialize import to_json_line
from tests.publish.helpers_brokers import Mosquitto, NatsServer
from tests.publish.helpers_events import MqttSubscriber, first_occurrences, jetstream_messages, run_scripted

pytestmark = [pytest.mark.broker, pytest.mark.slow]

FRAMES = 2400  # about 2,400 events


def _without_transport(message: dict) -> dict:
    return {k: v for k, v in message.items() if k not in ("subject", "topic")}


def test_nats_broker_killed_and_restarted_loses_and_duplicates_nothing(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    def restart() -> None:
        nats_server.start()

    local, delivery = run_scripted(
        tmp_path / "run", [nats_server.url], FRAMES, at_frame={800: nats_server.kill, 1500: restart}
    )
    stored = jetstream_messages(nats_server.url)
    assert len(local) > 2000
    assert [m["id"] for m in stored] == [e["id"] for e in local]  # all, once each, in order
    assert [_without_transport(m) for m in stored] == local
    assert all(m["subject"] == subject_for(m["source"], m["type"]) for m in stored)
    stats = delivery.stats().publishers[0]
    assert stats.replayed > 0  # the reconnect did send recent events again: JetStream dropped them


def test_mqtt_broker_killed_and_restarted_loses_nothing_after_deduplication(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    subscriber = MqttSubscriber(mosquitto.port)
    try:
        local, _ = run_scripted(
            tmp_path / "run", [mosquitto.url], FRAMES, at_frame={800: mosquitto.kill, 1500: mosquitto.start}
        )
        subscriber.wait_for(len(local), timeout_s=20)
        received = first_occurrences(subscriber.messages)
    finally:
        subscriber.close()
    assert len(local) > 2000
    assert {m["id"] for m in received} == {e["id"] for e in local}
    assert [m["seq"] for m in received] == sorted(m["seq"] for m in received)  # in order per source
    by_id = {e["id"]: e for e in local}
    assert all(_without_transport(m) == by_id[m["id"]] for m in received)
    assert all(m["topic"] == topic_for(m["source"], m["type"]) for m in received)


def test_events_spooled_while_the_broker_is_down_go_out_with_the_next_run(tmp_path: Path) -> None:
    server = NatsServer(tmp_path)  # not started: the broker is down for the whole first run
    local, delivery = run_scripted(tmp_path / "run", [server.url], 200, drain_timeout_s=0.5)
    assert delivery.stats().spool_events == len(local)  # all still spooled at the close
    server.start()
    try:
        again = EventDelivery.open(tmp_path / "run", [server.url])  # "vistream restarted"
        assert again.runners[0].wait_drained(20)
        again.close()
        stored = jetstream_messages(server.url)
    finally:
        server.stop()
    assert [m["id"] for m in stored] == [e["id"] for e in local]


def test_both_brokers_at_once_and_payloads_are_the_file_lines(
    tmp_path: Path, nats_server: NatsServer, mosquitto: Mosquitto
) -> None:
    subscriber = MqttSubscriber(mosquitto.port)
    try:
        local, delivery = run_scripted(tmp_path / "run", [nats_server.url, mosquitto.url], 300)
        subscriber.wait_for(len(local), timeout_s=10)
    finally:
        subscriber.close()
    lines = (tmp_path / "run" / "objects.jsonl").read_text().splitlines()
    assert [to_json_line(_without_transport(m)) for m in jetstream_messages(nats_server.url)] == lines
    assert len(first_occurrences(subscriber.messages)) == len(local)
    stats = delivery.stats()
    assert [p.published for p in stats.publishers] == [len(local), len(local)]
    assert stats.spooled == len(local)


def test_metrics_report_publisher_state_and_spool_depth(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from engine.metrics.publish import DeliveryCollector

    server = NatsServer(tmp_path)  # down
    delivery = EventDelivery.open(tmp_path, [server.url])
    try:
        delivery.put([{"id": f"e{i}", "source": "cam", "type": "new"} for i in range(5)])
        time.sleep(0.3)
        registry = CollectorRegistry()
        registry.register(DeliveryCollector(delivery))
        text = generate_latest(registry).decode()
    finally:
        delivery.close(drain_timeout_s=0.1)
    name = server.url
    assert "vistream_spool_events 5.0" in text
    assert f'vistream_publisher_up{{publisher="{name}"}} 0.0' in text
    assert f'vistream_publisher_pending_events{{publisher="{name}"}} 5.0' in text
    assert 'vistream_spool_dropped_events_total{reason="size"} 0.0' in text


def test_one_collector_labels_the_streams_of_a_service(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from engine.metrics.publish import DeliveryCollector

    servers = [NatsServer(tmp_path / "a"), NatsServer(tmp_path / "b")]
    deliveries = {
        name: EventDelivery.open(tmp_path / name, [s.url]) for name, s in zip("ab", servers, strict=True)
    }
    try:
        deliveries["b"].put([{"id": "x", "source": "cam", "type": "new"}])
        registry = CollectorRegistry()
        registry.register(DeliveryCollector(streams=lambda: deliveries))
        text = generate_latest(registry).decode()
    finally:
        for delivery in deliveries.values():
            delivery.close(drain_timeout_s=0.1)
    assert 'vistream_spool_events{stream="a"} 0.0' in text
    assert 'vistream_spool_events{stream="b"} 1.0' in text
    assert text.count("# TYPE vistream_spool_events gauge") == 1
