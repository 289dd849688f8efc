"""The cluster hooks of the service without a cluster: one local node, moves refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.serve.service import ConflictError, StreamService


def test_without_a_cluster_there_is_one_local_node_and_nothing_to_move(tmp_path: Path) -> None:
    service = StreamService(tmp_path)
    try:
        assert service.nodes() == [{"node": "local", "alive": True, "streams": []}]
        with pytest.raises(ConflictError, match="only on a cluster"):
            service.move("cam", "node")
    finally:
        service.close()
