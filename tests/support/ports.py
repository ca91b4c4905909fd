"""Free TCP ports on 127.0.0.1, for servers that cannot bind port 0 themselves.

Most helpers here bind port 0 and report the port the kernel chose, which
never races. A subprocess such as scim2-server needs its port on the command
line instead: :func:`free_port` asks the kernel for one and releases it, and
the caller retries if another process grabbed it in between.

A test that needs a port where nothing listens takes :func:`refusing_port`
instead: a port released at once may be taken by a server of another test
(or of the machine) before it is dialled, and then it answers.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest

LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections while the block runs.

    The port is bound and never listened on: the kernel answers a SYN to it
    with a reset (``Connection refused``), and no other socket can take it
    until the block ends.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        yield port


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with refusing_port() as port:
        return port


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A :func:`refusing_port`, held for the whole test."""
    with refusing_port() as port:
        yield port
