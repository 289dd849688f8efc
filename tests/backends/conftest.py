"""Backend tests: keep Ultralytics offline and out of the user's settings directory."""

from __future__ import annotations

import tests.backends.helpers_yolo  # noqa: F401  (sets YOLO_* before Ultralytics is imported)
