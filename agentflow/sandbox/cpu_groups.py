"""CPU fairness between tenants: each tenant's isolates share one cgroup of equal weight.

RLIMIT_CPU bounds each isolate's own CPU time, but not how the CPU is shared: a tenant
running ten isolates at once would get ten times the CPU of a tenant running one. Where
the engine may create cgroups with a CPU controller (as root, on cgroup v1's `cpu`
hierarchy or a cgroup v2 group that delegates `cpu`), a pool puts every isolate it hands
out for a tenant into that tenant's group (`agentflow-<engine pid>/t-<hash of the tenant>`,
under the engine's own group), and every tenant's group has the same weight: under
contention the kernel splits the CPU between tenants equally, however many isolates each
runs. Elsewhere (no controller, no permission) isolates run without it, and the pool says
so (`IsolatePool.cpu_fairness` is None).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from pathlib import Path

_CGROUP_ROOT = Path("/sys/fs/cgroup")


class TenantCpuGroups:
    """The tenants' CPU groups under `parent` (created here, removed by `close`).
    `weight_file` and `weight`: the controller's knob and the value every tenant gets."""

    def __init__(self, parent: Path, weight_file: str, weight: int, version: int) -> None:
        self.parent = parent
        self.weight_file = weight_file
        self.weight = weight
        self.version = version
        self._made: set[Path] = set()
        self._lock = threading.Lock()

    @classmethod
    def discover(cls, root: Path = _CGROUP_ROOT) -> TenantCpuGroups | None:
        """The groups under this process's own CPU cgroup, if it may create them there;
        else None. `root`: where the cgroup file systems are mounted."""
        for found in (_version_1(root), _version_2(root)):
            if found is None:
                continue
            own, weight_file, weight, version = found
            _remove_stale(own)
            parent = own / f"agentflow-{os.getpid()}"
            try:
                parent.mkdir(exist_ok=True)
                if version == 2:
                    (parent / "cgroup.subtree_control").write_text("+cpu")
                return cls(parent, weight_file, weight, version)
            except OSError:
                with contextlib.suppress(OSError):
                    parent.rmdir()
        return None

    def describe(self) -> str:
        return f"cgroup v{self.version} {self.weight_file}={self.weight} per tenant under " \
               f"{self.parent}"

    def group_of(self, tenant: str) -> Path:
        """The tenant's group (a hash names it: any tenant id is a valid directory name)."""
        return self.parent / f"t-{hashlib.sha256(tenant.encode()).hexdigest()[:24]}"

    def place(self, pid: int, tenant: str) -> bool:
        """Move the process `pid` into the tenant's group; False if the kernel refused."""
        group = self.group_of(tenant)
        try:
            with self._lock:
                if group not in self._made:
                    group.mkdir(exist_ok=True)
                    (group / self.weight_file).write_text(str(self.weight))
                    self._made.add(group)
            (group / "cgroup.procs").write_text(str(pid))
            return True
        except OSError:
            return False

    def close(self) -> None:
        """Remove the groups (a group still holding a process stays, to be removed later
        by the kernel's rules: nothing of the engine depends on it)."""
        with self._lock:
            groups, self._made = list(self._made), set()
        for group in [*groups, self.parent]:
            with contextlib.suppress(OSError):
                group.rmdir()


def _own_group(controllers: str) -> str | None:
    """This process's path in the hierarchy whose controllers are `controllers` ("" for
    cgroup v2), from /proc/self/cgroup."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, names, path = line.split(":", 2)
            if controllers in names.split(",") or (controllers == "" == names):
                return path
    return None


def _version_1(root: Path) -> tuple[Path, str, int, int] | None:
    path = _own_group("cpu")
    mount = root / "cpu"
    if path is None or not (mount / "cpu.shares").exists():
        return None
    return mount / path.lstrip("/"), "cpu.shares", 1024, 1


def _version_2(root: Path) -> tuple[Path, str, int, int] | None:
    """Only where this process's group already delegates `cpu` to its children."""
    path = _own_group("")
    for mount in (root, root / "unified"):
        own = mount / (path or "").lstrip("/")
        with contextlib.suppress(OSError):
            delegated = (own / "cgroup.subtree_control").read_text().split()
            if path is not None and "cpu" in delegated:
                return own, "cpu.weight", 100, 2
    return None


def _remove_stale(own: Path) -> None:
    """Groups an engine that no longer runs left behind (killed before `close`)."""
    with contextlib.suppress(OSError):
        for stale in own.glob("agentflow-*"):
            pid = stale.name.removeprefix("agentflow-")
            if not pid.isdigit() or Path(f"/proc/{pid}").exists():
                continue
            for group in stale.glob("t-*"):
                with contextlib.suppress(OSError):
                    group.rmdir()
            with contextlib.suppress(OSError):
                stale.rmdir()
