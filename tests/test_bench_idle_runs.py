"""Smoke test of `bench/idle_runs.py` at a tiny size: it runs and prints every figure.

Timings are never asserted (the machine is shared and noisy); only that each row is there,
that the self-check found the bulk-made rows identical to the engine's, and that the due
scan and the run look-up are index searches.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("idle_runs", REPO / "bench" / "idle_runs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while defined
    spec.loader.exec_module(module)
    return module


def test_idle_runs_prints_storage_memory_timings_and_query_plans(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    idle_runs = load_bench()
    idle_runs.main(["--runs", "2000", "--sample", "50", "--budget", "5", "--rounds", "2",
                    "--lookups", "3", "--engine-lookups", "1", "--dir", str(tmp_path)])
    out = capsys.readouterr().out
    lines = out.splitlines()

    assert "1,000, 2,000 waiting runs per store" in lines[0]
    assert sum("built" in line for line in lines) == 2
    assert "rows identical to the engine's: yes" in out
    storage = [line for line in lines if "bytes per waiting run" in line]
    assert len(storage) == 2 and all("+ WAL 0 B" in line for line in storage)
    assert any(line.strip().startswith("runs ") and "B/run" in line for line in lines)
    assert "this process: before creating runs" in out
    assert sum("fresh process," in line for line in lines) == 2

    header = next(line for line in lines if "2k/1k" in line)
    assert "1,000 runs" in header and "2,000 runs" in header
    for row in ("create: Engine.execute", "create: store API (4 calls)",
                "create: bulk executemany", "store.due_runs(now)", "store.due_runs(now, tenant)",
                "store.get_run(id)", "Engine.get_run(id)", "Engine.approve(id)",
                "Engine.resume(id)", "approve + resume"):
        cells = next(line for line in lines if line.strip().startswith(row + " ")).split()
        assert len(cells) - len(row.split()) == 3, cells  # 1k, 2k, ratio
        float(cells[-1])
    assert any(line.strip().startswith("contract 6 (") for line in lines)

    assert "EXPLAIN QUERY PLAN" in out
    plan_of = {line.split(":")[0].strip(): lines[i + 1].strip() for i, line in enumerate(lines)
               if line.strip().startswith(("due_runs(now):", "get_run(id):"))}
    assert plan_of["due_runs(now)"].startswith("SEARCH runs USING INDEX runs_due")
    assert "(tenant_id=? AND run_id=?)" in plan_of["get_run(id)"]
    assert "Engine.approve + Engine.resume:" in out and "statements with a plan warning:" in out
    assert not list(tmp_path.iterdir())  # the stores were removed
