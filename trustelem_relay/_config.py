"""The agent's configuration: connect.toml, its state directory and secrets.

Theory of operation
-------------------

Reading is strict. The file is parsed with :mod:`tomllib`, then every key is
checked against a fixed schema: an unknown key, a wrong type or a bad value
raises :class:`ConfigError` whose message is one line naming the file, the
key and what was expected (``connect.toml: target.scim.addr: port must be
1-65535, got 0``). Secret values (the service_id, the proxy URL's password)
never appear in a message, a repr or a log line.

The service_id is the service's only secret. It lives inline in
connect.toml or in a separate file (``service_id_file``); wherever it is,
the file must be a regular file of ours that no group or other user can
open, and the error says which ``chmod`` fixes it.

Relative paths in the file (``state_dir``, ``service_id_file``,
``ca_file``, ``hub_ca_file``) are taken from the file's own directory, not
the working directory, and made absolute, so the agent behaves the same
wherever it starts.

This module is the loading layer. The private files (the state directory,
secret files, atomic writes) live in :mod:`._secrets`, beneath it; editing
lives in :mod:`._config_edit`, above it, and is re-exported from here only
lazily, on first use, so that loading never imports editing.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import importlib
import ipaddress
import json
import os
import pathlib
import re
import shlex
import stat
import tomllib
import types
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import SplitResult, urlsplit

import attrs

from ._errors import ConfigError
from ._keys import validate_service_id
from ._policy import (
    METHOD_NAME_RE,
    Target,
    TLSSettings,
    parse_addr,
    parse_host,
    parse_target_name,
)
from ._secrets import (
    _os_error,
    ensure_state_dir,
    read_secret_file,
    write_secret_file,
)

if TYPE_CHECKING:
    from ._config_edit import list_targets, remove_target, set_target

#: The environment variable naming the config file when --config is absent.
CONFIG_ENV = "TRUSTELEM_CONNECT_CONFIG"

_T = TypeVar("_T")
_R = TypeVar("_R")

_TOP_KEYS = (
    "service_id",
    "service_id_file",
    "state_dir",
    "hub",
    "proxy",
    "hub_ca_file",
    "hub_pin_sha256",
    "target",
)
_TARGET_KEYS = (
    "addr",
    "server_name",
    "ca_file",
    "pin_sha256",
    "insecure_skip_verify",
    "methods",
    "path_prefix",
    "max_concurrent",
    "timeout",
)
_VISIBLE_RE = re.compile(r"[\x21-\x7e]+")
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_TYPE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    str: "a string",
    list: "an array",
    dict: "a table",
}


# --------------------------------------------------------------------------
# Values that stand on their own


def parse_pin(text: str) -> bytes:
    """Decode a pin: the standard, padded base64 of a 32-byte SHA-256 digest
    of a certificate's SubjectPublicKeyInfo. Raises ConfigError."""
    if text.startswith("sha256/"):
        raise ConfigError("write only the base64 digest, without 'sha256/'")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            "expected the base64 of a SHA-256 digest (44 characters ending in '=')"
        ) from None
    if len(raw) != 32:
        raise ConfigError(
            f"a SHA-256 digest is 32 bytes, this one decodes to {len(raw)}"
        )
    return raw


def redact_url(url: str) -> str:
    """Return *url* with any ``user:password@`` replaced by ``***@``, for
    messages and logs that mention a proxy."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***" if "@" in url else url
    authority, slash, tail = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{scheme}{sep}{authority}{slash}{tail}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _show_key(name: str) -> str:
    """A key as TOML needs it written: bare when possible, else quoted."""
    return name if _BARE_KEY_RE.fullmatch(name) else json.dumps(name)


def _target_key(name: str) -> str:
    return f"target.{_show_key(name)}"


def _type_name(value: object) -> str:
    return _TYPE_NAMES.get(type(value), "a date or time")


# --------------------------------------------------------------------------
# The schema check


@attrs.frozen
class _Checker:
    """Checks values of one file; every error names the file and the key."""

    #: The file as the operator named it, for messages.
    file: str
    #: The directory relative paths are taken from (absolute).
    base_dir: pathlib.Path

    def fail(self, key: str, message: str) -> ConfigError:
        if key:
            return ConfigError(f"{self.file}: {key}: {message}")
        return ConfigError(f"{self.file}: {message}")

    def typed(self, key: str, value: object, kind: type[_T]) -> _T:
        # type() rather than isinstance(): a bool is an int in Python but
        # never an integer in TOML.
        if type(value) is not kind:
            got = _type_name(value)
            raise self.fail(key, f"expected {_TYPE_NAMES[kind]}, got {got}")
        return value

    def parsed(self, key: str, parse: Callable[[str], _R], value: object) -> _R:
        """Check that *value* is a string, then run *parse* on it, putting
        the file and key in front of any ConfigError it raises."""
        text = self.typed(key, value, str)
        try:
            return parse(text)
        except ConfigError as exc:
            raise self.fail(key, str(exc)) from None

    def keys(self, key: str, table: Mapping[str, Any], known: tuple[str, ...]) -> None:
        for name in table:
            if name not in known:
                hint = difflib.get_close_matches(name, known, n=1)
                maybe = f"did you mean {hint[0]}? " if hint else ""
                where = f"{key}.{_show_key(name)}" if key else _show_key(name)
                expected = ", ".join(known)
                raise self.fail(
                    where, f"unknown key; {maybe}expected one of {expected}"
                )

    def path(self, key: str, value: object) -> pathlib.Path:
        text = self.typed(key, value, str)
        if not text or "\x00" in text:
            raise self.fail(key, "expected a path, got an empty or invalid one")
        return self.base_dir / text

    def url(self, key: str, text: str, expected: str) -> SplitResult:
        # urlsplit silently drops tabs and newlines; refuse them instead.
        if not _VISIBLE_RE.fullmatch(text):
            raise self.fail(key, f"expected {expected}, got spaces or odd characters")
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 - reading the property validates the port
        except ValueError:
            raise self.fail(key, f"expected {expected}, got a malformed URL") from None
        return parts


def _hub(check: _Checker, value: object) -> str:
    expected = "a wss:// URL like wss://hub.example.com/v1/connect"
    url = check.typed("hub", value, str)
    parts = check.url("hub", url, expected)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise check.fail("hub", f"expected {expected}")
    if "@" in parts.netloc or parts.fragment:
        raise check.fail("hub", "the hub URL takes no user, password or #fragment")
    if parts.scheme == "ws" and not _is_loopback(parts.hostname):
        raise check.fail(
            "hub",
            f"ws:// (no TLS) is only allowed to a loopback hub, not to"
            f" {parts.hostname}; use wss://",
        )
    return url


def _proxy(check: _Checker, value: object) -> str:
    expected = (
        "http://[user:password@]host:port or https://... (value not shown: it"
        " may hold a password)"
    )
    url = check.typed("proxy", value, str)
    parts = check.url("proxy", url, expected)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise check.fail("proxy", f"expected {expected}")
    return url


def _path_prefix(prefix: str) -> str:
    if not prefix.startswith("/"):
        raise ConfigError(f"must start with '/', got {prefix!a}")
    if not _VISIBLE_RE.fullmatch(prefix) or any(c in prefix for c in "?#%\\"):
        raise ConfigError("must be a plain path: visible ASCII without ?, #, % or \\")
    if any(segment in (".", "..") for segment in prefix.split("/")):
        raise ConfigError("must not contain '.' or '..' segments")
    return prefix


def _methods(check: _Checker, key: str, value: object) -> frozenset[str]:
    items = check.typed(key, value, list)
    if not items:
        raise check.fail(
            key, "an empty list refuses everything; remove the key instead"
        )
    for item in items:
        if type(item) is not str or not METHOD_NAME_RE.fullmatch(item):
            raise check.fail(
                key, f"expected upper-case HTTP methods like GET, got {item!a}"
            )
    return frozenset(items)


def _number(check: _Checker, key: str, value: object, low: float, high: float) -> float:
    if type(value) not in (int, float):
        raise check.fail(key, f"expected a number, got {_type_name(value)}")
    number = cast(float, value)
    if not low < number <= high:
        raise check.fail(
            key, f"must be more than {low} and at most {high}, got {number}"
        )
    return number


def _target(check: _Checker, name: str, value: object) -> Target:
    """Check one ``[target.NAME]`` table and build its Target."""
    where = _target_key(name)
    try:
        parse_target_name(name)
    except ConfigError as exc:
        raise check.fail(where, str(exc)) from None
    if type(value) is not dict:
        got = _type_name(value)
        raise check.fail(where, f'expected a table with addr = "host:port", got {got}')
    table: dict[str, Any] = value
    check.keys(where, table, _TARGET_KEYS)
    if "addr" not in table:
        raise check.fail(where, 'missing addr = "host:port"')
    host, port = check.parsed(f"{where}.addr", parse_addr, table["addr"])

    # TLS: verification stays on unless turned off by its loud key.
    skip = f"{where}.insecure_skip_verify"
    verify = not check.typed(skip, table.get("insecure_skip_verify", False), bool)
    server_name = ca_file = pin = None
    if "server_name" in table:
        server_name = check.parsed(
            f"{where}.server_name", parse_host, table["server_name"]
        )
    if "ca_file" in table:
        ca_file = check.path(f"{where}.ca_file", table["ca_file"])
    if "pin_sha256" in table:
        pin = check.parsed(f"{where}.pin_sha256", parse_pin, table["pin_sha256"])
    if not verify and (server_name or ca_file):
        # These keys only serve verification; with it off they would suggest
        # a protection that is not there.
        raise check.fail(
            where,
            "server_name and ca_file have no effect with insecure_skip_verify = true;"
            " remove one or the other",
        )

    # Limits.
    methods = path_prefix = None
    if "methods" in table:
        methods = _methods(check, f"{where}.methods", table["methods"])
    if "path_prefix" in table:
        prefix_key = f"{where}.path_prefix"
        path_prefix = check.parsed(prefix_key, _path_prefix, table["path_prefix"])
    max_concurrent = 64
    if "max_concurrent" in table:
        key = f"{where}.max_concurrent"
        max_concurrent = check.typed(key, table["max_concurrent"], int)
        if not 1 <= max_concurrent <= 1024:
            raise check.fail(key, f"must be 1-1024, got {max_concurrent}")
    timeout = 55.0
    if "timeout" in table:
        timeout = _number(check, f"{where}.timeout", table["timeout"], 0, 3600)

    tls = TLSSettings(
        verify=verify, server_name=server_name, ca_file=ca_file, pin_sha256=pin
    )
    return Target(
        name=name,
        host=host,
        port=port,
        tls=tls,
        methods=methods,
        path_prefix=path_prefix,
        max_concurrent=max_concurrent,
        timeout=float(timeout),
    )


@attrs.frozen
class _Parsed:
    """What the schema check extracts from a file, before any other I/O."""

    #: The service_id itself (str), or the file that holds it (Path).
    service_id: str | pathlib.Path = attrs.field(repr=False)
    state_dir: pathlib.Path
    hub: str
    proxy: str | None = attrs.field(repr=False)
    hub_ca_file: pathlib.Path | None
    hub_pin_sha256: bytes | None
    targets: dict[str, Target]


def _parse(check: _Checker, data: dict[str, Any]) -> _Parsed:
    """Check *data* (as tomllib gives it) against the schema."""
    check.keys("", data, _TOP_KEYS)

    if ("service_id" in data) == ("service_id_file" in data):
        raise check.fail("", "set exactly one of service_id and service_id_file")
    service_id: str | pathlib.Path
    if "service_id" in data:
        service_id = check.parsed("service_id", validate_service_id, data["service_id"])
    else:
        service_id = check.path("service_id_file", data["service_id_file"])

    if "hub" not in data:
        raise check.fail("", 'missing hub = "wss://..." (the hub\'s agent URL)')
    hub = _hub(check, data["hub"])
    proxy = _proxy(check, data["proxy"]) if "proxy" in data else None
    state_dir = check.path("state_dir", data.get("state_dir", "run"))
    hub_ca_file = hub_pin = None
    if "hub_ca_file" in data:
        hub_ca_file = check.path("hub_ca_file", data["hub_ca_file"])
    if "hub_pin_sha256" in data:
        hub_pin = check.parsed("hub_pin_sha256", parse_pin, data["hub_pin_sha256"])

    tables = check.typed("target", data.get("target", {}), dict)
    targets = {name: _target(check, name, table) for name, table in tables.items()}
    return _Parsed(
        service_id=service_id,
        state_dir=state_dir,
        hub=hub,
        proxy=proxy,
        hub_ca_file=hub_ca_file,
        hub_pin_sha256=hub_pin,
        targets=targets,
    )


def _loads(check: _Checker, raw: bytes) -> dict[str, Any]:
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise check.fail("", "not valid UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise check.fail("", f"not valid TOML: {exc}") from None


def _read(path: pathlib.Path) -> tuple[bytes, os.stat_result]:
    """Read a config file whole, with the status of what was read."""
    file = os.fspath(path)
    try:
        with open(path, "rb") as stream:
            return stream.read(), os.fstat(stream.fileno())
    except FileNotFoundError:
        raise ConfigError(
            f"{file}: no such config file; create it with service_id (or"
            " service_id_file) and hub as docs/configuration.md shows, or point"
            f" --config or {CONFIG_ENV} at another file"
        ) from None
    except OSError as exc:
        raise _os_error(file, "read it", exc) from None


def _checker(path: pathlib.Path) -> _Checker:
    return _Checker(os.fspath(path), path.absolute().parent)


@attrs.frozen
class AgentConfig:
    """The agent's configuration, loaded and checked from connect.toml.

    ``service_id`` and ``proxy`` are secret-bearing and kept out of the
    repr. Paths are absolute, resolved from the file's directory. Build it
    with :meth:`load`; the constructor checks nothing.
    """

    #: The file the configuration was loaded from.
    path: pathlib.Path
    #: The service's shared secret (32 characters of base32).
    service_id: str = attrs.field(repr=False)
    #: The agent's state directory (see :func:`ensure_state_dir`).
    state_dir: pathlib.Path
    #: The hub's agent endpoint, ws:// only to a loopback host.
    hub: str
    #: The HTTP proxy URL, possibly with a password.
    proxy: str | None = attrs.field(default=None, repr=False)
    #: CAs to trust for the hub instead of the system's.
    hub_ca_file: pathlib.Path | None = None
    #: SHA-256 of the hub certificate's SubjectPublicKeyInfo.
    hub_pin_sha256: bytes | None = None
    #: The declared targets by name, in file order; read-only.
    targets: Mapping[str, Target] = attrs.field(
        factory=lambda: types.MappingProxyType({})
    )

    @classmethod
    def default_path(cls) -> pathlib.Path:
        """``$TRUSTELEM_CONNECT_CONFIG`` if set and not empty, else
        ``connect.toml`` in the working directory."""
        return pathlib.Path(os.environ.get(CONFIG_ENV) or "connect.toml")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AgentConfig:
        """Read, check and return the configuration in *path*.

        Beyond the schema, this reads the service_id file when there is one,
        checks that whichever file holds the service_id is private, and that
        the CA files exist. Raises ConfigError with a one-line message.
        """
        path = pathlib.Path(path)
        check = _checker(path)
        raw, info = _read(path)
        parsed = _parse(check, _loads(check, raw))

        service_id = parsed.service_id
        if isinstance(service_id, pathlib.Path):
            secret_file = _checker(service_id)
            service_id = secret_file.parsed(
                "service_id", validate_service_id, read_secret_file(service_id)
            )
        elif stat.S_IMODE(info.st_mode) & 0o077:
            raise check.fail(
                "",
                "holds service_id but is accessible to group or others"
                f" (mode {stat.S_IMODE(info.st_mode):04o}); fix with:"
                f" chmod 600 {shlex.quote(check.file)}, or move the secret to"
                " service_id_file",
            )

        ca_files = [("hub_ca_file", parsed.hub_ca_file)] + [
            (f"{_target_key(t.name)}.ca_file", t.tls.ca_file)
            for t in parsed.targets.values()
        ]
        for key, ca_file in ca_files:
            if ca_file is not None and not ca_file.is_file():
                raise check.fail(key, f"no such file: {ca_file}")

        return cls(
            path=path,
            service_id=service_id,
            state_dir=parsed.state_dir,
            hub=parsed.hub,
            proxy=parsed.proxy,
            hub_ca_file=parsed.hub_ca_file,
            hub_pin_sha256=parsed.hub_pin_sha256,
            targets=types.MappingProxyType(parsed.targets),
        )


# --------------------------------------------------------------------------
# Re-exports

#: Names that load their module on first use: name -> module. Editing
#: imports this module, so importing it from here eagerly would be a cycle.
_LAZY = {
    "list_targets": "._config_edit",
    "remove_target": "._config_edit",
    "set_target": "._config_edit",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __package__), name)
    globals()[name] = value
    return value


__all__ = [
    "CONFIG_ENV",
    "AgentConfig",
    "ensure_state_dir",
    "list_targets",
    "parse_pin",
    "read_secret_file",
    "redact_url",
    "remove_target",
    "set_target",
    "write_secret_file",
]
