"""The service's streams, stored in an embedded SQLite database (``DATA/streams.db``).

Standard-library :mod:`sqlite3`: no server to start, one file, atomic writes (a service
killed halfway through a change leaves the previous row). A restarted service reads every
stream back and starts its worker again. Rows hold the stream's configuration as JSON
(credentials included: the file is created readable by its owner only).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path

from engine.errors import ConfigError
from engine.serve.streams import StreamConfig

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
)
"""


class StreamRegistry:
    """Stream configurations by name, persisted.

    Args:
        path: The database file (created with its folder when missing).

    Raises:
        ConfigError: The database cannot be opened.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                # Owner-only before the first row: rows hold camera passwords.
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            # One connection shared by the API's threads, serialized by the lock below.
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as error:
            raise ConfigError(f"cannot open the stream registry {self.path}: {error}") from error
        self._lock = threading.Lock()

    def list(self) -> list[StreamConfig]:
        """Every stream, in the order they were added."""
        with self._lock:
            rows = self._db.execute("SELECT config FROM streams ORDER BY created_at, name").fetchall()
        return [StreamConfig.from_dict(json.loads(row[0])) for row in rows]

    def get(self, name: str) -> StreamConfig | None:
        """The stream called ``name``, or None."""
        with self._lock:
            row = self._db.execute("SELECT config FROM streams WHERE name = ?", (name,)).fetchone()
        return None if row is None else StreamConfig.from_dict(json.loads(row[0]))

    def add(self, config: StreamConfig) -> bool:
        """Store a new stream; False when one of that name exists (nothing is changed)."""
        now = time.time()
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO streams (name, config, created_at, updated_at) VALUES (?, ?, ?, ?)",
                    (config.name, json.dumps(config.to_dict()), now, now),
                )
            except sqlite3.IntegrityError:
                return False
        return True

    def update(self, config: StreamConfig) -> bool:
        """Replace a stream's configuration; False when there is no such stream."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE streams SET config = ?, updated_at = ? WHERE name = ?",
                (json.dumps(config.to_dict()), time.time(), config.name),
            )
        return cursor.rowcount == 1

    def delete(self, name: str) -> bool:
        """Remove a stream; False when there is no such stream."""
        with self._lock:
            cursor = self._db.execute("DELETE FROM streams WHERE name = ?", (name,))
        return cursor.rowcount == 1

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
