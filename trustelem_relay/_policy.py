"""Target policy: which requests the agent may forward, and where to.

Theory of operation
-------------------

The operator declares *targets* on the agent's machine: a name, the one
address the agent may dial for it, TLS settings and optional limits on
methods and paths. The hub names a target in every request; it never gives
an address. :func:`decide` is the single gate every request head passes
before anything touches the network. It answers with the :class:`Target` to
dial, or with a :class:`Refusal` that carries the error code to send back.

The rules, in the order they are checked:

1. The name must equal a declared name exactly, compared as Python strings.
   Nothing is normalised: no case folding, no trailing-dot stripping, no
   Unicode normalisation. A look-alike name is a different name, so it is
   refused with ``UNDECLARED_TARGET``. Target names are restricted to
   ``[a-z0-9-]`` (see :func:`parse_target_name`), which leaves no room for
   look-alikes among declared names in the first place.
2. The scheme must be ``http`` or ``https``.
3. The method must be an HTTP token and, when the target restricts methods,
   one of them (methods are case-sensitive in HTTP, so ``get`` is not GET).
4. The authority (the URL's ``host[:port]``) is only used for the Host
   header and for TLS verification, never for dialling, but it must still be
   plain: no userinfo, no whitespace or control characters, a sane host and
   port.
5. The path must be in origin form (start with ``/``) and contain only
   visible ASCII. When the target has a ``path_prefix`` the path must lie
   inside it segment-wise (``/scim`` admits ``/scim`` and ``/scim/x``, not
   ``/scimx``), and no segment may be ``.`` or ``..``, however it is
   percent-encoded, so ``/scim/../admin`` cannot climb out.

Everything here is pure: no I/O, no DNS, no clock. A failed rule 2-5 gives
``REFUSED_BY_POLICY``. Refusals are one sentence and never echo more than a
short, escaped excerpt of what the hub sent.
"""

from __future__ import annotations

import functools
import ipaddress
import pathlib
import re
from collections.abc import Mapping
from urllib.parse import unquote

import attrs

from ._errors import ConfigError, RequestError, StreamErrorCode, error_for_code
from ._events import RequestHead

#: What a target name may look like: a DNS label in lower case.
TARGET_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")

# A host name label as resolvers accept it. Underscores are tolerated
# because internal zones use them, even though they are not valid in
# host names strictly speaking.
_LABEL_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")

#: A method in a target's allow-list: upper case, as it travels on the
#: wire (methods are case-sensitive), e.g. GET or M-SEARCH.
METHOD_NAME_RE = re.compile(r"[A-Z][A-Z0-9_-]{0,31}")

# Any method a request may carry: an RFC 9110 token, bounded in length.
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")

# Visible ASCII without space: what may appear in a request target.
_VISIBLE_RE = re.compile(r"[\x21-\x7e]*")

# How many rounds of percent-decoding a path segment may need before it is
# stable. Anything encoded more deeply than this is refused outright.
_MAX_DECODE_ROUNDS = 3


def _excerpt(value: object) -> str:
    """Show a value in a message: escaped to ASCII, on one line, short."""
    text = ascii(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return text


# --------------------------------------------------------------------------
# Names, hosts and addresses


def parse_target_name(name: str) -> str:
    """Return *name* if it is a valid target name, else raise ConfigError.

    A target name is 1-63 characters of lower-case ASCII letters, digits and
    hyphens, starting and ending with a letter or digit: a DNS label in
    lower case. Underscores and upper case are not allowed, so no two valid
    names differ only in case or in ``-`` versus ``_``.
    """
    if not isinstance(name, str) or not TARGET_NAME_RE.fullmatch(name):
        raise ConfigError(
            f"invalid target name {_excerpt(name)}: use 1-63 lower-case letters,"
            " digits and hyphens, starting and ending with a letter or digit"
        )
    return name


def _host_problem(host: str) -> str | None:
    """Say what is wrong with *host* (IP literal without brackets, or DNS
    name), or return None when it is acceptable."""
    if not host:
        return "host is empty"
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"{_excerpt(host)} is not a valid IPv6 address"
        if "%" in host:
            return "IPv6 zone ids are not supported"
        return None
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if labels[-1].isdigit():
        # A name ending in a number can only be an IPv4 address; insisting
        # on the strict dotted-quad form rules out 010.0.0.1 and friends.
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            return f"{_excerpt(host)} is not a valid IPv4 address"
        return None
    if len(name) > 253 or not all(_LABEL_RE.fullmatch(label) for label in labels):
        return f"{_excerpt(host)} is not a valid host name"
    return None


def _port_problem(text: str) -> str | None:
    """Say what is wrong with a port given as text, or return None."""
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        return f"port must be a number 1-65535, got {_excerpt(text)}"
    if not 1 <= int(text) <= 65535:
        return f"port must be 1-65535, got {int(text)}"
    return None


def _split_host_port(text: str) -> tuple[str, str | None]:
    """Split ``host[:port]`` or ``[v6][:port]``; the port is None if absent.

    Raises ValueError with the reason when brackets are misused.
    """
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError("missing ']' after the IPv6 address")
        if ":" not in host:
            raise ValueError("brackets are only for IPv6 addresses")
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ValueError("expected ':' and a port after ']'")
        return host, rest[1:]
    if text.count(":") > 1:
        raise ValueError("write IPv6 addresses in brackets, like [::1]:443")
    host, colon, port = text.partition(":")
    return host, (port if colon else None)


def parse_addr(text: str) -> tuple[str, int]:
    """Parse a declared address: ``host:port`` or ``[ipv6]:port``.

    Returns the host (without brackets) and the port. The port is required
    and must be 1-65535; the host must be an IP literal or a DNS name.
    Raises ConfigError with a one-line reason otherwise.
    """
    if not isinstance(text, str):
        raise ConfigError(f"expected a string like 'host:port', got {_excerpt(text)}")
    if not text:
        raise ConfigError("address is empty; expected 'host:port'")
    if not _VISIBLE_RE.fullmatch(text):
        raise ConfigError(
            f"address {_excerpt(text)} contains spaces, control or non-ASCII characters"
        )
    if "/" in text or "@" in text:
        raise ConfigError(
            f"expected 'host:port' without scheme, path or user, got {_excerpt(text)}"
        )
    try:
        host, port = _split_host_port(text)
    except ValueError as exc:
        raise ConfigError(f"{exc}, got {_excerpt(text)}") from None
    if port is None:
        raise ConfigError(f"missing port, expected 'host:port', got {_excerpt(text)}")
    problem = _host_problem(host) or _port_problem(port)
    if problem:
        raise ConfigError(problem)
    return host, int(port)


def parse_host(text: str) -> str:
    """Validate a bare host (IP literal or DNS name, no port); return it."""
    if not isinstance(text, str) or not _VISIBLE_RE.fullmatch(text):
        raise ConfigError(f"expected a host name or IP address, got {_excerpt(text)}")
    problem = _host_problem(text)
    if problem:
        raise ConfigError(problem)
    return text


@functools.lru_cache(maxsize=256)
def _authority_problem(authority: str) -> str | None:
    """Say what is wrong with a request's ``host[:port]``, or return None.

    Cached: a pure function of the string, and an agent sees the same few
    authorities on every request (parsing an IP address costs microseconds).
    The hub may send any string, so the cache is bounded.
    """
    if not authority or len(authority) > 261:
        return "the authority is empty or too long"
    if not _VISIBLE_RE.fullmatch(authority):
        return "the authority contains spaces, control or non-ASCII characters"
    if any(char in authority for char in "@/\\?#"):
        return "the authority may only be host[:port]"
    try:
        host, port = _split_host_port(authority)
    except ValueError:
        return "the authority is not a valid host[:port]"
    if _host_problem(host) or (port is not None and _port_problem(port)):
        return "the authority is not a valid host[:port]"
    return None


# --------------------------------------------------------------------------
# Targets


@attrs.frozen
class TLSSettings:
    """How the agent checks a target's certificate when the scheme is https.

    Verification against the system CAs (or ``ca_file``) and the URL's host
    (or ``server_name``) is on unless ``verify`` is False, which only the
    loud ``insecure_skip_verify = true`` key produces. ``pin_sha256``, when
    set, is checked in addition to verification; with verification off it
    is the only check made.
    """

    #: Verify the certificate chain and host name.
    verify: bool = True
    #: The name to verify (and send as SNI) instead of the URL's host.
    server_name: str | None = None
    #: A PEM bundle of CAs to trust instead of the system's.
    ca_file: pathlib.Path | None = None
    #: SHA-256 of the server certificate's SubjectPublicKeyInfo (DER).
    pin_sha256: bytes | None = None

    def __attrs_post_init__(self) -> None:
        if self.pin_sha256 is not None and len(self.pin_sha256) != 32:
            raise ConfigError("pin_sha256 must be exactly 32 bytes")


@attrs.frozen
class Target:
    """A declared target: the only address a name may lead to, and limits.

    Invariants, checked on construction: ``name`` is a valid target name,
    ``port`` is 1-65535, ``methods`` (when not None) are upper-case method
    names, ``path_prefix`` (when set) starts with ``/``, ``max_concurrent``
    is 1-1024 and ``timeout`` is positive.
    """

    name: str
    #: IP literal (no brackets) or DNS name, dialled as is.
    host: str
    port: int
    tls: TLSSettings = TLSSettings()
    #: The methods allowed, upper case; None allows any method.
    methods: frozenset[str] | None = None
    #: The path every request must lie inside (segment-wise); None for any.
    path_prefix: str | None = None
    #: Requests in flight to this target at once; the rest are refused.
    max_concurrent: int = 64
    #: Seconds allowed for a whole request to this target.
    timeout: float = 55.0

    def __attrs_post_init__(self) -> None:
        parse_target_name(self.name)
        problem = _host_problem(self.host)
        if problem:
            raise ConfigError(f"target {self.name}: {problem}")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"target {self.name}: port must be 1-65535")
        if self.methods is not None and not all(
            METHOD_NAME_RE.fullmatch(method) for method in self.methods
        ):
            raise ConfigError(f"target {self.name}: methods must be upper case")
        if self.path_prefix is not None and not self.path_prefix.startswith("/"):
            raise ConfigError(f"target {self.name}: path_prefix must start with '/'")
        if not 1 <= self.max_concurrent <= 1024:
            raise ConfigError(f"target {self.name}: max_concurrent must be 1-1024")
        if not 0 < self.timeout <= 3600:
            raise ConfigError(f"target {self.name}: timeout must be in (0, 3600]")

    @property
    def addr(self) -> str:
        """The address as written in connect.toml: ``host:port``, with the
        host in brackets when it is an IPv6 address."""
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


# --------------------------------------------------------------------------
# The decision


@attrs.frozen
class Refusal:
    """Why a request may not be forwarded; nothing was dialled."""

    #: UNDECLARED_TARGET or REFUSED_BY_POLICY.
    code: StreamErrorCode
    #: One sentence for the hub's caller; holds no secret.
    message: str

    def error(self, request_id: str | None = None) -> RequestError:
        """The typed error that stands for this refusal (never reached the
        target, so safe to retry once the cause is fixed)."""
        return error_for_code(
            self.code,
            self.message,
            may_have_reached_target=False,
            request_id=request_id,
        )


def _refuse(message: str) -> Refusal:
    return Refusal(StreamErrorCode.REFUSED_BY_POLICY, message)


def _inside_prefix(path: str, prefix: str) -> bool:
    """True when *path* (without query) is *prefix* or below it."""
    base = prefix.rstrip("/")
    return path == base or path.startswith(base + "/")


def _climbs(path: str) -> bool:
    """True when some segment of *path* is a dot segment once decoded, or
    hides a slash or backslash behind percent-encoding.

    Segments are decoded repeatedly, because some servers decode twice;
    path parameters (``..;x``) are cut off because some servers ignore them
    when resolving dot segments.
    """
    for segment in path.split("/"):
        for _ in range(_MAX_DECODE_ROUNDS + 1):
            if segment.split(";", 1)[0] in (".", ".."):
                return True
            decoded = unquote(segment)
            if decoded == segment:
                break
            if "/" in decoded or "\\" in decoded:
                return True
            segment = decoded
        else:
            return True
    return False


def decide(
    targets: Mapping[str, Target], name: str, head: RequestHead
) -> Target | Refusal:
    """Decide whether *head* may be forwarded to the target called *name*.

    Returns the declared :class:`Target` to dial, or a :class:`Refusal`.
    This is the one place that makes the decision; it must be called on
    every request before any DNS lookup or connection. It does no I/O.
    """
    # The name: an exact match, nothing normalised. Checking the target's
    # own name too guards against a mapping that folds keys.
    target = targets.get(name) if type(name) is str else None
    if target is None or target.name != name:
        return Refusal(
            StreamErrorCode.UNDECLARED_TARGET,
            f"No target named {_excerpt(name)} is declared on this agent.",
        )

    if head.scheme not in ("http", "https"):
        return _refuse(f"The scheme {_excerpt(head.scheme)} is not http or https.")

    if not _TOKEN_RE.fullmatch(head.method):
        return _refuse(
            f"The method {_excerpt(head.method)} is not a valid HTTP method."
        )
    if target.methods is not None and head.method not in target.methods:
        allowed = ", ".join(sorted(target.methods))
        return _refuse(
            f"The method {head.method} is not allowed for target {name}"
            f" (allowed: {allowed})."
        )

    problem = _authority_problem(head.authority)
    if problem:
        return _refuse(f"The request was refused: {problem}.")

    path = head.path
    if not path.startswith("/") or not _VISIBLE_RE.fullmatch(path) or "#" in path:
        return _refuse(
            "The request path must start with '/' and contain only visible ASCII"
            " characters."
        )
    if target.path_prefix is not None:
        path_only = path.split("?", 1)[0]
        if _climbs(path_only):
            return _refuse("The request path contains a '.' or '..' segment.")
        if not _inside_prefix(path_only, target.path_prefix):
            return _refuse(
                f"The request path is outside {target.path_prefix!r}, the prefix"
                f" allowed for target {name}."
            )
    return target
