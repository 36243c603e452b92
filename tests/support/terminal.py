"""Drive a command on a pseudo-terminal, as a person at the keyboard would (no pexpect).

The command sees a real terminal on stdin, stdout and stderr, so rich draws its live
display and prompts exactly as it does for a user; `expect` reads the screen output with
the terminal escape codes taken out.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import termios
import time
from collections.abc import Sequence
from pathlib import Path

_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[()][0-9A-B]|\r")


class Terminal:
    """A running command attached to a new pseudo-terminal of `columns` x `rows`."""

    def __init__(self, argv: Sequence[str], *, cwd: Path, env: dict[str, str],
                 columns: int = 160, rows: int = 50) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.process = subprocess.Popen(list(argv), stdin=slave, stdout=slave, stderr=slave,
                                        cwd=cwd, env=env, start_new_session=True)
        os.close(slave)
        self.master = master
        self.screen = ""
        self.seen = 0

    def _read(self, timeout: float) -> bool:
        """Read what is there within `timeout`; False once the command closed the terminal."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: every process holding the terminal has exited
            return False
        if not chunk:
            return False
        self.screen += _ESCAPES.sub("", chunk.decode(errors="replace"))
        return True

    def expect(self, text: str, timeout: float = 30.0) -> str:
        """Wait until `text` appears after what was already expected; the output up to it."""
        deadline = time.monotonic() + timeout
        while (found := self.screen.find(text, self.seen)) < 0:
            if time.monotonic() > deadline or not self._read(0.1):
                raise AssertionError(f"{text!r} did not appear; the screen after the last "
                                     f"match:\n{self.screen[self.seen:]}")
        before = self.screen[self.seen:found + len(text)]
        self.seen = found + len(text)
        return before

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def finish(self, timeout: float = 30.0) -> int:
        """Read until the command exits; its exit status."""
        deadline = time.monotonic() + timeout
        while self._read(0.1) and time.monotonic() < deadline:
            if self.process.poll() is not None and not select.select([self.master], [], [], 0)[0]:
                break
        os.close(self.master)
        return self.process.wait(timeout=max(deadline - time.monotonic(), 1))
