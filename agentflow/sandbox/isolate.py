"""Inside the isolates: the fork server that starts them, and the loop that runs one plan.

The fork server is a small process the engine starts with an empty environment in an empty
directory. It imports what plan code needs (the sandbox runtime and RestrictedPython, not
the engine, the store or the tools) once, then forks one isolate per request, so an isolate
is ready in a few milliseconds and shares those pages with its siblings.

An isolate, before it runs anything: keeps no file descriptor but its channel (fd 3; fds 0-2
are /dev/null), has an empty environment, no core dumps and no file writes; as root it
also drops to a user id of its own (so no isolate can signal or trace another) and forbids
gaining privileges again. Then it confines itself (`agentflow.sandbox.confinement`: a
seccomp filter and a Landlock ruleset, where the kernel offers them) and tells the engine
it is ready and which of those hold. When the run request comes, it starts its `parallel()` threads
(only if the plan calls `parallel`), then limits its address space, CPU time and thread
count, runs the plan once, reports, and exits. It talks to the engine only in JSON
(`agentflow.sandbox.channel`); tool calls and plan built-ins are messages.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import gc
import json
import marshal
import math
import os
import resource
import select
import signal
import socket
import sys
import threading
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any

from agentflow.errors import SandboxViolation, ToolArgumentsError, ToolCallError
from agentflow.sandbox.channel import Channel, ChannelClosed
from agentflow.sandbox.confinement import PROTECTIONS, confine, import_paths
from agentflow.sandbox.limits import SandboxLimits
from agentflow.sandbox.parallel import ThunkThreads
from agentflow.sandbox.runtime import run_code_plan
from agentflow.sandbox.shown import plain_text

CHANNEL_FD = 3
#: The exit code of an isolate that ran out of memory where it could not report it.
OUT_OF_MEMORY_EXIT = 3
#: Address space an isolate gets beyond its memory limit: thread stacks, the channel.
MEMORY_HEADROOM = 96 << 20
THREAD_STACK = 1 << 20
MAX_OPEN_FILES = 16
_FIRST_ISOLATE_UID = 1 << 20  # uids of isolates: this plus the isolate's pid
_REPLAYED_BATCH = 2048
_PLAIN_ERRORS: dict[str, type[Exception]] = {
    error.__name__: error for error in (TypeError, ValueError, KeyError, IndexError,
                                        RuntimeError, ZeroDivisionError, OverflowError)}


# -- the fork server ---------------------------------------------------------------------

def serve(control_fd: int, protections: tuple[str, ...] = PROTECTIONS) -> None:
    """Fork an isolate for each b"fork" on the control socket (a SOCK_SEQPACKET), sending
    back its pid with the engine's end of its channel, and report each isolate's exit.
    Each isolate installs the `protections` the kernel offers of those asked for."""
    control = socket.socket(fileno=control_fd)
    readable = [*import_paths(), *sys.modules["agentflow"].__path__]  # an editable install
    _import_codecs()
    gc.freeze()  # the collector of an isolate leaves the shared objects alone: no page copies
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda number, frame: None)
    threading.stack_size(THREAD_STACK)
    while True:
        ready = select.select([control.fileno(), wake_read], [], [])[0]
        if wake_read in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_read, 4096)
            _report_exits(control)
        if control.fileno() in ready:
            try:
                request = control.recv(64)
            except OSError:
                request = b""
            if not request:  # the engine is gone: so are we (isolates see their EOF)
                os._exit(0)
            _fork_isolate(control, readable, protections)


def _import_codecs() -> None:
    """Every codec now: an isolate cannot import one later (its user may not read the
    standard library's files), and `str.encode` looks codecs up by importing them."""
    import encodings
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(encodings.__path__):
        with contextlib.suppress(ImportError):
            importlib.import_module(f"encodings.{module.name}")


def _report_exits(control: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        try:
            control.send(json.dumps({"exited": pid, "status": status}).encode())
        except OSError:  # the engine is gone
            os._exit(0)


def _fork_isolate(control: socket.socket, readable: list[str],
                  protections: tuple[str, ...]) -> None:
    engine_end, isolate_end = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            control.detach()
            engine_end.detach()
            code = _isolate(isolate_end.detach(), readable, protections)
        finally:
            os._exit(code)
    isolate_end.close()
    try:
        socket.send_fds(control, [json.dumps({"forked": pid}).encode()], [engine_end.fileno()])
    except OSError:  # the engine is gone (it closed the pool): the isolate sees its EOF
        os._exit(0)
    engine_end.close()


# -- one isolate -------------------------------------------------------------------------

def _isolate(channel_fd: int, readable: list[str], protections: tuple[str, ...]) -> int:
    """Shed what the fork server had, confine itself, say it is ready, wait for the run
    request, run it; the exit code. `readable`: the import path (a lazy import reads it)."""
    if channel_fd != CHANNEL_FD:
        os.dup2(channel_fd, CHANNEL_FD)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(CHANNEL_FD + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    os.environ.clear()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (MAX_OPEN_FILES, MAX_OPEN_FILES))
    _drop_privileges()
    active = confine([*readable, f"/proc/{os.getpid()}"], protections)  # its memory gauge
    _warm_up()
    channel = Channel(socket.socket(fileno=CHANNEL_FD))
    try:
        channel.send({"op": "ready", "protections": active})
        request = channel.receive()
    except (ChannelClosed, OSError):
        return 0  # the pool shut down before using this isolate
    assert request is not None  # no timeout given
    try:
        return _run(channel, request)
    except MemoryError:
        return OUT_OF_MEMORY_EXIT


_WARM_UP = compile("def _af_main_():\n    return [1]", "<warm-up>", "exec")


def _warm_up() -> None:
    """Run a plan of nothing while waiting: the pages a run touches are copied from the fork
    server now, not while a real plan's start is being timed."""
    with contextlib.suppress(Exception):
        json.loads(json.dumps(run_code_plan(_WARM_UP, {}, {}, SandboxLimits())))


def _drop_privileges() -> None:
    """As root: a user id of this isolate's own, no groups, no way back. Elsewhere the
    process already has no privileges to drop."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE: no ptrace, no /proc/<pid>/mem
    if os.geteuid() == 0:
        uid = _FIRST_ISOLATE_UID + os.getpid()
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)


def _run(channel: Channel, request: dict[str, Any]) -> int:
    limits = SandboxLimits(**request["limits"])
    code = marshal.loads(base64.b64decode(request["code"]))
    if not isinstance(code, CodeType):
        return 1
    threads = ThunkThreads(int(request["max_concurrency"]))
    concurrent = _calls_parallel(code)
    if concurrent:
        threads.start_all()
    link = _EngineLink(channel, request.get("answers") or {}, threaded=concurrent)
    _limit_resources(limits)
    bindings = {name: link.binding(name) for name in request["bindings"]}
    try:
        value = run_code_plan(code, bindings, request["inputs"], limits, threads=threads)
        outcome: dict[str, Any] = {"op": "done", "value": value}
    except MemoryError:  # plan code's is a SandboxViolation: this is the isolate's own code
        raise
    except BaseException as error:  # reported, whatever it is: the engine decides
        outcome = {"op": "failed", "error": describe_error(error)}
    link.finish(outcome)
    return 0


def _calls_parallel(code: CodeType) -> bool:
    """Whether the plan names `parallel` anywhere: only then does it need threads."""
    stack = [code]
    while stack:
        current = stack.pop()
        if "parallel" in current.co_names:
            return True
        stack.extend(const for const in current.co_consts if isinstance(const, CodeType))
    return False


def _limit_resources(limits: SandboxLimits) -> None:
    """Limits that need the run's figures: memory, CPU time, and no new threads."""
    if limits.max_memory_growth is not None:
        with open("/proc/self/statm", "rb") as statm:
            address_space = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        ceiling = address_space + limits.max_memory_growth + MEMORY_HEADROOM
        resource.setrlimit(resource.RLIMIT_AS, (ceiling, ceiling))
    seconds = math.ceil(limits.max_seconds) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 1))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))


def describe_error(error: BaseException) -> dict[str, Any]:
    """An error of plan code (or of the sandbox) as JSON data."""
    info: dict[str, Any] = {"type": type(error).__name__,
                            "message": plain_text(str(error) or repr(error))[:4096]}
    trace = error.__traceback__
    while trace is not None:  # the innermost line of plan code it passed through
        if trace.tb_frame.f_code.co_filename.startswith("<plan "):
            info["line"] = trace.tb_lineno
        trace = trace.tb_next
    if isinstance(error, SandboxViolation):
        info.update(violation=True, limit=error.limit)
        if error.line is not None:
            info["line"] = error.line
    if isinstance(error, ToolCallError):
        info.update(tool=error.tool, step=error.step_id, error_type=error.error_type,
                    detail=error.message[:4096])
    return info


def _plan_line() -> int | None:
    """The innermost plan line on this thread's stack, sent with a call so that the engine
    can record where the plan made it."""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith("<plan "):
            return frame.f_lineno
        frame = frame.f_back
    return None


def rebuild_error(info: dict[str, Any], binding: str, position: str) -> Exception:
    """The error an engine reply describes, as plan code should see it."""
    kind, message = str(info.get("type")), str(info.get("message", ""))
    if kind in _PLAIN_ERRORS:
        return _PLAIN_ERRORS[kind](message)
    if kind == "ToolArgumentsError":
        return ToolArgumentsError(message)
    return ToolCallError(str(info.get("tool") or binding), str(info.get("detail", message)),
                         info.get("step") or position, info.get("error_type") or kind)


class _EngineLink:
    """The isolate's side of the channel: bindings as messages, replies to waiting threads.

    Calls the journal already answered (`answers`: position -> [name, value] or
    [name, None, error]) are answered here without a round trip; they are reported in
    batches, ahead of the next message, and the engine checks each one against the journal
    before it executes anything new or accepts the outcome. With `threaded`, a thread reads
    the replies and hands each to the thread that waits for it; without, the one thread of
    plan code reads its own reply.
    """

    def __init__(self, channel: Channel, answers: dict[str, list[Any]], *,
                 threaded: bool) -> None:
        self.channel = channel
        self.answers = answers
        self.threaded = threaded
        self._lock = threading.Lock()
        self._replayed: list[list[Any]] = []
        self._waiting: dict[str, tuple[threading.Event, dict[str, Any]]] = {}
        if threaded:
            threading.Thread(target=self._read_replies, daemon=True, name="af-replies").start()

    def binding(self, name: str) -> Callable[..., Any]:
        def call(position: str, *args: Any, **kwargs: Any) -> Any:
            return self.call(position, name, list(args), kwargs)
        return call

    def call(self, position: str, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        answer = self.answers.pop(position, None)
        if answer is not None and answer[0] == name and not args:
            with self._lock:
                self._replayed.append([position, name, kwargs])
                full = len(self._replayed) >= _REPLAYED_BATCH
            if full:
                self._send({"op": "replayed"})
            if len(answer) > 2:
                raise rebuild_error(answer[2], name, position)
            return answer[1]
        message = {"op": "call", "key": position, "name": name, "args": args, "kwargs": kwargs,
                   "line": _plan_line()}
        if self.threaded:
            event, reply = threading.Event(), dict[str, Any]()
            self._waiting[position] = (event, reply)
            self._send(message)
            event.wait()
        else:
            self._send(message)
            reply = self._receive()
        if "error" in reply:
            raise rebuild_error(reply["error"], name, position)
        return reply.get("value")

    def finish(self, outcome: dict[str, Any]) -> None:
        """Report the outcome (the runtime made sure a returned value is JSON data)."""
        self._send(outcome)

    def _send(self, message: dict[str, Any]) -> None:
        with self._lock:
            message["replayed"], self._replayed = self._replayed, []
            self.channel.send(message)

    def _receive(self) -> dict[str, Any]:
        try:
            reply = self.channel.receive()
        except ChannelClosed:
            os._exit(0)  # the engine left: nothing left to do
        assert reply is not None  # no timeout given
        return reply

    def _read_replies(self) -> None:
        while True:
            try:
                reply = self._receive()
            except MemoryError:  # no room for a reply: nothing can go on
                os._exit(OUT_OF_MEMORY_EXIT)
            waiter = self._waiting.pop(str(reply.get("key")), None)
            if waiter is None:
                os._exit(0)  # a reply nobody asked for: the engine broke the protocol
            waiter[1].update(reply)
            waiter[0].set()


if __name__ == "__main__":
    serve(int(sys.argv[1]), tuple(filter(None, sys.argv[2].split(","))))
