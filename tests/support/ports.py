"""Free TCP ports on 127.0.0.1, for servers that cannot bind port 0 themselves.

Most helpers here bind port 0 and report the port the kernel chose, which
never races. A subprocess such as scim2-server needs its port on the command
line instead: :func:`free_port` asks the kernel for one and releases it, and
the caller retries if another process grabbed it in between.
"""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port
