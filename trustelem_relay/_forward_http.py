"""The HTTP/1.1 rules the forwarder applies to heads, with no I/O.

A relay that passes framing headers through lets one end frame a message
differently from how the other reads it (request smuggling), and one that
passes connection-level headers through lets a client steer the relay's
own connection. So the forwarder rebuilds both heads here:

* Outgoing request: the hop-by-hop headers of RFC 9110 section 7.6.1 are
  dropped, with every header the request's ``Connection`` names; so are
  ``Host``, ``Content-Length`` and ``Expect``, which the relay writes itself
  (the relay sends the body at once, or as it arrives, so there is nothing
  to wait for). Then come ``Host`` from the URL's authority, exactly one
  ``Content-Length`` when there is a body or the method carries one, and
  ``Connection: close`` unless the connection is to be kept.
* Relayed response: hop-by-hop headers likewise, and ``Content-Length`` and
  ``Transfer-Encoding``, since the relay frames the body itself.

Before anything is built, the request is checked against the grammar
(method a token, path in origin form of visible ASCII, authority a plain
``host[:port]``, names tokens, values free of CR, LF, NUL and other control
spaces). These checks mirror h11's own, so that h11 never has to refuse a
head: h11's messages quote the offending value, which may be a credential.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ._events import Headers, RequestHead

__all__ = [
    "content_length",
    "encode_request_head",
    "host_of",
    "relayed_response_headers",
    "request_headers",
]

#: Headers that describe one connection rather than the message (RFC 9110
#: section 7.6.1), plus the legacy ``proxy-connection``. Never relayed.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

#: Request headers the relay always writes itself; incoming copies go.
_SET_BY_US = frozenset({b"host", b"content-length", b"expect"})

#: Response headers dropped because the relay frames the body itself.
_REFRAMED = frozenset({b"content-length", b"transfer-encoding"})

#: Methods whose requests carry a body, so they get ``Content-Length: 0``
#: even when it is empty; other methods get one only with a body.
_METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})

# The grammar of RFC 9110 and 9112, as h11 applies it.
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")
_ORIGIN_FORM = re.compile(rb"/[\x21-\x7e]*")
_AUTHORITY = re.compile(
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[-A-Za-z0-9._~!$&'()*+,;=%]+)(?::[0-9]{1,5})?"
)


def request_headers(
    head: RequestHead, body_length: int, *, keep_alive: bool
) -> Headers:
    """The headers to send for *head*: its end-to-end ones, then ours.

    Raises ValueError with a reason that names a field but never quotes a
    header value, when the head cannot be written as HTTP/1.1.
    """
    if not (head.method.isascii() and _TOKEN.fullmatch(head.method.encode())):
        raise ValueError("the method is not an HTTP token")
    if not (head.path.isascii() and _ORIGIN_FORM.fullmatch(head.path.encode())):
        raise ValueError("the path must start with '/' and hold only visible ASCII")
    if _AUTHORITY.fullmatch(head.authority) is None:
        raise ValueError("the URL's authority is not a valid host[:port]")

    named = _connection_tokens(head.headers)
    kept: list[tuple[bytes, bytes]] = [(b"host", head.authority.encode("ascii"))]
    for raw_name, raw_value in head.headers:
        name = raw_name.lower()
        if not _TOKEN.fullmatch(name):
            raise ValueError("a header name is not an HTTP token")
        value = raw_value.strip(b" \t")
        if not _FIELD_VALUE.fullmatch(value):
            raise ValueError(
                f"the value of header {name.decode('ascii')!r} holds a forbidden "
                "character (CR, LF, NUL or another control space)"
            )
        if name not in HOP_BY_HOP and name not in _SET_BY_US and name not in named:
            kept.append((name, value))

    if body_length or head.method in _METHODS_WITH_BODY:
        kept.append((b"content-length", b"%d" % body_length))
    if not keep_alive:
        kept.append((b"connection", b"close"))
    return tuple(kept)


def encode_request_head(method: str, path: str, headers: Headers) -> bytes:
    """The request line and *headers* from :func:`request_headers`, as bytes.

    Laid out as h11 writes a request: ``Host`` (already first), then the
    other headers in order, each as ``name: value``. Nothing is checked
    here: :func:`request_headers` has checked every part against the
    grammar.
    """
    lines = [b"%s %s HTTP/1.1\r\n" % (method.encode(), path.encode())]
    lines += [b"%s: %s\r\n" % field for field in headers]
    lines.append(b"\r\n")
    return b"".join(lines)


def relayed_response_headers(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """The target's response headers (lower-case names) as the relay sends them."""
    headers = tuple(headers)
    named = _connection_tokens(headers)
    return tuple(
        (name, value)
        for name, value in headers
        if name not in HOP_BY_HOP and name not in _REFRAMED and name not in named
    )


def content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The declared length of a response h11 has validated (so one number)."""
    for name, value in headers:
        if name == b"content-length":
            return int(value)
    return None


def host_of(authority: str) -> str:
    """The host part of ``host[:port]`` or ``[v6]:port``, brackets removed."""
    match = _AUTHORITY.fullmatch(authority)
    host = match.group("host") if match else authority
    return host[1:-1] if host.startswith("[") else host


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Header names listed in ``Connection``: hop-by-hop for this message."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(token.strip().lower() for token in value.split(b","))
    tokens.discard(b"")
    return frozenset(tokens)
