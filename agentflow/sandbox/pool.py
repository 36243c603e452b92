"""The engine's side of isolates: the fork server, a few warm isolates, killing them.

`IsolatePool` starts the fork server (`agentflow.sandbox.isolate`) once, keeps `warm`
forked isolates waiting, and hands one out per execution, forking its replacement at once:
taking a warm isolate costs a message, not a process start. An isolate runs one execution
and is never reused, so nothing of one run (a poisoned object, a paused frame, a tenant's
data) can reach the next.

Each isolate says which kernel protections it installed (seccomp, Landlock); the pool
keeps the latest answer in `protections` and logs it once, as a warning when one asked for
is missing (an older kernel, a container that forbids it): isolates still run then. Where
it may, the pool also puts each isolate into its tenant's CPU group (`cpu_groups`), so
tenants share the CPU equally; `cpu_fairness` says how, or None where it cannot.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref

from agentflow.errors import IsolateCrashed
from agentflow.sandbox.channel import Channel, ChannelClosed
from agentflow.sandbox.confinement import PROTECTIONS
from agentflow.sandbox.cpu_groups import TenantCpuGroups

# The fork server must not import `agentflow/__init__.py` (the engine, the store, the tools):
# stand-in package modules let it import the sandbox modules alone.
_BOOTSTRAP = """
import importlib.util, sys, types
for name in ("agentflow", "agentflow.sandbox"):
    package = types.ModuleType(name)
    package.__path__ = list(importlib.util.find_spec(name).submodule_search_locations)
    sys.modules[name] = package
from agentflow.sandbox.isolate import serve
serve(int(sys.argv[1]), tuple(filter(None, sys.argv[2].split(","))))
"""
#: The largest message the engine reads from an isolate.
MAX_MESSAGE = 128 << 20
log = logging.getLogger("agentflow.sandbox")


class Isolate:
    """One forked isolate: its channel, and a way to kill it that cannot hit another process
    (a pidfd where the kernel has them)."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.channel = Channel(sock, MAX_MESSAGE)
        self.exited = threading.Event()
        self.status: int | None = None
        self._pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):
            self._pidfd = os.pidfd_open(pid)

    def ready(self, timeout: float) -> list[str] | None:
        """The protections the isolate reports once ready; None if it died first."""
        try:
            message = self.channel.receive(timeout)
        except ChannelClosed:
            return None
        if message is None or message.get("op") != "ready":
            return None
        protections = message.get("protections")
        if not (isinstance(protections, list) and set(protections) <= set(PROTECTIONS)):
            return None
        return [str(name) for name in protections]

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            elif not self.exited.is_set():
                os.kill(self.pid, signal.SIGKILL)

    def exit_status(self, timeout: float) -> int | None:
        """The wait status once the fork server reaped the isolate (None: not yet)."""
        self.exited.wait(timeout)
        return self.status

    def close(self) -> None:
        """Kill it if it still runs, and let go of its channel and pidfd."""
        if not self.exited.is_set():
            self.kill()
        self.channel.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


class IsolatePool:
    """Warm isolates for code plans; safe to use from many threads.

    `protections`: the kernel protections each isolate should install where the kernel
    offers them (default: all of `confinement.PROTECTIONS`); fewer only for a test of how
    isolates run without them. `cpu_groups=False`: no tenant CPU groups even where the
    system allows them."""

    def __init__(self, warm: int = 2, protections: tuple[str, ...] = PROTECTIONS,
                 cpu_groups: bool = True) -> None:
        unknown = set(protections) - set(PROTECTIONS)
        if unknown:
            raise ValueError(f"unknown isolate protections {sorted(unknown)}; known: "
                             f"{', '.join(PROTECTIONS)}")
        self.warm = warm
        self.wanted = tuple(protections)
        #: The protections the latest isolate installed (None before the first is ready).
        self.protections: list[str] | None = None
        self._want_cpu_groups = cpu_groups
        self._cpu_groups: TenantCpuGroups | None = None
        self._lock = threading.Lock()
        self._server: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._directory: str | None = None
        self._idle: queue.Queue[Isolate] = queue.Queue()
        self._isolates: dict[int, Isolate] = {}
        self._coming = 0  # forks asked of the server, not yet here
        self._waiting = 0  # acquirers waiting for an isolate
        _pools.add(self)

    @property
    def cpu_fairness(self) -> str | None:
        """How tenants share the CPU (their cgroups), or None where the pool cannot make
        them (known once the pool has started)."""
        return None if self._cpu_groups is None else self._cpu_groups.describe()

    def acquire(self, timeout: float = 60.0, tenant: str | None = None) -> Isolate:
        """A fresh isolate, ready for one run request (of `tenant`: in its CPU group, where
        the pool has them). Give it back with `release`."""
        self._ensure_server()
        deadline = time.monotonic() + timeout
        try:
            while (left := deadline - time.monotonic()) > 0:
                with self._lock:
                    self._waiting += 1
                self._fork_if_short(0)  # none left for this caller: it waits for a new one
                try:
                    isolate = self._idle.get(timeout=left)
                finally:
                    with self._lock:
                        self._waiting -= 1
                protections = isolate.ready(max(deadline - time.monotonic(), 0.0))
                if protections is not None:
                    self._report(protections)
                    if tenant is not None and self._cpu_groups is not None:
                        self._cpu_groups.place(isolate.pid, tenant)
                    return isolate
                isolate.close()  # it died before it was ready: take the next
        except queue.Empty:
            pass
        raise IsolateCrashed(f"no isolate got ready within {timeout:g}s")

    def _report(self, protections: list[str]) -> None:
        if protections == self.protections:
            return
        self.protections = protections
        missing = [name for name in PROTECTIONS if name not in protections]
        if missing:
            log.warning("isolates run without %s (%s; active: %s)", ", ".join(missing),
                        "not offered by this kernel" if set(missing) & set(self.wanted)
                        else "not asked for", ", ".join(protections) or "none")
        else:
            log.info("isolates run with %s", ", ".join(protections))

    def release(self, isolate: Isolate) -> None:
        """End an isolate after its one run, and fork its replacement: after the run rather
        than during it, so the fork does not compete with the run's start for the CPU."""
        isolate.close()
        self._fork_if_short(self.warm)

    def close(self) -> None:
        """Stop the fork server and every isolate it started."""
        with self._lock:
            control, self._control = self._control, None
            server, self._server = self._server, None
            isolates, self._isolates = list(self._isolates.values()), {}
        for isolate in isolates:
            isolate.close()
        if control is not None:
            control.close()
        if server is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(5)
        groups, self._cpu_groups = self._cpu_groups, None
        if groups is not None:
            groups.close()
        if self._directory is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self._directory)

    def _abandon(self) -> None:
        """In a child forked from the engine: let go of the parent's fork server and
        isolates (closing only this process's copies of their sockets), to start afresh."""
        with contextlib.suppress(OSError):
            if self._control is not None:
                self._control.close()
            for isolate in self._isolates.values():
                isolate.channel.close()
        self._server, self._control, self._cpu_groups = None, None, None  # the parent's
        self._idle, self._isolates = queue.Queue(), {}
        self._coming = self._waiting = 0
        self._lock = threading.Lock()

    def _ensure_server(self) -> None:
        with self._lock:
            if self._server is not None and self._server.poll() is None:
                return
            self._directory = self._directory or tempfile.mkdtemp(prefix="agentflow-isolates-")
            if self._want_cpu_groups and self._cpu_groups is None:
                self._cpu_groups = TenantCpuGroups.discover()
                log.info("isolates share the CPU by tenant: %s", self.cpu_fairness or
                         "no (no cgroup with a CPU controller can be made here)")
            engine_end, server_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self._server = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOTSTRAP, str(server_end.fileno()),
                 ",".join(self.wanted)],
                pass_fds=(server_end.fileno(),), env={},
                cwd=self._directory, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                start_new_session=True)  # a Ctrl-C for the engine must not kill isolates
            server_end.close()
            self._control, self._coming = engine_end, self.warm
            threading.Thread(target=self._read_control, args=(engine_end,), daemon=True,
                             name="af-isolates").start()
            for _ in range(self.warm):
                self._fork()

    def _fork_if_short(self, warm: int) -> None:
        """Fork one isolate if those idle and coming cannot serve every waiting acquirer and
        keep `warm` more. Counted under the lock: two acquirers that both saw one warm
        isolate once both waited for it, and the one left out timed out."""
        with self._lock:
            short = self._idle.qsize() + self._coming < self._waiting + warm
            if short:
                self._coming += 1
        if short:
            self._fork()

    def _fork(self) -> None:
        control = self._control
        if control is not None:
            with contextlib.suppress(OSError):
                control.send(b"fork")

    def _read_control(self, control: socket.socket) -> None:
        """Isolates the fork server started (with their channel) and the exits it reaped."""
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(control, 4096, 1)
            except OSError:
                data, fds = b"", []
            if not data:
                break
            message = json.loads(data)
            if "forked" in message and fds:
                isolate = Isolate(int(message["forked"]), socket.socket(fileno=fds[0]))
                with self._lock:
                    self._isolates[isolate.pid] = isolate
                    self._coming = max(0, self._coming - 1)
                    self._idle.put(isolate)
            elif "exited" in message:
                with self._lock:
                    exited = self._isolates.pop(int(message["exited"]), None)
                if exited is not None:
                    exited.status = int(message["status"])
                    exited.exited.set()
        with self._lock:  # the fork server is gone: so are its isolates
            orphans, self._isolates = list(self._isolates.values()), {}
        for isolate in orphans:
            isolate.exited.set()


_default: IsolatePool | None = None
_default_lock = threading.Lock()
_pools: weakref.WeakSet[IsolatePool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _default_lock
    _default_lock = threading.Lock()
    for pool in list(_pools):
        pool._abandon()


os.register_at_fork(after_in_child=_after_fork_in_child)


def default_pool() -> IsolatePool:
    """The process's shared pool, started on first use and stopped at exit."""
    global _default
    with _default_lock:
        if _default is None:
            _default = IsolatePool()
            atexit.register(_default.close)
        return _default
