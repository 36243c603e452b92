"""bench/tenants.py works end to end at a tiny size (its self-check included): the figures
in the README come from this script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_tenants_benchmark_runs_and_reports_every_figure(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "tenants.py"), "--tenants", "12", "--runs", "3",
         "--rounds", "2", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| | 10 tenants")
    assert [row.split("|")[1].strip() for row in rows[1:]] == [
        "storage per waiting run", '`tenant.execute("release")` until it waits',
        "`tenant.runs.get(run_id)`", '`tenant.runs.list(status="waiting")` (3 runs)']
    assert "12 tenants (36 runs)" in rows[0]
    assert not list(tmp_path.glob("*.db"))  # the stores were removed
