"""The durable spool: order, cursors, persistence across reopen, bounds and drop counts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.publish.spool import Spool


def events(start: int, count: int, source: str = "cam", size: int = 0) -> list[dict]:
    return [
        {"id": f"e{i}", "source": source, "type": "update", "pad": "x" * size}
        for i in range(start, start + count)
    ]


def test_append_read_in_order_and_trim_what_every_consumer_is_done_with(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite", consumers=["a", "b"])
    assert spool.append(events(0, 10)) == 10
    read = spool.read(0, limit=4)
    assert [e.seq for e in read] == [1, 2, 3, 4]
    assert [json.loads(e.payload)["id"] for e in read] == ["e0", "e1", "e2", "e3"]
    spool.commit_cursor("a", 6)
    assert spool.depth(after_seq=0) == 10  # b still needs them
    spool.commit_cursor("b", 4)
    assert spool.depth(after_seq=0) == 6 and [e.seq for e in spool.read(0)][0] == 5
    spool.commit_cursor("b", 3)  # never backwards
    assert spool.cursor("b") == 4
    spool.close()


def test_reopening_keeps_undelivered_events_and_cursors(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite", consumers=["a"])
    spool.append(events(0, 5))
    spool.commit_cursor("a", 2)
    spool.close()
    again = Spool(tmp_path / "s.sqlite", consumers=["a", "new"])
    assert again.cursor("a") == 2
    assert again.cursor("new") == 2  # a new publisher gets everything still spooled
    assert [e.seq for e in again.read(again.cursor("a"))] == [3, 4, 5]
    assert again.append(events(5, 1)) == 6  # numbering goes on
    again.close()
    # A publisher no longer given is forgotten: it does not pin the spool.
    last = Spool(tmp_path / "s.sqlite", consumers=["new"])
    last.commit_cursor("new", 6)
    assert last.depth(after_seq=0) == 0
    last.close()


def test_over_the_size_bound_the_oldest_are_dropped_and_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite", consumers=["a"], max_bytes=10_000)
    for start in range(0, 100, 10):
        spool.append(events(start, 10, size=200))
    assert spool.size_bytes <= 10_000
    kept = spool.read(0, limit=1000)
    assert kept[-1].seq == 100  # the newest are kept
    assert spool.dropped["size"] == 100 - len(kept) > 0
    assert [e.seq for e in kept] == list(range(kept[0].seq, 101))
    spool.close()


def test_events_older_than_max_age_are_dropped(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite", consumers=["a"], max_age_s=0.2)
    spool.append(events(0, 3))
    time.sleep(1.1)  # age is checked at most once a second
    spool.append(events(3, 1))
    assert [e.seq for e in spool.read(0)] == [4]
    assert spool.dropped == {"size": 0, "age": 3}
    spool.close()


@pytest.mark.parametrize("kwargs", [{"max_bytes": 10}, {"max_age_s": 0}, {"synchronous": "off"}])
def test_invalid_bounds_are_refused(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        Spool(tmp_path / "s.sqlite", consumers=["a"], **kwargs)
