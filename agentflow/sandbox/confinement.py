"""Kernel confinement of an isolate: a seccomp filter and a Landlock ruleset.

Plan code cannot name a system call (restricted Python stops it first); these are the
second wall, for the day it gets past the first. Both are installed by the isolate on
itself, after it has set up everything it needs and before it sees plan code, and both are
inherited by the threads it starts later and cannot be lifted.

- seccomp: system calls an isolate never needs fail with EPERM: creating or connecting
  sockets (its channel is already open), executing a program, starting a process (threads
  only), tracing, mounting, loading kernel code (bpf, modules, kexec), namespaces, keyrings,
  io_uring, and a few more (`DENIED`). A call made for another architecture kills it.
- Landlock: the file system is read-only where the isolate may still import from (the
  interpreter's import path) and its own /proc entry (its memory gauge), and closed
  everywhere else: no file can be written, created or removed, nothing executed. From ABI 4
  TCP bind/connect are refused too, from ABI 6 signals to processes outside the isolate.

Where the kernel (or its configuration, a container's own filter) refuses one, the isolate
runs without it: `confine` reports which protections hold, and the pool reports them.
Only the standard library is used, through ctypes: Python has no bindings for either.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import struct
import sys
from collections.abc import Collection, Iterable

#: The protections an isolate asks for, in the order it installs them.
PROTECTIONS = ("landlock", "seccomp")

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_RET_KILL_PROCESS = 0x80000000
_LD_ABS_W = 0x20
_JEQ = 0x15
_JGE = 0x35
_JSET = 0x45
_RET = 0x06
_CLONE_THREAD = 0x00010000
_X32_BIT = 0x40000000

# Per architecture: the audit arch value seccomp reports, then syscall numbers by name.
_ARCHES: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (0xC000003E, {
        "socket": 41, "socketpair": 53, "connect": 42, "bind": 49, "listen": 50,
        "accept": 43, "accept4": 288, "sendmsg": 46, "recvmsg": 47, "sendmmsg": 307,
        "recvmmsg": 299, "execve": 59, "execveat": 322, "fork": 57, "vfork": 58,
        "clone": 56, "clone3": 435, "ptrace": 101, "process_vm_readv": 310,
        "process_vm_writev": 311, "mount": 165, "umount2": 166, "pivot_root": 155,
        "chroot": 161, "unshare": 272, "setns": 308, "kexec_load": 246,
        "kexec_file_load": 320, "bpf": 321, "perf_event_open": 298, "init_module": 175,
        "finit_module": 313, "delete_module": 176, "reboot": 169, "swapon": 167,
        "swapoff": 168, "keyctl": 250, "add_key": 248, "request_key": 249,
        "userfaultfd": 323, "open_by_handle_at": 304, "name_to_handle_at": 303,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "personality": 135, "acct": 163, "settimeofday": 164, "clock_settime": 227,
        "fsopen": 430, "fsmount": 432, "move_mount": 429, "open_tree": 428,
        "pidfd_getfd": 438, "memfd_create": 319}),
    "aarch64": (0xC00000B7, {
        "socket": 198, "socketpair": 199, "connect": 203, "bind": 200, "listen": 201,
        "accept": 202, "accept4": 242, "sendmsg": 211, "recvmsg": 212, "sendmmsg": 269,
        "recvmmsg": 243, "execve": 221, "execveat": 281, "clone": 220, "clone3": 435,
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "mount": 40,
        "umount2": 39, "pivot_root": 41, "chroot": 51, "unshare": 97, "setns": 268,
        "kexec_load": 104, "kexec_file_load": 294, "bpf": 280, "perf_event_open": 241,
        "init_module": 105, "finit_module": 273, "delete_module": 106, "reboot": 142,
        "swapon": 224, "swapoff": 225, "keyctl": 219, "add_key": 217, "request_key": 218,
        "userfaultfd": 282, "open_by_handle_at": 265, "name_to_handle_at": 264,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "personality": 92, "acct": 89, "settimeofday": 170, "clock_settime": 112,
        "fsopen": 430, "fsmount": 432, "move_mount": 429, "open_tree": 428,
        "pidfd_getfd": 438, "memfd_create": 279}),
}
#: System calls that fail with EPERM in an isolate (clone only when it starts a process;
#: clone3, whose flags a filter cannot read, fails with ENOSYS so threads fall back to clone).
DENIED = tuple(sorted(set(_ARCHES["x86_64"][1]) - {"clone", "clone3"}))

_LANDLOCK_CREATE_RULESET = 444
_LANDLOCK_ADD_RULE = 445
_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_FS_EXECUTE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 2, 1 << 3
_FS_FILE_RIGHTS = _FS_EXECUTE | 1 << 1 | _FS_READ_FILE | 1 << 14 | 1 << 15
# Every file-system right each Landlock ABI knows (v1: 13 rights, v2 REFER, v3 TRUNCATE,
# v5 IOCTL_DEV), network rights from v4 (TCP bind, connect), scopes from v6.
_FS_RIGHTS = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}
_ALL_FS_RIGHTS = (1 << 16) - 1
_NET_RIGHTS = 0b11
_SCOPES = 0b11  # abstract unix sockets, signals


def confine(readable: Iterable[str], wanted: Collection[str] = PROTECTIONS) -> list[str]:
    """Install the `wanted` protections on the calling process (do it while it has one
    thread: threads started later inherit them); return those that hold. `readable`: paths
    the process may still read (directories with what is under them). A protection not
    wanted is treated as one the kernel does not offer."""
    unknown = set(wanted) - set(PROTECTIONS)
    if unknown:
        raise ValueError(f"unknown protections {sorted(unknown)}; known: {PROTECTIONS}")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return []  # both need it
    active = []
    if "landlock" in wanted and _landlock(libc, readable):
        active.append("landlock")
    if "seccomp" in wanted and _seccomp(libc):
        active.append("seccomp")
    return active


def import_paths() -> list[str]:
    """The interpreter's import path, which a lazy import reads."""
    return [path for path in sys.path if path and os.path.exists(path)]


# -- seccomp -----------------------------------------------------------------------------

def seccomp_program(machine: str) -> bytes | None:
    """The filter for `machine` (as `platform.machine()` names it) as packed BPF
    instructions, or None for an architecture this module has no numbers for."""
    if machine not in _ARCHES:
        return None
    audit_arch, numbers = _ARCHES[machine]
    # (code, jump-if-true label, jump-if-false label, k); a label is where a jump lands
    steps: list[tuple[int, str | None, str | None, int]] = [
        (_LD_ABS_W, None, None, 4),  # seccomp_data.arch
        (_JEQ, "load nr", "kill", audit_arch),
        (_LD_ABS_W, None, None, 0),  # seccomp_data.nr
    ]
    labels = {"load nr": 2}
    if machine == "x86_64":
        steps.append((_JGE, "deny", None, _X32_BIT))  # the x32 ABI's numbers
    steps += [(_JEQ, "deny", None, numbers[name]) for name in DENIED if name in numbers]
    steps += [(_JEQ, "clone", None, numbers["clone"]),
              (_JEQ, "enosys", None, numbers["clone3"])]
    for label, step in (("allow", (_RET, None, None, _RET_ALLOW)),
                        ("deny", (_RET, None, None, _RET_ERRNO | errno.EPERM)),
                        ("enosys", (_RET, None, None, _RET_ERRNO | errno.ENOSYS)),
                        ("kill", (_RET, None, None, _RET_KILL_PROCESS)),
                        ("clone", (_LD_ABS_W, None, None, 16)),  # low half of clone's flags
                        ("clone?", (_JSET, "thread", "process", _CLONE_THREAD)),
                        ("thread", (_RET, None, None, _RET_ALLOW)),
                        ("process", (_RET, None, None, _RET_ERRNO | errno.EPERM))):
        labels[label] = len(steps)
        steps.append(step)
    program = b""
    for here, (code, if_true, if_false, k) in enumerate(steps):
        jump_true = labels[if_true] - here - 1 if if_true else 0
        jump_false = labels[if_false] - here - 1 if if_false else 0
        program += struct.pack("=HBBI", code, jump_true, jump_false, k)
    return program


def _seccomp(libc: ctypes.CDLL) -> bool:
    program = seccomp_program(platform.machine())
    if program is None:
        return False
    filters = ctypes.create_string_buffer(program, len(program))

    class _Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = _Program(len(program) // 8, ctypes.cast(filters, ctypes.c_void_p))
    return int(libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog),
                          0, 0)) == 0


# -- Landlock ----------------------------------------------------------------------------

def landlock_abi() -> int:
    """The Landlock ABI version the kernel offers (0: none)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return max(0, int(libc.syscall(_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                                   ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION))))


def _landlock(libc: ctypes.CDLL, readable: Iterable[str]) -> bool:
    abi = landlock_abi()
    if abi < 1:
        return False
    handled = _FS_RIGHTS.get(abi, _ALL_FS_RIGHTS)
    attr = struct.pack("=QQQ", handled, _NET_RIGHTS if abi >= 4 else 0,
                       _SCOPES if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = int(libc.syscall(_LANDLOCK_CREATE_RULESET, attr, ctypes.c_size_t(size),
                               ctypes.c_uint32(0)))
    if ruleset < 0:
        return False
    try:
        for path in readable:
            _allow_reading(libc, ruleset, path)
        return int(libc.syscall(_LANDLOCK_RESTRICT_SELF, ruleset, ctypes.c_uint32(0))) == 0
    finally:
        os.close(ruleset)


def _allow_reading(libc: ctypes.CDLL, ruleset: int, path: str) -> None:
    """A read-only rule for `path` (skipped if it cannot be opened: then it stays closed)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            rights = _FS_READ_FILE | _FS_READ_DIR
            if not os.path.isdir(path):
                rights &= _FS_FILE_RIGHTS
            rule = struct.pack("=Qi", rights, fd)
            libc.syscall(_LANDLOCK_ADD_RULE, ruleset, ctypes.c_int(_LANDLOCK_RULE_PATH_BENEATH),
                         rule, ctypes.c_uint32(0))
        finally:
            os.close(fd)
