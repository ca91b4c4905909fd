"""A real SCIM 2.0 server for the tests: scim2-server in a subprocess.

:func:`run_scim_server` starts ``scim2-server --hostname 127.0.0.1 --port
PORT`` (plus ``--bearer-token`` when asked) from the same environment as the
tests, waits until ``GET /v2/ServiceProviderConfig`` answers 200, and at the
end sends SIGTERM (the server ignores SIGINT when started in the background)
and waits for it to exit. It serves from memory, so every start is a clean
directory. Its output goes to a temporary file that is shown if it fails to
start. If another process took the chosen port in between, it tries again
with a new one.

scim2-server has no TLS. :class:`TlsFront` is a small TLS terminator written
with trio: it accepts TLS on 127.0.0.1 with the trustme server certificate,
and pipes the decrypted bytes to the plain server. A test then reaches
``https://scim.corp.test:PORT/v2`` by dialling ``127.0.0.1:PORT`` and
verifying the certificate for ``scim.corp.test``, exactly as the agent does
with a declared target address.
"""

from __future__ import annotations

import http.client
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
import trio

from .ports import LOOPBACK, free_port
from .streams import splice
from .tls import TlsMaterial

#: The bearer token of the ``scim_server_with_token`` fixture.
SCIM_TOKEN = "scim-test-token"

#: The name the TLS front's certificate is checked against.
SCIM_HOSTNAME = "scim.corp.test"

_STARTUP_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
_PORT_ATTEMPTS = 3


@dataclass(frozen=True)
class ScimServer:
    """A running scim2-server."""

    port: int
    bearer_token: str | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v2``, the SCIM base URL."""
        return f"http://{LOOPBACK}:{self.port}/v2"

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, as a target's ``addr`` is written."""
        return f"{LOOPBACK}:{self.port}"

    def auth_headers(self) -> list[tuple[str, str]]:
        """The Authorization header the server wants, if any."""
        if self.bearer_token is None:
            return []
        return [("Authorization", f"Bearer {self.bearer_token}")]


def _command() -> list[str]:
    # The console script installed beside this interpreter is the pinned one;
    # fall back to the PATH, then to running the same entry point by module.
    beside = Path(sys.executable).with_name("scim2-server")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("scim2-server")
    if found is not None:
        return [found]
    return [sys.executable, "-m", "scim2_server.testserver.cli"]


@contextmanager
def run_scim_server(*, bearer_token: str | None = None) -> Iterator[ScimServer]:
    """Run a fresh scim2-server on 127.0.0.1 for the duration of the block."""
    for attempt in range(_PORT_ATTEMPTS):
        with tempfile.TemporaryFile() as log:
            server = ScimServer(free_port(), bearer_token)
            arguments = ["--hostname", LOOPBACK, "--port", str(server.port)]
            if bearer_token is not None:
                arguments += ["--bearer-token", bearer_token]
            process = subprocess.Popen(
                [*_command(), *arguments],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                if _wait_ready(process, server):
                    yield server
                    return
                output = _read_log(log)
                if "Address already in use" in output and attempt + 1 < _PORT_ATTEMPTS:
                    continue
                raise RuntimeError(f"scim2-server did not start:\n{output}")
            finally:
                _stop(process)
    raise AssertionError("unreachable")  # pragma: no cover


def _wait_ready(process: subprocess.Popen[bytes], server: ScimServer) -> bool:
    """Poll until the server answers 200; False if it exited first."""
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        # http.client, not urllib: urllib would honour proxy variables.
        connection = http.client.HTTPConnection(LOOPBACK, server.port, timeout=2)
        try:
            connection.request(
                "GET", "/v2/ServiceProviderConfig", headers=dict(server.auth_headers())
            )
            if connection.getresponse().status == 200:
                return True
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.05)
    raise RuntimeError(f"scim2-server did not answer within {_STARTUP_TIMEOUT} s")


def _read_log(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def scim_server() -> Iterator[ScimServer]:
    """A fresh scim2-server without authentication, stopped after the test."""
    with run_scim_server() as server:
        yield server


@pytest.fixture
def scim_server_with_token() -> Iterator[ScimServer]:
    """A fresh scim2-server that requires ``Bearer`` :data:`SCIM_TOKEN`."""
    with run_scim_server(bearer_token=SCIM_TOKEN) as server:
        yield server


# --------------------------------------------------------------------------
# TLS in front of it


class TlsFront:
    """Terminates TLS on 127.0.0.1 and pipes the bytes to a plain TCP port.

    Start it with ``port = await nursery.start(front.serve)``. Handshakes
    that fail (a client that does not trust the CA) end that connection
    only; they are counted in ``failed_handshakes``, and the first one sets
    ``handshake_failed``.
    """

    def __init__(self, upstream_port: int, ssl_context: ssl.SSLContext) -> None:
        self.upstream_port = upstream_port
        self.ssl_context = ssl_context
        self.connections = 0
        self.failed_handshakes = 0
        self.handshake_failed = trio.Event()
        self.port: int | None = None

    async def serve(
        self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until cancelled; report the port to ``start``."""
        tcp_listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
        listeners = [
            trio.SSLListener(listener, self.ssl_context, https_compatible=True)
            for listener in tcp_listeners
        ]
        self.port = tcp_listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.connections += 1
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError:
            self.failed_handshakes += 1
            self.handshake_failed.set()
            return
        try:
            upstream = await trio.open_tcp_stream(LOOPBACK, self.upstream_port)
        except OSError:
            return
        async with upstream:
            await splice(stream, upstream)


@dataclass(frozen=True)
class ScimTlsServer:
    """scim2-server behind a :class:`TlsFront`."""

    #: The TLS front's port on 127.0.0.1.
    port: int
    #: The plain server behind it.
    upstream: ScimServer
    #: The CA and certificate the front presents.
    tls: TlsMaterial
    front: TlsFront

    @property
    def base_url(self) -> str:
        """``https://scim.corp.test:PORT/v2``; dial :attr:`address` for it."""
        return f"https://{SCIM_HOSTNAME}:{self.port}/v2"

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, the address a target declares."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def server_name(self) -> str:
        return SCIM_HOSTNAME


@pytest.fixture
async def scim_tls_server(
    scim_server: ScimServer, tls: TlsMaterial, nursery: trio.Nursery
) -> ScimTlsServer:
    """A fresh scim2-server reachable as ``https://scim.corp.test:PORT/v2``."""
    front = TlsFront(scim_server.port, tls.server_context())
    port = await nursery.start(front.serve)
    return ScimTlsServer(port=port, upstream=scim_server, tls=tls, front=front)
