"""The channel between the engine and an isolate: each JSON message arrives whole, in order,
whatever its size against the amount the channel reads from the socket at once."""

from __future__ import annotations

import socket
import threading

import pytest

from agentflow.sandbox.channel import _CHUNK, _LARGE_CHUNK, Channel, ChannelClosed

# the JSON text of {"t":"..."} is the text plus 8 bytes; a frame adds a 4-byte header
_FRAMING = 8 + 4


@pytest.mark.parametrize("frame", [
    100, _CHUNK - 1, _CHUNK, _CHUNK + 1, _LARGE_CHUNK, _LARGE_CHUNK + 1, 3 * _LARGE_CHUNK + 7])
def test_a_message_of_any_size_arrives_whole_between_two_small_ones(frame: int) -> None:
    sent = [{"t": "a"}, {"t": "x" * (frame - _FRAMING)}, {"t": "b"}]
    assert sent == _through_a_channel(sent)


def test_many_small_messages_read_in_one_chunk_arrive_one_by_one() -> None:
    sent = [{"t": str(i)} for i in range(10_000)]
    assert sent == _through_a_channel(sent)


def test_a_message_larger_than_the_reader_allows_is_refused_by_its_header() -> None:
    left, right = socket.socketpair()
    writer, reader = Channel(left), Channel(right, max_size=1000)
    writer.send({"t": "x" * (1000 - _FRAMING + 4)})  # 1000 bytes of JSON: allowed
    assert reader.receive(5) == {"t": "x" * (1000 - _FRAMING + 4)}
    writer.send({"t": "x" * (1001 - _FRAMING + 4)})
    with pytest.raises(ChannelClosed, match="a message of 1,001 bytes, more than 1,000"):
        reader.receive(5)


def _through_a_channel(messages: list[dict[str, str]]) -> list[dict[str, str] | None]:
    left, right = socket.socketpair()
    writer, reader = Channel(left), Channel(right)
    sending = threading.Thread(target=lambda: [writer.send(m) for m in messages])
    sending.start()
    received = [reader.receive(10) for _ in messages]
    sending.join()
    left.close()
    right.close()
    return received
