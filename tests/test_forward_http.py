"""The head rules of the forwarder, checked without any socket."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.forwarding import request

from trustelem_relay._forward_http import (
    HOP_BY_HOP,
    content_length,
    encode_request_head,
    host_of,
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
