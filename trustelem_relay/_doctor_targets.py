"""The target checks of ``trustelem-relay doctor``: DNS, TCP, TLS, SCIM.

Theory of operation
-------------------

:meth:`TargetChecks.check_target` walks one declared target as the agent
would reach it, and stops at the first failure: DNS (nothing to do for an
IP address), TCP to the declared address, TLS when the target looks like
TLS (port 443, or ``server_name``, ``ca_file`` or ``pin_sha256`` set) or
the command line forces it, and SCIM discovery: one ``GET
{prefix}/ServiceProviderConfig`` with h11 over the same stream. A 401 or
403 only means that the hub must send credentials: a warning, not a
failure. TLS is verified for ``server_name`` or the declared host; the URL
host the hub sends at run time is not known here.
"""

from __future__ import annotations

import ipaddress
import json
import ssl
import time

import h11
import trio

from ._doctor_report import (
    _READ_SIZE,
    _authority,
    _bounded,
    _certificate,
    _connect_reason,
    _Failed,
    _ms,
    _reason,
    _Report,
    _tls_handshake,
)
from ._forward_tls import client_context
from ._policy import Target
from ._version import __version__

__all__ = ["TargetChecks"]

# The discovery answer is a small JSON document; more is not what we asked.
_MAX_DISCOVERY_BODY = 1 << 20
_SCIM_FEATURES = ("patch", "bulk", "filter", "changePassword", "sort", "etag")


class TargetChecks:
    """The checks of each declared target, in the order the agent meets them."""

    def __init__(
        self,
        report: _Report,
        *,
        timeout: float,
        tls: bool | None,
        scim_path: str | None,
    ) -> None:
        self.report = report
        self.timeout = timeout
        self.tls = tls
        self.scim_path = scim_path

    def _uses_tls(self, target: Target) -> bool:
        if self.tls is not None:
            return self.tls
        settings = target.tls
        return target.port == 443 or bool(
            settings.server_name or settings.ca_file or settings.pin_sha256
        )

    async def check_target(self, target: Target) -> None:
        prefix = f"target {target.name}"
        try:
            await self._check_dns(prefix, target)
            stream = await self._check_tcp(prefix, target)
        except _Failed:
            return
        try:
            if self._uses_tls(target):
                stream = await self._check_tls(prefix, target, stream)
            await self._check_scim(prefix, target, stream)
        except _Failed:
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def _check_dns(self, prefix: str, target: Target) -> None:
        check = f"{prefix} DNS"
        host = target.host
        if _is_ip(host):
            self.report.ok(check, f"{host} is an IP address, nothing to resolve")
            return
        started = time.perf_counter()
        try:
            with _bounded(self.timeout, f"resolving {host}"):
                found = await trio.socket.getaddrinfo(
                    host, target.port, type=trio.socket.SOCK_STREAM
                )
        except (_Failed, OSError) as exc:
            detail = str(exc) if isinstance(exc, _Failed) else _reason(exc)
            self.report.fail(check, f"cannot resolve {host}: {detail}")
            raise _Failed(detail) from None
        addresses = list(dict.fromkeys(str(entry[4][0]) for entry in found))
        shown = ", ".join(addresses[:4]) + (", ..." if len(addresses) > 4 else "")
        self.report.ok(check, f"{host} resolves to {shown} in {_ms(started)}")

    async def _check_tcp(self, prefix: str, target: Target) -> trio.abc.Stream:
        check = f"{prefix} TCP"
        started = time.perf_counter()
        try:
            with _bounded(self.timeout, f"connecting to {target.addr}"):
                stream = await trio.open_tcp_stream(target.host, target.port)
        except (_Failed, OSError) as exc:
            detail = str(exc) if isinstance(exc, _Failed) else _connect_reason(exc)
            self.report.fail(check, f"cannot connect to {target.addr}: {detail}")
            raise _Failed(detail) from None
        self.report.ok(check, f"connected to {target.addr} in {_ms(started)}")
        return stream

    async def _check_tls(
        self, prefix: str, target: Target, stream: trio.abc.Stream
    ) -> trio.abc.Stream:
        check = f"{prefix} TLS"
        settings = target.tls
        name = settings.server_name or target.host
        try:
            try:
                context = client_context(settings.verify, settings.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise _Failed(
                    f"cannot load the CA file {settings.ca_file}: {_reason(exc)}"
                ) from None
            with _bounded(self.timeout, f"during the TLS handshake with {name}"):
                tls = await _tls_handshake(stream, context, name)
            outcome, detail = _certificate(
                tls, settings.pin_sha256, verified=settings.verify
            )
        except _Failed as exc:
            hint = ""
            if settings.server_name is None and "verif" in str(exc):
                hint = (
                    "; if the application's URL names another host, set"
                    " server_name to it"
                )
            self.report.fail(check, f"{exc}{hint}")
            raise
        self.report.line(outcome, check, detail)
        return tls

    async def _check_scim(
        self, prefix: str, target: Target, stream: trio.abc.Stream
    ) -> None:
        check = f"{prefix} SCIM"
        base = self.scim_path if self.scim_path is not None else target.path_prefix
        path = (base or "").rstrip("/") + "/ServiceProviderConfig"
        tls = isinstance(stream, trio.SSLStream)
        host = target.tls.server_name or target.host
        default_port = 443 if tls else 80
        host_header = (
            _authority(host, target.port)
            if target.port != default_port
            else (f"[{host}]" if ":" in host else host)
        )
        started = time.perf_counter()
        try:
            with _bounded(self.timeout, f"to GET {path}"):
                status, body = await _get(stream, host_header, path)
        except _Failed as exc:
            self.report.fail(check, str(exc))
            raise
        elapsed = _ms(started)
        if status in (401, 403):
            self.report.warn(
                check,
                f"GET {path}: {status}: reachable, needs credentials (the hub's"
                " application settings provide them)",
            )
            return
        if status != 200:
            hint = ""
            if status == 404:
                hint = (
                    "; the SCIM base path may differ: set the target's path_prefix"
                    " or try --scim-path /scim/v2"
                )
            self.report.fail(check, f"GET {path}: HTTP {status}{hint}")
            return
        try:
            document = json.loads(body)
        except ValueError:
            self.report.fail(
                check, f"GET {path}: 200 but the body is not JSON: is it a SCIM API?"
            )
            return
        features = [
            name
            for name in _SCIM_FEATURES
            if isinstance(document, dict)
            and isinstance(document.get(name), dict)
            and document[name].get("supported") is True
        ]
        supports = ", ".join(features) or "none of the optional features"
        self.report.ok(check, f"GET {path}: 200 in {elapsed}; supports {supports}")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _get(stream: trio.abc.Stream, host: str, path: str) -> tuple[int, bytes]:
    """One ``GET`` over *stream* with h11; return the status and the body."""
    client = h11.Connection(h11.CLIENT)
    headers = [
        ("Host", host),
        ("Accept", "application/scim+json, application/json"),
        ("User-Agent", f"trustelem-relay-doctor/{__version__}"),
        ("Connection", "close"),
    ]
    try:
        request = client.send(h11.Request(method="GET", target=path, headers=headers))
        end = client.send(h11.EndOfMessage())
        await stream.send_all((request or b"") + (end or b""))
        status = 0
        body = bytearray()
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(bytes(await stream.receive_some(_READ_SIZE)))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > _MAX_DISCOVERY_BODY:
                    raise _Failed(
                        f"GET {path}: the answer is over {_MAX_DISCOVERY_BODY} bytes"
                    )
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, bytes(body)
    except h11.ProtocolError:
        raise _Failed(f"GET {path}: the answer is not valid HTTP/1.1") from None
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise _Failed(f"GET {path}: the connection failed: {_reason(exc)}") from None
