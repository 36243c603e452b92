"""Messages between the engine and an isolate: JSON objects, length-prefixed, on one socket.

JSON only, in both directions: no pickle, so an isolate that plan code took over still
cannot make the engine build an object or run code. A message larger than `max_size` is
refused by the side reading it.
"""

from __future__ import annotations

import json
import select
import socket
import threading
from typing import Any

_HEADER = 4
_CHUNK = 1 << 16  # bytes asked of the socket at once, unless a longer message is arriving
_LARGE_CHUNK = 1 << 20


class ChannelClosed(Exception):
    """The other side closed the channel (or sent something that is not a message)."""


class Channel:
    """One end of a stream socket carrying JSON objects. `send` is safe from many threads;
    only one thread may `receive`."""

    def __init__(self, sock: socket.socket, max_size: int = 1 << 30) -> None:
        self.sock = sock
        self.max_size = max_size
        self._sending = threading.Lock()
        self._buffer = bytearray()
        self._start = 0  # where the unread part of `_buffer` begins

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, allow_nan=False, separators=(",", ":")).encode()
        with self._sending:
            self.sock.sendall(len(data).to_bytes(_HEADER, "big") + data)

    def receive(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next message; None if none came within `timeout` seconds (None: wait)."""
        while True:
            message = self._take()
            if message is not None:
                return message
            if timeout is not None and not select.select([self.sock], [], [], timeout)[0]:
                return None
            try:
                chunk = self.sock.recv(self._wanted())
            except OSError as error:
                raise ChannelClosed(str(error)) from None
            if not chunk:
                raise ChannelClosed("the other side closed the channel")
            del self._buffer[:self._start]
            self._start = 0
            self._buffer += chunk

    def _wanted(self) -> int:
        """How much to read: what the arriving message still lacks, between 64 KiB and 1 MiB.
        A call's message is a few hundred bytes, and `recv(n)` allocates n bytes first: a
        fixed 1 MiB cost some 30 us per message on each side."""
        have = len(self._buffer) - self._start
        if have < _HEADER:
            return _CHUNK
        size = int.from_bytes(self._buffer[self._start:self._start + _HEADER], "big")
        return min(max(_HEADER + size - have, _CHUNK), _LARGE_CHUNK)

    def _take(self) -> dict[str, Any] | None:
        start = self._start
        if len(self._buffer) < start + _HEADER:
            return None
        size = int.from_bytes(self._buffer[start:start + _HEADER], "big")
        if size > self.max_size:
            raise ChannelClosed(f"a message of {size:,} bytes, more than {self.max_size:,}")
        end = start + _HEADER + size
        if len(self._buffer) < end:
            return None
        data = bytes(self._buffer[start + _HEADER:end])
        self._start = end
        try:
            message = json.loads(data)
        except ValueError:
            raise ChannelClosed("a message that is not JSON") from None
        if not isinstance(message, dict):
            raise ChannelClosed("a message that is not a JSON object")
        return message

    def close(self) -> None:
        self.sock.close()
