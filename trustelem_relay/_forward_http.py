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

Most answers are plain: HTTP/1.1, a final status, one ``Content-Length``,
the whole head in the first read. :func:`plain_response_head` reads such a
head by a grammar narrower than h11's, and declines (returns None) anything
else, which h11 then reads: what it accepts, h11 reads the same way (a
property test holds it to that), in about a third of the time, and without
an h11 state machine per request.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import NamedTuple

import h11

from ._events import Headers, RequestHead

__all__ = [
    "NO_BODY_STATUSES",
    "PlainResponseHead",
    "announcement",
    "content_length",
    "encode_request_head",
    "host_of",
    "plain_response_head",
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

# A plain answer's lines, narrower than h11's: HTTP/1.1 only; visible
# ASCII, obs-text, spaces and tabs only (h11 also lets other control bytes
# through); each name a token, so a folded line (it starts with a space) is
# declined too.
_PLAIN_STATUS_LINE = re.compile(
    rb"HTTP/1\.1 ([2-5][0-9][0-9])(?: ([ \t\x21-\x7e\x80-\xff]*))?"
)
_PLAIN_FIELD = re.compile(
    rb"([-!#$%&'*+.^_`|~0-9A-Za-z]+):[ \t]*"
    rb"((?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?)[ \t]*"
)
#: Longest Content-Length read here; h11 takes up to 20 digits.
_PLAIN_LENGTH_DIGITS = 18
#: Final answers that have no body whatever they declare.
NO_BODY_STATUSES = frozenset({204, 304})


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


class PlainResponseHead(NamedTuple):
    """A plain answer's head, as h11 would have read it."""

    status: int
    reason: bytes
    #: Every header, names in lower case, values without surrounding spaces.
    headers: list[tuple[bytes, bytes]]
    #: The body's length, from its one ``Content-Length``.
    length: int
    #: False when the answer asks to close the connection.
    keep_alive: bool
    #: Where the body starts in the bytes read.
    body_start: int


def plain_response_head(data: bytes) -> PlainResponseHead | None:
    """Read a plain answer's head at the start of *data*, or decline.

    Plain: the head is whole in *data* and ends every line with CRLF;
    HTTP/1.1 and a status from 200 to 599 but 204 and 304; a body framed
    by exactly one ``Content-Length`` of at most 18 digits and no
    ``Transfer-Encoding``; only visible ASCII, obs-text, spaces and tabs;
    no folded lines. The caller declines by itself a request whose method
    makes the answer bodiless (HEAD, CONNECT). For anything else this
    returns None, and the head is h11's to read, or to refuse.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    status_line = _PLAIN_STATUS_LINE.fullmatch(lines[0])
    if status_line is None:
        return None
    status = int(status_line[1])
    if status in NO_BODY_STATUSES:
        return None
    headers: list[tuple[bytes, bytes]] = []
    length: bytes | None = None
    keep_alive = True
    for line in lines[1:]:
        field = _PLAIN_FIELD.fullmatch(line)
        if field is None:
            return None
        name, value = field[1].lower(), field[2]
        if name == b"content-length":
            if length is not None or not value.isdigit():
                return None
            length = value
        elif name == b"transfer-encoding":
            return None
        elif name == b"connection" and b"close" in _comma_tokens(value):
            keep_alive = False
        headers.append((name, value))
    if length is None or len(length) > _PLAIN_LENGTH_DIGITS:
        return None
    return PlainResponseHead(
        status=status,
        reason=status_line[2] or b"",
        headers=headers,
        length=int(length),
        keep_alive=keep_alive,
        body_start=end + 4,
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
            tokens.update(_comma_tokens(value))
    tokens.discard(b"")
    return frozenset(tokens)


def _comma_tokens(value: bytes) -> list[bytes]:
    """The items of a comma-separated header value, trimmed, in lower case."""
    return [token.strip().lower() for token in value.split(b",")]


@functools.lru_cache(maxsize=64)
def announcement(method: str, *, keep_alive: bool) -> h11.Request:
    """What h11 is told of a request whose bytes the relay wrote itself.

    h11's state machine acts on the method (HEAD and CONNECT change how the
    answer is read) and on ``Connection: close``; ``request_headers`` has
    dropped every other header h11 acts on (``Expect``, ``Upgrade``,
    ``Transfer-Encoding``). The body needs no help from h11: the relay
    writes it after the head, framed by the ``Content-Length`` it wrote. So
    a request with the same method and connection handling, no body and a
    placeholder target and host, leaves h11 in the state the real one
    would. It saves validating and encoding the head a second time, and is
    built once per method.
    """
    headers = [(b"host", b"target")]
    if not keep_alive:
        headers.append((b"connection", b"close"))
    return h11.Request(method=method, target="/", headers=headers)
