"""A listening socket that counts connection attempts, to prove none was made.

:class:`CountingListener` binds 127.0.0.1 on a port the kernel picks and
never runs a task: the kernel completes the TCP handshake of every
connection attempt and queues it, and :meth:`CountingListener.attempts`
drains that queue without blocking, closing each connection and counting it.
So a test can dial (or not), then ask at once, with no race against a
background accept loop.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from types import TracebackType

import pytest

from .ports import LOOPBACK


class CountingListener:
    """Accepts and closes every connection to ``address``, counting them."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind((LOOPBACK, 0))
        self._socket.listen(64)
        self._socket.setblocking(False)
        self.port: int = self._socket.getsockname()[1]
        self._count = 0

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, as a target's ``addr`` is written."""
        return f"{LOOPBACK}:{self.port}"

    def attempts(self) -> int:
        """Return how many connections were made to the listener so far."""
        while True:
            try:
                connection, _ = self._socket.accept()
            except BlockingIOError:
                return self._count
            connection.close()
            self._count += 1

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> CountingListener:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@pytest.fixture
def counting_listener() -> Iterator[CountingListener]:
    """A :class:`CountingListener`, closed after the test."""
    with CountingListener() as listener:
        yield listener
