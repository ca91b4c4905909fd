"""The standalone hub's configuration file, ``hub.toml``.

Theory of operation
-------------------

The file is read once, with the standard library's TOML parser, into
frozen records: :class:`HubConfig` and its :class:`HubLimits`. Every key has
a default, so an empty file is a valid configuration (docs/hub.md lists
them all).

The schema is strict, like the agent's: a key this version does not know
is an error, never silently ignored, because a misspelt ``tls_cert`` that
was skipped would leave the endpoint without TLS. A wrong type or value is
one :class:`ConfigError` line naming the file and the dotted key.

Reading goes through :class:`_Table`, which hands out typed values and
remembers which keys were asked for; whatever is left over when a table is
finished is an unknown key. A new section (such as the ``[app.NAME]`` tables
of a later release) is one more function that takes a :class:`_Table` and
is called from :meth:`HubConfig.load`.

Relative paths (``tls_cert``, ``tls_key``, ``store``) are resolved against
the directory holding the file, so that the hub behaves the same whatever
its working directory. Nothing here opens those files: the runtime does,
and reports what it finds.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import attrs

from ._errors import ConfigError
from ._hubstore import MEMORY

__all__ = [
    "DEFAULT_ADMIN_LISTEN",
    "DEFAULT_LISTEN",
    "DEFAULT_PATH",
    "DEFAULT_STORE",
    "HubConfig",
    "HubLimits",
    "ListenAddress",
]

_KiB = 1024
_MiB = 1024 * _KiB
_GiB = 1024 * _MiB

# One label of a host name (RFC 1123): letters, digits and inner hyphens.
_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")

# An absolute URL path: RFC 3986 path characters only (no query, fragment,
# space or control character), so it can be compared byte for byte with the
# path of an incoming upgrade request.
_PATH_RE = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*")


# --------------------------------------------------------------------------
# Addresses


@attrs.frozen
class ListenAddress:
    """A host and port to listen on.

    ``host`` is an IPv4 or IPv6 address (without brackets) or a host name;
    ``port`` is 0 to 65535, where 0 asks the system for a free port.
    ``str()`` gives the ``host:port`` form back, IPv6 in brackets.
    """

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        """Parse ``host:port`` or ``[v6]:port``; raise ValueError if bad.

        The error message explains the expected form and is meant to be
        prefixed with the file and key by the caller.
        """
        if text.startswith("["):
            inside, sep, port = text[1:].partition("]:")
            if not sep:
                raise ValueError(f"{text!r} is not [IPv6]:PORT")
            try:
                ipaddress.IPv6Address(inside)
            except ValueError:
                raise ValueError(f"{inside!r} is not an IPv6 address") from None
            return cls(inside, _parse_port(port))
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r} has no port; write HOST:PORT")
        if ":" in host:
            raise ValueError(
                f"{text!r}: put an IPv6 address in brackets, as in [::1]:8443"
            )
        _check_host(host)
        return cls(host, _parse_port(port))

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def _parse_port(text: str) -> int:
    # isdigit() alone would accept other scripts' digits; int() rejects
    # nothing we want to reject (it takes "+80" and "8_0").
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        raise ValueError(f"port {text!r} is not a number from 0 to 65535")
    port = int(text)
    if port > 65535:
        raise ValueError(f"port {port} is above 65535")
    return port


def _check_host(host: str) -> None:
    if not host:
        raise ValueError("the host is empty; write 0.0.0.0 to listen everywhere")
    labels = host.removesuffix(".").split(".")
    if all(label.isdigit() for label in labels):
        # All-numeric: it can only mean an IPv4 address.
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv4 address") from None
        return
    if len(host) > 253 or not all(_LABEL_RE.fullmatch(label) for label in labels):
        raise ValueError(f"{host!r} is neither an IP address nor a host name")


# --------------------------------------------------------------------------
# Records

DEFAULT_LISTEN = ListenAddress("127.0.0.1", 8443)
DEFAULT_ADMIN_LISTEN = ListenAddress("127.0.0.1", 8444)
DEFAULT_PATH = "/v1/connect"
DEFAULT_STORE = "hub.db"


@attrs.frozen
class HubLimits:
    """Limits the hub applies to every agent session (design section 8).

    Durations are in seconds, sizes in bytes. ``heartbeat_interval`` is how
    often the hub pings an idle session, and ``heartbeat_timeout`` how long
    it waits for the answer before declaring the link dead;
    ``request_timeout`` is a relayed request's deadline when the caller
    gives none; ``max_in_flight`` bounds concurrent requests per agent;
    the body limits bound what one request or response may carry.
    """

    heartbeat_interval: float = 15.0
    heartbeat_timeout: float = 10.0
    request_timeout: float = 55.0
    max_in_flight: int = 64
    max_request_body: int = 1 * _MiB
    max_response_body: int = 16 * _MiB


@attrs.frozen
class HubConfig:
    """What ``hub.toml`` says; every field has the documented default.

    ``tls_cert`` and ``tls_key`` are both set (the agents' endpoint speaks
    wss) or both None (plain ws, for use behind a TLS-terminating load
    balancer). ``store`` is the SQLite file's path or ``":memory:"``.
    ``source`` is the file the values came from, None when built in code.
    Paths loaded from a file are absolute.
    """

    listen: ListenAddress = DEFAULT_LISTEN
    tls_cert: Path | None = None
    tls_key: Path | None = None
    store: str = DEFAULT_STORE
    admin_listen: ListenAddress = DEFAULT_ADMIN_LISTEN
    path: str = DEFAULT_PATH
    limits: HubLimits = HubLimits()
    source: Path | None = None

    def __attrs_post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")

    @property
    def tls(self) -> bool:
        """True when the agents' endpoint terminates TLS itself."""
        return self.tls_cert is not None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> HubConfig:
        """Read and check a hub.toml; raise ConfigError if anything is wrong.

        The error is one line, ``FILE: KEY: what is wrong``.
        """
        file = Path(path)
        top = _Table(file, "", _read_toml(file))
        base = file.absolute().parent

        # Each key on its own first, so that a misspelt key is reported as
        # such rather than as a missing partner in the checks that follow.
        listen = _address(top, "listen", DEFAULT_LISTEN)
        admin_listen = _address(top, "admin_listen", DEFAULT_ADMIN_LISTEN)
        tls_cert = _file_path(top, "tls_cert", base)
        tls_key = _file_path(top, "tls_key", base)
        store = _store(top, base)
        url_path = _url_path(top)
        limits = _limits(top.table("limits"))
        top.finish()

        # Then the rules that tie keys together.
        if listen == admin_listen and listen.port != 0:
            raise top.error("admin_listen", f"is the same address as listen ({listen})")
        if tls_cert is not None and tls_key is None:
            raise top.error("tls_key", "is required when tls_cert is set")
        if tls_key is not None and tls_cert is None:
            raise top.error("tls_cert", "is required when tls_key is set")

        return cls(
            listen=listen,
            tls_cert=tls_cert,
            tls_key=tls_key,
            store=store,
            admin_listen=admin_listen,
            path=url_path,
            limits=limits,
            source=file.absolute(),
        )


# --------------------------------------------------------------------------
# Reading

T = TypeVar("T")

# TOML's own names for the types tomllib returns, for error messages.
_TOML_TYPES = {
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    str: "a string",
    list: "an array",
    dict: "a table",
}


def _describe(value: object) -> str:
    for kind, text in _TOML_TYPES.items():
        if isinstance(value, kind):
            return text
    return "a date or time"


def _read_toml(file: Path) -> dict[str, object]:
    try:
        text = file.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{file}: no such file; an empty file gives the defaults (see docs/hub.md)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 text (byte {exc.start})") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from exc


class _Table:
    """One TOML table being read: typed access, and unknown-key detection.

    Every key asked for (present or not) is remembered; :meth:`finish`
    raises for any other key the file holds.
    """

    def __init__(self, file: Path, prefix: str, data: Mapping[str, object]) -> None:
        self._file = file
        # Dotted path of this table with a trailing dot ("limits."), or "".
        self._prefix = prefix
        self._data = data
        self._known: set[str] = set()

    def error(self, key: str, message: str) -> ConfigError:
        """Build the one-line error for ``key`` of this table."""
        return ConfigError(f"{self._file}: {self._prefix}{key}: {message}")

    def get(self, key: str, kind: type[T], expected: str) -> T | None:
        """Return the value of ``key`` if it is a ``kind``, None if absent."""
        self._known.add(key)
        if key not in self._data:
            return None
        value = self._data[key]
        # TOML booleans are Python ints; they are never a valid number here.
        if isinstance(value, bool) and kind is not bool:
            raise self.error(key, f"expected {expected}, got a boolean")
        if not isinstance(value, kind):
            raise self.error(key, f"expected {expected}, got {_describe(value)}")
        return value

    def number(self, key: str, expected: str) -> float | None:
        """Return the integer or float value of ``key``, None if absent."""
        self._known.add(key)
        value = self._data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"expected {expected}, got {_describe(value)}")
        return float(value)

    def table(self, key: str) -> _Table:
        """Return the sub-table ``key``, empty if absent."""
        data = self.get(key, dict, "a table") or {}
        return _Table(self._file, f"{self._prefix}{key}.", data)

    def finish(self) -> None:
        """Raise ConfigError for the first key that nobody asked for."""
        unknown = sorted(set(self._data) - self._known)
        if not unknown:
            return
        key = unknown[0]
        guess = difflib.get_close_matches(key, self._known, n=1)
        hint = f"did you mean {guess[0]!r}?" if guess else ""
        if not hint:
            hint = "known keys: " + ", ".join(sorted(self._known))
        raise self.error(key, f"unknown key; {hint}")


def _address(table: _Table, key: str, default: ListenAddress) -> ListenAddress:
    text = table.get(key, str, 'a string such as "127.0.0.1:8443"')
    if text is None:
        return default
    try:
        return ListenAddress.parse(text)
    except ValueError as exc:
        raise table.error(key, str(exc)) from None


def _file_path(table: _Table, key: str, base: Path) -> Path | None:
    text = table.get(key, str, "a file path")
    if text is None:
        return None
    if not text:
        raise table.error(key, "is empty; remove the key instead")
    return base / text


def _store(table: _Table, base: Path) -> str:
    text = table.get("store", str, "a string")
    if text is None:
        text = DEFAULT_STORE
    if not text:
        raise table.error("store", f'is empty; give a file name or "{MEMORY}"')
    return text if text == MEMORY else str(base / text)


def _url_path(table: _Table) -> str:
    text = table.get("path", str, "a string")
    if text is None:
        return DEFAULT_PATH
    if not _PATH_RE.fullmatch(text):
        raise table.error(
            "path",
            f"{text!r} is not a URL path: start with '/', no spaces, query or fragment",
        )
    return text


def _duration(table: _Table, key: str, default: float, maximum: float) -> float:
    seconds = table.number(key, "a number of seconds")
    if seconds is None:
        return default
    # NaN fails every comparison, so the range test refuses it too.
    if not 1 <= seconds <= maximum:
        raise table.error(
            key, f"must be from 1 to {maximum:g} seconds, not {seconds:g}"
        )
    return seconds


def _count(table: _Table, key: str, default: int, maximum: int, unit: str) -> int:
    value = table.get(key, int, f"an integer ({unit})")
    if value is None:
        return default
    if not 1 <= value <= maximum:
        raise table.error(key, f"must be from 1 to {maximum} {unit}, not {value}")
    return value


def _limits(table: _Table) -> HubLimits:
    defaults = HubLimits()
    limits = HubLimits(
        heartbeat_interval=_duration(
            table, "heartbeat_interval", defaults.heartbeat_interval, 3600
        ),
        heartbeat_timeout=_duration(
            table, "heartbeat_timeout", defaults.heartbeat_timeout, 3600
        ),
        request_timeout=_duration(
            table, "request_timeout", defaults.request_timeout, 3600
        ),
        max_in_flight=_count(
            table, "max_in_flight", defaults.max_in_flight, 10_000, "requests"
        ),
        max_request_body=_count(
            table, "max_request_body", defaults.max_request_body, _GiB, "bytes"
        ),
        max_response_body=_count(
            table, "max_response_body", defaults.max_response_body, _GiB, "bytes"
        ),
    )
    table.finish()
    return limits
