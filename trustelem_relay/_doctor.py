"""``trustelem-relay doctor``: check both legs of the relay, one line each.

Theory of operation
-------------------

:func:`diagnose` walks what the agent does when it runs, step by step, and
stops a leg at its first failure, because every later step depends on it:

* the configuration: it loads, the state directory is usable, the files
  holding secrets are closed to group and others;
* the hub leg: the proxy (TCP, then ``CONNECT``) when one is set, else TCP
  to the hub; TLS for a ``wss://`` hub (the certificate, its expiry, the pin
  when one is set); the websocket upgrade; then the relay handshake itself,
  with an agent-role :class:`~._mux.Connection`: HELLO, WELCOME, CONFIRM,
  and a PING whose PONG proves that the hub accepted the CONFIRM. The
  websocket is then closed politely (close code 1000). The doctor never
  sends INFO, so the hub never lists it as an agent;
* each declared target: DNS, TCP to the declared address, TLS when the
  target looks like TLS, and SCIM discovery, ``GET
  {prefix}/ServiceProviderConfig`` with h11. A 401 or 403 only means that
  the hub must send credentials, so it is a warning, not a failure.

Each check prints one line, ``ok``, ``warn`` or ``FAIL``, its name and what
it found, as soon as it finishes; each is bounded by the same timeout. A
summary line ends the report. Nothing printed is a secret: the proxy is
shown with its credentials redacted, the service_id never (only the first
characters of the lookup id derived from it, as ``hub services`` shows).

The target's TLS check verifies the certificate for ``server_name`` or the
declared host. At run time the agent verifies for the host of the URL the
hub sends, which the doctor cannot know; a target declared by IP address
whose certificate names a host should set ``server_name``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shlex
import ssl
import stat
import sys
import time
import tomllib
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import h11
import trio
import trio_websocket

from ._config import AgentConfig, ensure_state_dir, redact_url
from ._dial import HubConnectError, hub_ssl_context, open_hub_stream, open_hub_websocket
from ._errors import (
    AuthenticationFailed,
    ConfigError,
    HandshakeError,
    RemoteProtocolError,
    VersionMismatch,
)
from ._events import HandshakeComplete, PongReceived
from ._forward_tls import client_context, pin_matches
from ._frames import MAX_FRAME_LENGTH
from ._link import CLOSE_NORMAL
from ._mux import Connection, Role
from ._policy import Target
from ._version import __version__

__all__ = ["DEFAULT_TIMEOUT", "diagnose", "register"]

#: Seconds each check may take.
DEFAULT_TIMEOUT = 5.0

#: A certificate expiring within this many days gets a warning.
EXPIRY_WARNING_DAYS = 14

# The discovery answer is a small JSON document; more is not what we asked.
_MAX_DISCOVERY_BODY = 1 << 20
_READ_SIZE = 65536
_PING = b"doctor"
_DEFAULT_PORTS = {"ws": 80, "wss": 443}
_SCIM_FEATURES = ("patch", "bulk", "filter", "changePassword", "sort", "etag")


class _Failed(Exception):
    """A check failed; the message is its line. Ends the leg it is in."""


class _Report:
    """Prints each outcome as it comes and counts them."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.counts = {"ok": 0, "warn": 0, "FAIL": 0}

    def line(self, outcome: str, check: str, detail: str) -> None:
        self.counts[outcome] += 1
        print(f"{outcome:<4}  {check}: {_one_line(detail)}", file=self.out, flush=True)

    def ok(self, check: str, detail: str) -> None:
        self.line("ok", check, detail)

    def warn(self, check: str, detail: str) -> None:
        self.line("warn", check, detail)

    def fail(self, check: str, detail: str) -> None:
        self.line("FAIL", check, detail)

    def summary(self) -> bool:
        ok, warn, failed = self.counts["ok"], self.counts["warn"], self.counts["FAIL"]
        verdict = "all checks passed" if not failed else "some checks failed"
        print(
            f"summary: {ok} ok, {warn} warning(s), {failed} failed: {verdict}",
            file=self.out,
            flush=True,
        )
        return not failed


def _one_line(text: str) -> str:
    # Peers choose some of this text (certificate names, error reasons).
    joined = " ".join(str(text).split())
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in joined)


def _ms(started: float) -> str:
    return f"{(time.perf_counter() - started) * 1000:.0f} ms"


def _reason(exc: BaseException) -> str:
    """One short line for a low-level error (socket, TLS, h11)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return f"certificate verification failed: {current.verify_message}"
        if isinstance(current, ssl.SSLError):
            return (current.reason or str(current)).replace("_", " ").lower()
        if isinstance(current, OSError) and current.errno and current.errno > 0:
            # The errno's own text: trio's repeats the address.
            return os.strerror(current.errno)
        if isinstance(current, OSError) and current.strerror:
            # getaddrinfo's errors have negative numbers and their own text.
            return str(current.strerror)
        current = current.__cause__ or current.__context__
    return str(exc) or type(exc).__name__


@contextmanager
def _bounded(timeout: float, what: str) -> Iterator[None]:
    """Fail the check with a clear line if it takes longer than *timeout*."""
    try:
        with trio.fail_after(timeout):
            yield
    except trio.TooSlowError:
        raise _Failed(f"no answer within {timeout:g} s {what}") from None


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --------------------------------------------------------------------------
# Certificates


def _name(rdns: Any) -> str:
    """``CN=..., O=...`` from the tuple form ``getpeercert()`` gives."""
    short = {"commonName": "CN", "organizationName": "O"}
    parts = [
        f"{short[key]}={value}"
        for rdn in rdns or ()
        for key, value in rdn
        if key in short
    ]
    return ", ".join(parts) or "(no name)"


def _subject(info: dict[str, Any]) -> str:
    """What a certificate is for: its subject, and its first few names."""
    names = [str(value) for _, value in info.get("subjectAltName", ())]
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    subject = _name(info.get("subject"))
    return f"{subject} [{shown}]" if names else subject


def _certificate(
    tls: trio.SSLStream[Any], pin: bytes | None, *, verified: bool
) -> tuple[str, str]:
    """Describe the peer's certificate; return ``(outcome, detail)``."""
    parts: list[str] = []
    outcome = "ok"
    version = tls.version() or "TLS"
    info = tls.getpeercert() if verified else None
    if info:
        subject = _subject(info)
        issuer = _name(info.get("issuer"))
        parts.append(f"{version}, certificate {subject} (issuer {issuer}) verified")
        expires = datetime.fromtimestamp(
            ssl.cert_time_to_seconds(str(info["notAfter"])), UTC
        )
        days = (expires - datetime.now(UTC)).days
        parts.append(f"expires {expires:%Y-%m-%d} (in {days} days)")
        if days < EXPIRY_WARNING_DAYS:
            outcome = "warn"
    else:
        parts.append(f"{version}, certificate NOT verified (insecure_skip_verify)")
        outcome = "warn"
    if pin is not None:
        der = tls.getpeercert(binary_form=True)
        try:
            matches = der is not None and pin_matches(der, pin)
        except ValueError as exc:
            raise _Failed(f"cannot read the certificate's public key: {exc}") from None
        if not matches:
            raise _Failed(
                "; ".join([*parts, "its public key does NOT match the configured pin"])
            )
        parts.append("public key matches the pin")
    return outcome, "; ".join(parts)


async def _tls_handshake(
    stream: trio.abc.Stream, context: ssl.SSLContext, server_name: str
) -> trio.SSLStream[trio.abc.Stream]:
    tls = trio.SSLStream(
        stream, context, server_hostname=server_name, https_compatible=True
    )
    try:
        await tls.do_handshake()
    except (trio.BrokenResourceError, OSError) as exc:
        await trio.aclose_forcefully(tls)
        raise _Failed(f"handshake for {server_name} failed: {_reason(exc)}") from None
    return tls


# --------------------------------------------------------------------------
# The doctor


class _Doctor:
    """The checks, in the order the agent meets what they check."""

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

    async def run(self, config: AgentConfig) -> None:
        self.check_state_dir(config)
        self.check_secrets(config)
        await self.check_hub(config)
        for target in config.targets.values():
            await self.check_target(target)

    # ------------------------------------------------------------------
    # Configuration

    def check_state_dir(self, config: AgentConfig) -> None:
        check, path = "state dir", config.state_dir
        if not os.path.lexists(path):
            parent = path.parent
            while not parent.exists() and parent != parent.parent:
                parent = parent.parent
            if os.access(parent, os.W_OK | os.X_OK):
                self.report.ok(check, f"{path} does not exist yet; run creates it 0700")
            else:
                self.report.fail(
                    check, f"{path} cannot be created: {parent} is read-only"
                )
            return
        try:
            ensure_state_dir(path)
        except ConfigError as exc:
            self.report.fail(check, str(exc))
            return
        if not os.access(path, os.W_OK | os.X_OK):
            self.report.fail(check, f"{path} is not writable by this user")
            return
        self.report.ok(check, f"{path} (private, writable)")

    def check_secrets(self, config: AgentConfig) -> None:
        # load() checked these files, but a loaded config may be older than
        # a chmod; and it does not check a proxy password's file at all.
        check = "secrets"
        try:
            data = tomllib.loads(config.path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            self.report.warn(check, f"cannot read {config.path} again: {exc}")
            return
        holders: list[tuple[str, Path]] = []
        if "service_id_file" in data:
            base = config.path.absolute().parent
            holders.append(("service_id", base / str(data["service_id_file"])))
        else:
            holders.append(("service_id", config.path))
        if config.proxy is not None and urllib.parse.urlsplit(config.proxy).password:
            holders.append(("proxy password", config.path))
        found = []
        for secret, holder in holders:
            try:
                mode = stat.S_IMODE(os.stat(holder).st_mode)
            except OSError as exc:
                self.report.fail(check, f"{holder}: {_reason(exc)}")
                return
            if mode & 0o077:
                fix = f"chmod 600 {shlex.quote(str(holder))}"
                self.report.fail(
                    check,
                    f"{holder} holds the {secret} but group or others can read it"
                    f" (mode {mode:04o}); fix with: {fix}",
                )
                return
            found.append(f"{secret} in {holder} (mode {mode:04o})")
        self.report.ok(check, "; ".join(found) + ": closed to group and others")

    # ------------------------------------------------------------------
    # The hub leg

    async def check_hub(self, config: AgentConfig) -> None:
        parts = urllib.parse.urlsplit(config.hub)
        host = parts.hostname or ""
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 443)
        authority = _authority(host, port)
        resource = parts.path or "/"
        if parts.query:
            resource += f"?{parts.query}"
        # The same URL without TLS: open_hub_stream then stops at the raw
        # connection (or the proxy's tunnel), and TLS is checked on its own.
        plain_url = f"ws://{authority}{resource}"

        try:
            stream = await self._hub_stream(config, plain_url, authority)
        except _Failed:
            return
        if parts.scheme == "wss":
            check = "hub TLS"
            try:
                with _bounded(self.timeout, f"during the TLS handshake with {host}"):
                    stream = await _tls_handshake(
                        stream, hub_ssl_context(config.hub_ca_file), host
                    )
                outcome, detail = _certificate(
                    stream, config.hub_pin_sha256, verified=True
                )
            except (_Failed, ConfigError) as exc:
                await trio.aclose_forcefully(stream)
                self.report.fail(check, str(exc))
                return
            self.report.line(outcome, check, detail)

        # Nothing below raises: a nursery would wrap it in a group.
        async with trio.open_nursery() as nursery:
            try:
                ws = await open_hub_websocket(
                    nursery,
                    stream,
                    config.hub,
                    max_message_size=MAX_FRAME_LENGTH + 4,
                    receive_buffer_size=_READ_SIZE,
                    handshake_timeout=self.timeout,
                )
            except HubConnectError as exc:
                self.report.fail("hub websocket", str(exc))
            else:
                self.report.ok("hub websocket", f"upgrade of {resource} accepted")
                try:
                    await self._handshake(ws, config.service_id)
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(2):
                        await ws.aclose(CLOSE_NORMAL, "doctor finished")
                    # When the hub closed first, aclose leaves the stream open.
                    await trio.aclose_forcefully(stream)
            nursery.cancel_scope.cancel()

    async def _hub_stream(
        self, config: AgentConfig, plain_url: str, authority: str
    ) -> trio.abc.Stream:
        """TCP to the hub, or the tunnel through the proxy; report each."""
        proxy = config.proxy
        if proxy is None:
            check = "hub TCP"
        else:
            check = "proxy CONNECT"
            await self._check_proxy_tcp(proxy)
        started = time.perf_counter()
        try:
            stream = await open_hub_stream(
                plain_url,
                proxy=proxy,
                proxy_ssl_context=hub_ssl_context(config.hub_ca_file),
                connect_timeout=self.timeout,
            )
        except (HubConnectError, ConfigError) as exc:
            self.report.fail(check, str(exc))
            raise _Failed(str(exc)) from None
        if proxy is None:
            self.report.ok(check, f"connected to {authority} in {_ms(started)}")
        else:
            self.report.ok(check, f"tunnel to {authority} open in {_ms(started)}")
        return stream

    async def _check_proxy_tcp(self, proxy: str) -> None:
        check, shown = "proxy", redact_url(proxy)
        parts = urllib.parse.urlsplit(proxy)
        started = time.perf_counter()
        try:
            with _bounded(self.timeout, f"connecting to the proxy {shown}"):
                stream = await trio.open_tcp_stream(
                    parts.hostname or "", parts.port or 0
                )
        except (_Failed, OSError, ValueError) as exc:
            detail = str(exc) if isinstance(exc, _Failed) else _connect_reason(exc)
            self.report.fail(check, f"cannot connect to {shown}: {detail}")
            raise _Failed(detail) from None
        await stream.aclose()
        self.report.ok(check, f"{shown} reachable in {_ms(started)}")

    async def _handshake(
        self, ws: trio_websocket.WebSocketConnection, service_id: str
    ) -> None:
        """HELLO, WELCOME, CONFIRM, then a PING the hub must answer."""
        check = "hub handshake"
        conn = Connection(Role.AGENT, service_id=service_id, clock=trio.current_time)
        complete: HandshakeComplete | None = None
        answered = False
        started = time.perf_counter()
        try:
            with _bounded(self.timeout, "from the hub during the relay handshake"):
                while not answered:
                    for frame in conn.data_to_send():
                        await ws.send_message(frame)
                    message = await ws.get_message()
                    if isinstance(message, str):
                        message = message.encode("utf-8")
                    for event in conn.receive_message(message):
                        if isinstance(event, HandshakeComplete):
                            # Only a hub that accepted CONFIRM answers this.
                            complete = event
                            conn.ping(_PING)
                        elif isinstance(event, PongReceived):
                            answered = complete is not None
        except _Failed as exc:
            self.report.fail(check, str(exc))
            return
        except AuthenticationFailed as exc:
            self.report.fail(check, f"authentication failed: {exc}")
            return
        except VersionMismatch as exc:
            self.report.fail(check, f"protocol version mismatch: {exc}")
            return
        except (HandshakeError, RemoteProtocolError) as exc:
            self.report.fail(check, f"{type(exc).__name__}: {exc}")
            return
        except trio_websocket.ConnectionClosed as exc:
            reason = exc.reason
            said = "" if reason is None else f" ({reason.code} {reason.reason or ''})"
            stage = "after CONFIRM" if complete is not None else "before WELCOME"
            self.report.fail(
                check,
                f"the hub closed the websocket {stage}{said}: the service_id may be"
                " wrong or rotated, or the hub refused this agent",
            )
            return
        assert complete is not None
        self.report.ok(
            check,
            f"HELLO, WELCOME, CONFIRM in {_ms(started)}: protocol {complete.version},"
            f" service lookup {complete.lookup_id[:12]}; the hub and this agent"
            " hold the same service_id",
        )

    # ------------------------------------------------------------------
    # Targets

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


def _connect_reason(exc: BaseException) -> str:
    # trio's "all attempts to connect failed" hides each attempt's errno.
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        reasons = [_reason(inner) for inner in cause.exceptions]
        return "; ".join(dict.fromkeys(reasons))
    return _reason(exc)


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


# --------------------------------------------------------------------------
# Entry points


def _load(path: str | os.PathLike[str], report: _Report) -> AgentConfig | None:
    try:
        config = AgentConfig.load(path)
    except ConfigError as exc:
        report.fail("config", str(exc))
        return None
    _show_config(config, report)
    return config


def _show_config(config: AgentConfig, report: _Report) -> None:
    count = len(config.targets)
    proxy = f", proxy {redact_url(config.proxy)}" if config.proxy else ""
    detail = (
        f"{config.path}: hub {redact_url(config.hub)}{proxy},"
        f" {count} target(s) ({', '.join(config.targets) or 'none'})"
    )
    if count:
        report.ok("config", detail)
    else:
        report.warn("config", f"{detail}: the agent can forward nothing")


async def diagnose(
    config: AgentConfig | str | os.PathLike[str],
    *,
    out: TextIO | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    tls: bool | None = None,
    scim_path: str | None = None,
) -> bool:
    """Check the configuration, the hub leg and every target; print a line
    per check and a summary to *out* (default stdout).

    *config* is a loaded configuration, or the path of one to load (a load
    failure is then the first, and only, failed check). *timeout* bounds
    each check. *tls* forces TLS to every target on (True) or off (False)
    instead of guessing from each target's port and settings; *scim_path*
    replaces each target's path_prefix as the SCIM base path. Returns True
    when no check failed (warnings allowed).
    """
    report = _Report(sys.stdout if out is None else out)
    if isinstance(config, AgentConfig):
        _show_config(config, report)
        loaded: AgentConfig | None = config
    else:
        loaded = _load(config, report)
    if loaded is not None:
        doctor = _Doctor(report, timeout=timeout, tls=tls, scim_path=scim_path)
        await doctor.run(loaded)
    return report.summary()


def cmd_doctor(args: argparse.Namespace) -> int:
    """``doctor``: check both legs; exit 0 if nothing failed, else 1."""
    from ._cli import agent_config_path

    healthy = trio.run(
        lambda: diagnose(
            agent_config_path(args),
            timeout=args.timeout,
            tls=args.tls,
            scim_path=args.scim_path,
        )
    )
    return 0 if healthy else 1


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 600:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 600 seconds")
    return value


def _scim_path(text: str) -> str:
    if not text.startswith("/") or not text.isascii() or not text.isprintable():
        raise argparse.ArgumentTypeError("must be a path starting with '/', e.g. /v2")
    if any(char in text for char in " ?#"):
        raise argparse.ArgumentTypeError("must be a plain path, without ?, # or spaces")
    return text


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``doctor`` to the command line."""
    from ._cli import add_config_option

    doctor = subparsers.add_parser(
        "doctor",
        help="check the config, the hub leg and every target",
        description=(
            "Check what the agent needs, one line per check (ok, warn or FAIL):"
            " the config and state directory; the proxy, TCP, TLS, websocket"
            " and relay handshake to the hub; each target's DNS, TCP, TLS and"
            " SCIM discovery (GET .../ServiceProviderConfig). Exits 0 when"
            " nothing failed, 1 otherwise. Prints no secret."
        ),
    )
    add_config_option(doctor)
    doctor.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT,
        help=f"how long each check may take (default: {DEFAULT_TIMEOUT:g})",
    )
    forcing = doctor.add_mutually_exclusive_group()
    forcing.add_argument(
        "--tls",
        dest="tls",
        action="store_const",
        const=True,
        default=None,
        help="use TLS to every target (default: when the port is 443 or"
        " server_name, ca_file or pin_sha256 is set)",
    )
    forcing.add_argument(
        "--no-tls",
        dest="tls",
        action="store_const",
        const=False,
        help="use plain TCP to every target",
    )
    doctor.add_argument(
        "--scim-path",
        metavar="PATH",
        type=_scim_path,
        default=None,
        help="the SCIM base path to discover under, e.g. /v2 or /scim/v2"
        " (default: each target's path_prefix, else /)",
    )
    doctor.set_defaults(func=cmd_doctor)
