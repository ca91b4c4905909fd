"""What the doctor's checks share: the report they print to, and helpers.

Theory of operation
-------------------

A check reports its outcome on :class:`_Report`, one line as soon as it
finishes, and raises :class:`_Failed` when the rest of its leg cannot go on;
the leg catches it and stops there. The helpers turn low-level errors
(socket, TLS, h11) into one short, printable line, bound a check by the
timeout, and describe a peer's certificate. They serve both legs, the hub
(:mod:`._doctor_hub`) and the targets (:mod:`._doctor_targets`), which is
why they live here and not in :mod:`._doctor`, which imports both.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TextIO

import trio

from ._forward_tls import pin_matches

#: A certificate expiring within this many days gets a warning.
EXPIRY_WARNING_DAYS = 14
_READ_SIZE = 65536


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


def _connect_reason(exc: BaseException) -> str:
    # trio's "all attempts to connect failed" hides each attempt's errno.
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        reasons = [_reason(inner) for inner in cause.exceptions]
        return "; ".join(dict.fromkeys(reasons))
    return _reason(exc)


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
