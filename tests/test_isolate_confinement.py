"""Kernel confinement of isolates: seccomp and Landlock where the kernel offers them.

Plan code cannot make a system call (restricted Python stops it first), so the
confinement is tested as a primitive: a forked process installs it with the function an
isolate uses, then tries what an escaped plan would (open a socket, write a file, run a
program, start a process) and reports each errno. Without the protections (asked for
none, as on a kernel that offers none) the same attempts succeed, and isolates still run.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import platform
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentflow import Engine, code_plan, tool
from agentflow.sandbox import IsolatePool
from agentflow.sandbox.confinement import (
    PROTECTIONS,
    confine,
    import_paths,
    landlock_abi,
    seccomp_program,
)
from tests.support.isolates import running_isolate

SECCOMP = seccomp_program(platform.machine()) is not None
LANDLOCK = landlock_abi() > 0


def _in_confined_child(wanted: tuple[str, ...],
                       attempts: dict[str, Callable[[], object]]) -> dict[str, Any]:
    """Fork, confine the child as an isolate confines itself, run each attempt there;
    what each gave ("ok" or its errno name), and the protections that held."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.close(read)
            report: dict[str, Any] = {
                "active": confine([*import_paths(), f"/proc/{os.getpid()}"], wanted)}
            for name, attempt in attempts.items():
                try:
                    attempt()
                    report[name] = "ok"
                except OSError as error:
                    report[name] = errno.errorcode.get(error.errno or 0, str(error.errno))
            os.write(write, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return dict(json.loads(data))


def _start_process() -> None:
    child = os.fork()
    if child == 0:  # pragma: no cover - only without seccomp
        os._exit(0)
    os.waitpid(child, 0)


def _start_thread() -> None:
    ran: list[bool] = []
    thread = threading.Thread(target=lambda: ran.append(True))
    thread.start()
    thread.join()
    if not ran:
        raise OSError(errno.EAGAIN, "the thread did not run")


def test_a_confined_isolate_cannot_open_sockets_write_files_or_start_programs(
        tmp_path: Path) -> None:
    report = _in_confined_child(PROTECTIONS, {
        "socket": lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM),
        "unix socket": lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM),
        "write": lambda: open(tmp_path / "escaped", "w"),  # noqa: SIM115
        "read outside": lambda: Path("/etc/hostname").read_bytes(),
        "execute": lambda: os.execv("/bin/true", ["true"]),
        "process": _start_process,
        "thread": _start_thread,
        "read stdlib": lambda: Path(os.__file__).read_bytes(),
        "memory gauge": lambda: Path("/proc/self/statm").read_bytes(),
    })
    assert report["active"] == [name for name, offered in
                                (("landlock", LANDLOCK), ("seccomp", SECCOMP)) if offered]
    if SECCOMP:
        assert (report["socket"], report["unix socket"], report["execute"],
                report["process"]) == ("EPERM",) * 4
    if LANDLOCK:
        assert (report["write"], report["read outside"]) == ("EACCES", "EACCES")
        assert not (tmp_path / "escaped").exists()
    # what an isolate needs still works: threads for parallel(), lazy imports, its gauge
    assert (report["thread"], report["read stdlib"], report["memory gauge"]) == ("ok",) * 3
    if not (SECCOMP and LANDLOCK):
        pytest.skip(f"this kernel offers only {report['active']}")


def test_without_the_protections_the_same_attempts_succeed(tmp_path: Path) -> None:
    """The fallback: asked for none (what a kernel offering none gives), `confine`
    reports none, and the attempts the confined child failed succeed."""
    report = _in_confined_child((), {
        "socket": lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close(),
        "write": lambda: open(tmp_path / "written", "w").close(),
        "process": _start_process,
    })
    assert report == {"active": [], "socket": "ok", "write": "ok", "process": "ok"}
    assert (tmp_path / "written").exists()


def test_an_architecture_without_syscall_numbers_gets_no_filter() -> None:
    assert seccomp_program("riscv64") is None
    assert seccomp_program("x86_64") is not None and seccomp_program("aarch64") is not None
    with pytest.raises(ValueError, match="unknown protections"):
        confine([], ("apparmor",))


seen: dict[str, Any] = {}


@tool
def inspect_isolate() -> str:
    """The calling plan's isolate, from outside: its seccomp mode and no-new-privileges."""
    status = Path(f"/proc/{running_isolate(seen['pool'])}/status").read_text()
    seen["status"] = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    return "seen"


@pytest.mark.parametrize("wanted", [PROTECTIONS, ()], ids=["confined", "unconfined"])
def test_each_isolate_reports_its_protections_and_runs_with_or_without_them(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, wanted: tuple[str, ...]) -> None:
    pool = IsolatePool(warm=1, protections=wanted)
    seen["pool"] = pool
    engine = Engine(f"sqlite:///{tmp_path / 'runs.db'}", isolates=pool,
                    tools=[inspect_isolate])
    try:
        with caplog.at_level(logging.INFO, logger="agentflow.sandbox"):
            result = engine.execute(code_plan("return inspect_isolate()"))
    finally:
        engine.close()
        pool.close()
    assert (result.status, result.outputs) == ("completed", "seen")
    expected = [name for name, offered in (("landlock", LANDLOCK), ("seccomp", SECCOMP))
                if offered and name in wanted]
    assert pool.protections == expected
    assert seen["status"]["Seccomp"].strip() == ("2" if "seccomp" in expected else "0")
    assert seen["status"]["NoNewPrivs"].strip() == "1"
    logged = [record for record in caplog.records if record.name == "agentflow.sandbox"
              and record.getMessage().startswith("isolates run ")]
    assert len(logged) == 1
    if expected == list(PROTECTIONS):
        assert logged[0].levelno == logging.INFO
        assert logged[0].getMessage() == "isolates run with landlock, seccomp"
    else:
        assert logged[0].levelno == logging.WARNING
        assert "isolates run without" in logged[0].getMessage()
