"""Source tests: skip `gst`-marked tests where GStreamer does not import."""

from __future__ import annotations

import pytest

from engine.sources import gstreamer_available


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gst") is not None and not gstreamer_available():
        pytest.skip("GStreamer is not available through PyGObject (install the 'gst' extra)")
