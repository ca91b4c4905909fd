"""The head rules of the forwarder, checked without any socket."""

from __future__ import annotations

import h11
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from support.forwarding import request

from trustelem_relay._forward_http import (
    HOP_BY_HOP,
    announcement,
    content_length,
    encode_request_head,
    host_of,
    plain_response_head,
    relayed_response_headers,
    request_headers,
)

FRAMING = (b"host", b"content-length", b"transfer-encoding", b"expect")

names = st.one_of(
    st.sampled_from(sorted(HOP_BY_HOP) + list(FRAMING)),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12).map(
        str.encode
    ),
)
values = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20
).map(str.encode)


@given(
    st.lists(st.tuples(names, values), max_size=12),
    st.integers(0, 5000),
    st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]),
    st.booleans(),
)
def test_request_headers_carry_one_framing_written_by_the_relay(
    headers: list[tuple[bytes, bytes]], length: int, method: str, keep_alive: bool
) -> None:
    head = request(method, headers=tuple(headers))
    built = request_headers(head, length, keep_alive=keep_alive)
    built_names = [name for name, _ in built]

    assert built[0] == (b"host", b"scim.corp.test")
    assert built_names.count(b"host") == 1
    with_body = length > 0 or method in ("POST", "PUT", "PATCH")
    expected_length = [b"%d" % length] if with_body else []
    assert [v for n, v in built if n == b"content-length"] == expected_length
    assert [v for n, v in built if n == b"connection"] == (
        [] if keep_alive else [b"close"]
    )
    assert b"transfer-encoding" not in built_names
    assert b"expect" not in built_names
    assert not set(built_names) & (HOP_BY_HOP - {b"connection"})

    # Everything else passes through, in order, values untouched.
    named = {
        token.strip().lower()
        for name, value in headers
        if name == b"connection"
        for token in value.split(b",")
    }
    passed = [
        (name, value)
        for name, value in headers
        if name not in HOP_BY_HOP and name not in FRAMING and name not in named
    ]
    ours = {b"host", b"content-length", b"connection"}
    assert [(n, v) for n, v in built if n not in ours] == passed


@given(
    st.lists(st.tuples(names, values), max_size=12),
    st.integers(0, 5000),
    st.sampled_from(["GET", "POST", "HEAD", "M-SEARCH"]),
    st.sampled_from(["/", "/scim/v2/Users?filter=userName%20eq%20%22a%22"]),
    st.booleans(),
)
def test_request_head_is_encoded_as_h11_would_write_it(
    headers: list[tuple[bytes, bytes]],
    length: int,
    method: str,
    path: str,
    keep_alive: bool,
) -> None:
    head = request(method, path, headers=tuple(headers))
    built = request_headers(head, length, keep_alive=keep_alive)

    client = h11.Connection(our_role=h11.CLIENT)
    written = client.send(h11.Request(method=method, target=path, headers=list(built)))
    assert encode_request_head(method, path, built) == written


def test_request_header_names_are_lowered_and_values_trimmed() -> None:
    head = request(headers=((b"X-Custom", b"  spaced value\t"),))
    built = request_headers(head, 0, keep_alive=True)

    assert built == ((b"host", b"scim.corp.test"), (b"x-custom", b"spaced value"))


@pytest.mark.parametrize(
    ("value", "allowed"),
    [
        (b"a b\tc", True),
        (b"\x80\xff", True),  # obs-text passes, as in h11
        (b"a\rb", False),
        (b"a\nb", False),
        (b"a\x00b", False),
        (b"a\x0bb", False),
    ],
)
def test_request_header_values_with_control_characters_are_refused(
    value: bytes, allowed: bool
) -> None:
    head = request(headers=((b"authorization", value),))
    if allowed:
        request_headers(head, 0, keep_alive=True)
        return
    with pytest.raises(ValueError, match="authorization") as caught:
        request_headers(head, 0, keep_alive=True)
    assert repr(value)[2:-1] not in str(caught.value)


def test_response_headers_lose_hop_by_hop_and_framing() -> None:
    headers = [
        (b"connection", b"x-hop , keep-alive"),
        (b"x-hop", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"content-length", b"12"),
        (b"transfer-encoding", b"chunked"),
        (b"etag", b'W/"1"'),
        (b"set-cookie", b"a=b"),
    ]
    assert relayed_response_headers(headers) == (
        (b"etag", b'W/"1"'),
        (b"set-cookie", b"a=b"),
    )


def test_content_length_is_read_from_validated_headers() -> None:
    assert content_length([(b"etag", b"x"), (b"content-length", b"42")]) == 42
    assert content_length([(b"etag", b"x")]) is None


@pytest.mark.parametrize(
    ("authority", "host"),
    [
        ("scim.corp.test", "scim.corp.test"),
        ("scim.corp.test:8443", "scim.corp.test"),
        ("10.0.0.12:443", "10.0.0.12"),
        ("[::1]:443", "::1"),
        ("[2001:db8::5]", "2001:db8::5"),
    ],
)
def test_host_of_authority_drops_port_and_brackets(authority: str, host: str) -> None:
    assert host_of(authority) == host


# --------------------------------------------------------------------------
# Plain answers: read without h11, exactly as h11 reads them


def _read_by_h11(
    data: bytes, *, keep_alive: bool = True
) -> tuple[h11.Connection, object]:
    conn = h11.Connection(our_role=h11.CLIENT)
    conn.send(announcement("GET", keep_alive=keep_alive))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    return conn, conn.next_event()


# Bytes that sit at the edges of the two grammars.
_EDGY = b"aZ09-!~:; ,\t\x00\x01\x0b\x7f\x80\xff\r\n"
edgy_bytes = st.binary(max_size=12).map(
    lambda raw: bytes(_EDGY[byte % len(_EDGY)] for byte in raw)
)
reasons = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12
).map(lambda reason: b" " + reason.encode())
plain_status_lines = st.builds(
    lambda code, reason: b"HTTP/1.1 %d%s" % (code, reason),
    st.integers(200, 599),
    st.one_of(st.just(b""), st.just(b" "), reasons),
)
odd_status_lines = st.one_of(
    st.builds(
        lambda version, code, reason: b"HTTP/%s %03d%s" % (version, code, reason),
        st.sampled_from([b"1.1", b"1.0", b"2.0"]),
        st.integers(100, 999),
        st.one_of(st.just(b""), edgy_bytes.map(lambda reason: b" " + reason)),
    ),
    edgy_bytes,
)
#: Mostly plain status lines (hypothesis draws the low picks most).
status_lines = st.integers(0, 9).flatmap(
    lambda pick: plain_status_lines if pick < 8 else odd_status_lines
)
plain_fields = st.builds(
    lambda name, sep, value: name + sep + value,
    names.filter(lambda name: name not in (b"content-length", b"transfer-encoding")),
    st.sampled_from([b": ", b":", b":\t", b": \t "]),
    values,
)
odd_fields = st.one_of(
    st.builds(
        lambda name, sep, value: name + sep + value,
        st.sampled_from([b"Content-Length", b"Connection", b"Transfer-Encoding"]),
        st.sampled_from([b": ", b" : "]),
        st.one_of(
            st.sampled_from(
                [b"close", b"Keep-Alive, CLOSE", b"chunked", b"12, 12", b" 7 "]
            ),
            st.integers(0, 10**21).map(b"%d".__mod__),
        ),
    ),
    edgy_bytes,
    edgy_bytes.map(lambda line: b" " + line),
)
#: Mostly plain fields, and now and then one at the edges.
field_lines = st.lists(plain_fields, max_size=6).flatmap(
    lambda fields: st.integers(0, 3).flatmap(
        lambda pick: (
            st.just(fields)
            if pick < 3
            else st.tuples(st.integers(0, len(fields)), odd_fields).map(
                lambda odd: [*fields[: odd[0]], odd[1], *fields[odd[0] :]]
            )
        )
    )
)


@settings(max_examples=400)
@given(
    status_lines,
    field_lines,
    st.integers(0, 40),
    st.integers(0, 9).map(lambda pick: b"\n" if pick == 9 else b"\r\n"),
    st.binary(max_size=40),
)
def test_a_plain_head_is_read_as_h11_reads_it(
    status_line: bytes,
    fields: list[bytes],
    length: int,
    newline: bytes,
    rest: bytes,
) -> None:
    fields = [*fields, b"content-length: %d" % length]
    data = newline.join([status_line, *fields]) + newline + newline + rest
    plain = plain_response_head(data)
    event(f"plain: {plain is not None}")
    if plain is None:
        return  # h11's to read or refuse, as before
    conn, response = _read_by_h11(data)
    assert type(response) is h11.Response
    assert response.status_code == plain.status
    assert response.reason == plain.reason
    assert list(response.headers) == plain.headers
    assert content_length(plain.headers) == plain.length
    assert conn.trailing_data == (data[plain.body_start :], False)
    # h11 turns its own side to MUST_CLOSE when the answer asks to close.
    assert (conn.our_state is h11.DONE) == plain.keep_alive


def test_common_answers_are_plain() -> None:
    origin = (
        b"HTTP/1.1 200 \r\ncontent-type: application/json\r\n"
        b"content-length: 2\r\n\r\n{}"
    )
    plain = plain_response_head(origin)
    assert plain == (
        200,
        b"",
        [(b"content-type", b"application/json"), (b"content-length", b"2")],
        2,
        True,
        len(origin) - 2,
    )
    created = (
        b"HTTP/1.1 201 Created\r\nLocation: /Users/1\r\nConnection: Close\r\n"
        b"Content-Length:  0 \r\n\r\n"
    )
    plain = plain_response_head(created)
    assert plain is not None
    assert (plain.status, plain.reason, plain.length) == (201, b"Created", 0)
    assert plain.headers[0] == (b"location", b"/Users/1")
    assert plain.keep_alive is False


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n",  # head not whole yet
        b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\ncontent-length: 2\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\ncontent-length: 2\r\n\r\n",
        b"HTTP/1.1 600 Odd\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\n\r\nread until the close",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: 1234567890123456789\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx-a: b\r\n c\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok",
        b"HTTP/1.1 200 OK\r\nx-a: b\x01c\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nx a: b\r\ncontent-length: 2\r\n\r\nok",
    ],
)
def test_other_answers_are_left_to_h11(data: bytes) -> None:
    assert plain_response_head(data) is None
