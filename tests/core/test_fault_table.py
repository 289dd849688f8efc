"""The README's fault table is exactly what the fault tests say (see tests/fault_table.py)."""

from __future__ import annotations

import subprocess
import sys

from tests.fault_table import README, REPO_ROOT, collect, current_table, render


def test_readme_fault_table_matches_the_fault_tests() -> None:
    table = current_table(README.read_text(encoding="utf-8"))
    assert table is not None, "README.md lost its fault-table markers"
    assert table == render(collect()), "the README's fault table is stale: run `python -m tests.fault_table`"


def test_every_marked_test_is_collected_by_pytest() -> None:
    """A mark on a function pytest does not run (a typo, a helper) would be a row no test shows."""
    rows = collect()
    files = sorted({row.test.split("::")[0] for row in rows})
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "fault", *files],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    collected = {line.split("[")[0] for line in result.stdout.splitlines() if "::" in line}
    assert {row.test for row in rows} <= collected, result.stdout[-3000:]
    assert len(rows) >= 20
