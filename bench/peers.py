"""agentflow against DBOS Transact and LangGraph: the same workloads, alternated, on one machine.

    pip install -e '.[bench]' && python bench/peers.py [--rounds 3] [--steps 1000] [--readme]
    python bench/peers.py --systems agentflow --workloads crash   # one system's part only

Workloads (bench/peer_trials.py runs each trial in a fresh process; the systems alternate
A B C A B C ... round by round, so a noisy neighbour hits them alike):

- `sequential`: STEPS durable no-op steps in one run, at each system's default durability
  and at the strongest it offers: time per step, and bytes the store grew by per step;
- `fanout`: 100 parallel tools of 20 ms each, then a fan-in step: wall time against the
  ideal 20 ms;
- `crash`: a STEPS-step run SIGKILLed once about half of its steps ran, then recovered in a
  new process: the time the recovery took to finish (and its CPU, where the system's trial
  measures it), and how many steps whose tool had run before the kill ran again (the call
  in flight at the kill, its result not yet committed, is re-run by design: contract 2);
- raw SQLite commits (`BEGIN; INSERT; COMMIT` of a ~100-byte row) in WAL mode with
  `synchronous=FULL` and `NORMAL`, and in rollback-journal mode with FULL (what DBOS's SQLite
  system database uses), as the floor.

Reports the median with min and max of each cell, writes bench/RESULTS.md, and with
`--readme` puts the summary table in the README (between its `peers` markers). With
`--systems` or `--workloads` naming fewer than all, it prints each cell measured and
writes nothing.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentflow.readme_sections import update_section  # noqa: E402
from bench.raw_sqlite import ROW, raw_commit_seconds  # noqa: E402

README_START, README_END = "<!-- peers:start -->", "<!-- peers:end -->"


@dataclass(frozen=True)
class Config:
    system: str
    setting: str
    label: str  # the durability in words


SEQUENTIAL = [
    Config("agentflow", "full", "full: WAL, synchronous=FULL (default and strongest)"),
    Config("agentflow", "normal", "normal: WAL, synchronous=NORMAL"),
    Config("dbos", "default", "rollback journal, synchronous=FULL (its only setting)"),
    Config("langgraph", "async", "durability='async' (default): checkpoint written "
                                 "while the next step runs; WAL"),
    Config("langgraph", "sync", "durability='sync' (strongest): checkpoint written "
                                "before the next step; WAL"),
]
DEFAULTS = [SEQUENTIAL[0], SEQUENTIAL[2], SEQUENTIAL[3]]


@dataclass
class Samples:
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, cell: str, value: float) -> None:
        self.values.setdefault(cell, []).append(value)

    def median(self, cell: str) -> float:
        return statistics.median(self.values[cell])

    def text(self, cell: str, scale: float, unit: str, digits: int = 0) -> str:
        values = [v * scale for v in self.values[cell]]
        return (f"{statistics.median(values):,.{digits}f} {unit} "
                f"[{min(values):,.{digits}f}-{max(values):,.{digits}f}]")


def trial(config: Config, workload: str, steps: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="peers-") as directory:
        done = subprocess.run(
            [sys.executable, "-m", "bench.peer_trials", config.system, workload,
             config.setting, directory, str(steps)],
            cwd=ROOT, capture_output=True, text=True, timeout=900,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        if done.returncode:
            raise RuntimeError(f"{config.system} {workload}: {done.stderr[-2000:]}")
        result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
        return result


def crash_trial(config: Config, steps: int) -> tuple[float, float | None, int]:
    """Kill a run at about half its steps, recover it; (recovery seconds, its CPU seconds
    if measured, completed steps that ran again)."""
    with tempfile.TemporaryDirectory(prefix="peers-") as directory:
        side = Path(directory) / "side"
        command = [sys.executable, "-m", "bench.peer_trials", config.system, "crash",
                   config.setting, directory, str(steps)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        worker = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 600
        while not side.exists() or len(side.read_text().splitlines()) < steps // 2:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{config.system}: the run ended before the kill")
            time.sleep(0.001)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        before = set(side.read_text().split())
        lines_before = len(side.read_text().splitlines())
        command[4] = "recover"
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=900)
        if done.returncode:
            raise RuntimeError(f"{config.system} recover: {done.stderr[-2000:]}")
        after = side.read_text().split()[lines_before:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        return result["seconds"], result.get("cpu"), len(before & set(after))


def rollback_commit_seconds(path: str, n: int) -> list[float]:
    """Raw commits in rollback-journal mode with synchronous=FULL (SQLite's defaults)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE raw_commit (id INTEGER PRIMARY KEY, data TEXT NOT NULL)")
    durations = []
    for _ in range(n):
        start = time.perf_counter()
        conn.execute("BEGIN")
        conn.execute("INSERT INTO raw_commit (data) VALUES (?)", (ROW,))
        conn.execute("COMMIT")
        durations.append(time.perf_counter() - start)
    conn.close()
    return durations


def raw_floor(samples: Samples, commits: int) -> None:
    with tempfile.TemporaryDirectory(prefix="peers-raw-") as directory:
        for durability in ("full", "normal"):
            durations = raw_commit_seconds(f"{directory}/{durability}.db", durability, commits)
            samples.add(f"raw WAL {durability}", statistics.median(durations))
        rollback = rollback_commit_seconds(f"{directory}/rollback.db", commits)
        samples.add("raw rollback full", statistics.median(rollback))


def cell(config: Config, workload: str) -> str:
    return f"{workload} {config.system} {config.setting}"


WORKLOADS = ("sequential", "fanout", "crash", "raw")


def measure(rounds: int, steps: int, width: int, log: bool = True,
            systems: tuple[str, ...] = ("agentflow", "dbos", "langgraph"),
            workloads: tuple[str, ...] = WORKLOADS) -> Samples:
    samples = Samples()
    sequential = [c for c in SEQUENTIAL if c.system in systems]
    defaults = [c for c in DEFAULTS if c.system in systems]
    for index in range(rounds):
        if "raw" in workloads:
            raw_floor(samples, 200)
        for config in sequential if "sequential" in workloads else []:
            result = trial(config, "sequential", steps)
            samples.add(cell(config, "sequential"), result["seconds"] / steps)
            samples.add(cell(config, "cpu"), result["cpu"] / steps)
            samples.add(cell(config, "bytes"), result["bytes"] / steps)
        for config in defaults if "fanout" in workloads else []:
            samples.add(cell(config, "fanout"), trial(config, "fanout", width)["seconds"])
        for config in defaults if "crash" in workloads else []:
            seconds, cpu, again = crash_trial(config, steps)
            samples.add(cell(config, "recover"), seconds)
            if cpu is not None:
                samples.add(cell(config, "recover cpu"), cpu)
            samples.add(cell(config, "again"), again)
        if log:
            print(f"round {index + 1} of {rounds} done", file=sys.stderr, flush=True)
    return samples


def versions() -> dict[str, str]:
    names = ["agentflow", "dbos", "langgraph", "langgraph-checkpoint-sqlite", "SQLAlchemy"]
    found = {name: importlib.metadata.version(name) for name in names}
    return {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version, **found}


def machine() -> str:
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({model})"


def report(samples: Samples, steps: int, width: int, rounds: int) -> list[str]:
    """The results as Markdown lines."""
    names = {"agentflow": "agentflow", "dbos": "DBOS Transact", "langgraph": "LangGraph"}
    lines = [f"{rounds} rounds, systems alternated within each round; median [min-max]. "
             "Shared, noisy machine: compare within a row, not across runs.", "",
             f"| {steps:,} sequential durable no-op steps | durability | per step "
             "| CPU per step | store bytes per step |", "|---|---|---|---|---|"]
    for config in SEQUENTIAL:
        lines.append(f"| {names[config.system]} | {config.label} | "
                     f"{samples.text(cell(config, 'sequential'), 1e6, 'µs')} | "
                     f"{samples.text(cell(config, 'cpu'), 1e6, 'µs')} | "
                     f"{samples.text(cell(config, 'bytes'), 1, 'B')} |")
    for name, key in (("WAL, synchronous=FULL", "raw WAL full"),
                      ("WAL, synchronous=NORMAL", "raw WAL normal"),
                      ("rollback journal, synchronous=FULL", "raw rollback full")):
        lines.append(f"| raw SQLite commit (floor) | {name} | "
                     f"{samples.text(key, 1e6, 'µs', 1)} | | |")
    lines += ["", *ratios(samples), "",
              f"| workload | {' | '.join(names[c.system] for c in DEFAULTS)} |",
              "|---|---|---|---|"]
    rows = [(f"{width} parallel 20 ms tools, then a fan-in (ideal 20 ms)", "fanout", 1e3, "ms"),
            (f"recovery of a {steps:,}-step run SIGKILLed at step ~{steps // 2}: time to "
             "finish", "recover", 1e3, "ms"),
            ("... steps whose tool ran before the kill, run again (in flight: re-run by design)",
             "again", 1, "")]
    for title, workload, scale, unit in rows:
        lines.append(f"| {title} | " + " | ".join(
            samples.text(cell(c, workload), scale, unit).replace(" [", "<br>[")
            for c in DEFAULTS) + " |")
    lines += ["", "Fan-out and recovery run at each system's default durability. A recovery "
              "time starts when the new process begins recovering (after imports); for DBOS "
              "it includes `DBOS.launch()`, which recovers pending workflows."]
    return lines


def ratios(samples: Samples) -> list[str]:
    """Peer / agentflow per-step medians at the same durability, in time and in CPU."""
    af_full, af_normal, dbos, lg_async, lg_sync = SEQUENTIAL
    lines = []
    for what, label in (("sequential", "Time per step"), ("cpu", "CPU per step")):
        def ratio(peer: Config, ours: Config, what: str = what) -> str:
            return f"{samples.median(cell(peer, what)) / samples.median(cell(ours, what)):.1f}x"

        lines.append(f"{label}, peer / agentflow (medians): at the strongest durability "
                     f"(one fsync per step for all three), DBOS / agentflow `full` = "
                     f"{ratio(dbos, af_full)}, LangGraph `sync` / agentflow `full` = "
                     f"{ratio(lg_sync, af_full)}; at the defaults, LangGraph `async` / "
                     f"agentflow `full` = {ratio(lg_async, af_full)}; LangGraph `async` / "
                     f"agentflow `normal` = {ratio(lg_async, af_normal)}.")
    lines += ["", "A sequential step cannot start before the commit holding the previous "
              "result has returned (contract 3), so at `full` each of the three pays one "
              "fsync per step and time per step is bounded below by the raw commit above. "
              "CPU per step is what each system adds on top of the disk."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--width", type=int, default=100)
    parser.add_argument("--readme", action="store_true", help="update the README's table")
    parser.add_argument("--systems", default="agentflow,dbos,langgraph",
                        help="comma-separated: agentflow, dbos, langgraph (default: all)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help=f"comma-separated: {', '.join(WORKLOADS)} (default: all)")
    options = parser.parse_args()
    systems = tuple(options.systems.split(","))
    workloads = tuple(options.workloads.split(","))
    unknown = sorted(set(systems) - {c.system for c in SEQUENTIAL}) + sorted(
        set(workloads) - set(WORKLOADS))
    if unknown:
        parser.error(f"unknown system or workload: {', '.join(unknown)}")
    if set(systems) != {c.system for c in SEQUENTIAL} or set(workloads) != set(WORKLOADS):
        samples = measure(options.rounds, options.steps, options.width, systems=systems,
                          workloads=workloads)
        for name in samples.values:
            scale, unit = (1, "") if name.startswith(("again", "bytes")) else (1e3, "ms")
            print(f"{name}: {samples.text(name, scale, unit, 3 if unit else 0)}".replace(
                "  [", " ["))
        return
    found = versions()
    header = [f"Measured {datetime.date.today().isoformat()} on {machine()}.",
              "Versions: " + ", ".join(f"{k} {v}" for k, v in found.items()) + ".", ""]
    print("\n".join(header))
    print("Settings:", *(f"  {c.system}: {c.label}" for c in SEQUENTIAL), sep="\n")
    samples = measure(options.rounds, options.steps, options.width)
    body = report(samples, options.steps, options.width, options.rounds)
    print("\n".join(body))
    results = ROOT / "bench" / "RESULTS.md"
    results.write_text("# Peer benchmark results\n\nGenerated by `python bench/peers.py`; "
                       "do not edit.\n\n" + "\n".join(header + body) + "\n", encoding="utf-8")
    if options.readme:
        update_section(ROOT / "README.md", README_START, README_END,
                       "\n".join(header + body) + "\n")


if __name__ == "__main__":
    main()
