"""NATS JetStream publisher: subject ``vistream.<source>.<type>``, ``Nats-Msg-Id`` = event id.

The stream ``VISTREAM`` (subjects ``vistream.>``, file storage, JetStream's default 2 min
duplicate window) is created on first connection when missing, so a fresh ``nats-server -js``
works as it is. JetStream drops a message whose ``Nats-Msg-Id`` it stored within the
window: a publish retried after a timeout or replayed after a reconnect is stored once.

nats-py is asyncio; the client runs on an event loop of its own thread, and
:meth:`NatsPublisher.publish` (called on the runner's thread) submits to it. The client's
own buffering while disconnected is off (``pending_size=0``): a publish during an outage
fails at once and the runner retries it from the spool after the reconnect, in order,
instead of a hidden buffer replaying it after newer events.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.js.api import StorageType, StreamConfig

from engine.publish.base import PublishError, topic_token
from engine.publish.spool import SpooledEvent
from engine.sources.uri import mask_credentials

logger = logging.getLogger(__name__)

#: The JetStream stream events are stored in, and its subjects.
STREAM_NAME = "VISTREAM"
SUBJECT_PREFIX = "vistream"


def subject_for(source_id: str, event_type: str) -> str:
    """``vistream.<source>.<type>``, the source made a safe subject token."""
    return f"{SUBJECT_PREFIX}.{topic_token(source_id)}.{event_type}"


class NatsPublisher:
    """Publishes to a NATS server with JetStream (module docstring).

    Args:
        url: ``nats://host:port`` (user and password in the URL are passed to the server).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = mask_credentials(url)
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vistream-nats", daemon=True)
        self._nc: Any = None
        self._js: Any = None
        self._stream_ready = False
        self._connector: Any = None
        self._closed = False

    def connect(self, timeout_s: float) -> None:
        """Start the client's loop and connect in the background (retrying forever)."""
        self._thread.start()
        self._connector = asyncio.run_coroutine_threadsafe(self._connect_forever(timeout_s), self._loop)

    @property
    def connected(self) -> bool:
        """True while the client has a connection and the stream exists."""
        return self._nc is not None and self._nc.is_connected and self._stream_ready

    def publish(self, events: Sequence[SpooledEvent], timeout_s: float) -> int:
        """Publish with one acknowledgement per event; return the acknowledged prefix."""
        if not self.connected:
            raise PublishError("not connected")
        future = asyncio.run_coroutine_threadsafe(self._publish(events, timeout_s), self._loop)
        try:
            return future.result(timeout=timeout_s + 1.0)
        except TimeoutError as error:
            future.cancel()
            raise PublishError(f"no acknowledgement within {timeout_s:.1f} s") from error

    def close(self) -> None:
        """Close the connection and stop the loop; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            if self._connector is not None:
                self._connector.cancel()
            try:
                asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=3.0)
            except Exception as error:  # closing must not hide what ended the run
                logger.debug("nats: close failed: %s", error)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=3.0)
        if not self._loop.is_running():
            self._loop.close()

    async def _connect_forever(self, timeout_s: float) -> None:
        delay_s = 0.1
        while not self._closed:
            try:
                self._nc = await nats.connect(
                    self.url,
                    connect_timeout=timeout_s,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.25,
                    pending_size=0,
                    reconnected_cb=self._on_reconnected,
                    disconnected_cb=self._on_disconnected,
                    error_cb=self._on_error,
                )
            except Exception as error:  # unreachable now: keep trying, the events are spooled
                logger.debug("nats: cannot connect to %s: %s", self.name, error)
                await asyncio.sleep(delay_s)
                delay_s = min(2.0, delay_s * 2)
                continue
            self._js = self._nc.jetstream(timeout=timeout_s)
            await self._ensure_stream()
            self.connections += 1
            logger.info("nats: connected to %s", self.name)
            return

    async def _ensure_stream(self) -> None:
        try:
            await self._js.stream_info(STREAM_NAME)
        except nats.js.errors.NotFoundError:
            await self._js.add_stream(
                StreamConfig(name=STREAM_NAME, subjects=[f"{SUBJECT_PREFIX}.>"], storage=StorageType.FILE)
            )
            logger.info("nats: created JetStream stream %s (%s.>)", STREAM_NAME, SUBJECT_PREFIX)
        self._stream_ready = True

    async def _publish(self, events: Sequence[SpooledEvent], timeout_s: float) -> int:
        futures = []
        for event in events:
            try:
                futures.append(
                    await self._js.publish_async(
                        subject_for(event.source, event.type),
                        event.payload,
                        wait_stall=timeout_s,
                        headers={"Nats-Msg-Id": event.event_id},
                    )
                )
            except (nats.errors.Error, nats.js.errors.Error) as error:
                logger.debug("nats: publish stopped after %d: %s", len(futures), error)
                break
        if not futures:
            raise PublishError("cannot publish (disconnected)")
        acknowledged = 0
        deadline = self._loop.time() + timeout_s
        for future in futures:
            try:
                await asyncio.wait_for(future, max(0.0, deadline - self._loop.time()))
            except nats.js.errors.NoStreamResponseError:
                self._stream_ready = False  # a broker restarted without its store
                await self._ensure_stream()
                break
            except Exception as error:
                logger.debug("nats: acknowledgement %d failed: %s", acknowledged, error)
                break
            acknowledged += 1
        for future in futures[acknowledged:]:
            future.cancel()
        return acknowledged

    async def _close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()

    async def _on_reconnected(self) -> None:
        self.connections += 1
        logger.info("nats: reconnected to %s", self.name)

    async def _on_disconnected(self) -> None:
        if not self._closed:
            logger.info("nats: disconnected from %s; events are spooled until it is back", self.name)

    async def _on_error(self, error: Exception) -> None:
        logger.debug("nats: %s: %s", self.name, error)
