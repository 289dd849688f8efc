"""Event publishers: object events from the durable spool to brokers, nothing lost.

- :mod:`engine.publish.spool`: the SQLite (WAL) spool every event is committed to first.
- :mod:`engine.publish.base`: the ``Publisher`` protocol and the URL scheme table.
- :mod:`engine.publish.nats` (JetStream, ``Nats-Msg-Id``), :mod:`engine.publish.mqtt` (QoS 1).
- :mod:`engine.publish.runner`: one thread per publisher, spool -> broker, replay on reconnect.
- :mod:`engine.publish.delivery`: the spool plus the runners of one output directory.
- :mod:`engine.publish.outputs`: ``open_published_outputs``, what ``run`` and ``serve`` call.
"""
