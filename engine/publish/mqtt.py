"""MQTT publisher (paho-mqtt, MQTT 3.1.1): topic ``vistream/<source>/<type>``, QoS 1.

QoS 1 is "at least once": the broker acknowledges each message (PUBACK) and the runner moves
the spool past what was acknowledged, in order. MQTT has no broker-side de-duplication, so
consumers de-duplicate on the event ``id``; the replay after a reconnect (see
:mod:`engine.publish.runner`) covers messages a broker acknowledged and then lost in a crash
(Mosquitto keeps them in memory between its persistence saves).

The session is clean and the client id random per run: undelivered events live in vistream's
spool, not in a broker session, so nothing depends on the broker remembering this client.
paho runs its network loop on its own thread and reconnects by itself.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from engine.publish.base import PublishError, topic_token
from engine.publish.spool import SpooledEvent
from engine.sources.uri import mask_credentials

logger = logging.getLogger(__name__)

#: Topics are ``TOPIC_PREFIX/<source>/<type>``.
TOPIC_PREFIX = "vistream"
# Messages in flight (sent, PUBACK not yet received) at once; paho's default is 20.
_MAX_INFLIGHT = 256


def topic_for(source_id: str, event_type: str) -> str:
    """``vistream/<source>/<type>``, the source made a safe topic level."""
    return f"{TOPIC_PREFIX}/{topic_token(source_id)}/{event_type}"


class MqttPublisher:
    """Publishes to an MQTT broker with QoS 1 (module docstring).

    Args:
        url: ``mqtt://[user:password@]host:port``.
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.url = url
        self.name = mask_credentials(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = int(parts.port or 1883)
        self.connections = 0
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"vistream-{uuid.uuid4().hex[:12]}",
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        if parts.username:
            self._client.username_pw_set(parts.username, parts.password)
        self._client.max_inflight_messages_set(_MAX_INFLIGHT)
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._started = False

    def connect(self, timeout_s: float) -> None:
        """Start paho's network thread; it connects and reconnects in the background."""
        self._client.connect_async(self.host, self.port, keepalive=max(5, int(timeout_s * 5)))
        self._client.loop_start()
        self._started = True

    @property
    def connected(self) -> bool:
        """True while the broker accepted the connection."""
        return bool(self._client.is_connected())

    def publish(self, events: Sequence[SpooledEvent], timeout_s: float) -> int:
        """Publish with QoS 1; return how many, from the first, got their PUBACK."""
        infos: list[Any] = []
        for event in events:
            if not self._client.is_connected():
                break
            info = self._client.publish(topic_for(event.source, event.type), event.payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                break
            infos.append(info)
        if not infos:
            raise PublishError("cannot publish (disconnected)")
        deadline = time.monotonic() + timeout_s
        acknowledged = 0
        for info in infos:
            try:
                info.wait_for_publish(timeout=max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as error:  # the connection went away
                logger.debug("mqtt: %s: %s", self.name, error)
                break
            if not info.is_published():
                break
            acknowledged += 1
        return acknowledged

    def close(self) -> None:
        """Disconnect and stop the network thread; safe to call twice."""
        if self._started:
            self._started = False
            self._client.disconnect()
            self._client.loop_stop()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            logger.warning("mqtt: %s refused the connection: %s", self.name, reason_code)
            return
        self.connections += 1
        logger.info("mqtt: connected to %s", self.name)

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if self._started:
            logger.info(
                "mqtt: disconnected from %s (%s); events are spooled until it is back", self.name, reason_code
            )
