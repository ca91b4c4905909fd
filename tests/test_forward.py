"""The forwarder against real origin servers on 127.0.0.1.

Every test dials a real socket; the origins (tests/support/origin.py) record
the exact bytes they receive, so header rewriting and framing are checked on
the wire. Timeout tests run on the autojump clock and assert exact virtual
times. HTTPS lives in test_forward_tls.py, connection reuse in
test_forward_pool.py.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Hashable

import attrs
import h11
import pytest
import trio
import trio.testing
from support.forwarding import (
    HOSTNAME,
    RecordingSink,
    phases_without_send_all,
    request,
    target_at,
    times_out_at_the_send_limit,
)
from support.origin import Exchange, Origin, respond, serve_origin, wait_for_close
from support.tls import TlsMaterial

from trustelem_relay import (
    BadGateway,
    RequestError,
    RequestTooLarge,
    ResponseTooLarge,
    StreamProtocolError,
    TargetUnreachable,
    TimeoutAfterSending,
    TimeoutBeforeSending,
)
from trustelem_relay._events import RequestHead, ResponseHead
from trustelem_relay._forward import (
    BODY_READ_SIZE,
    CHUNK_SIZE,
    ConnectionPool,
    ForwardLimits,
    forward,
)
from trustelem_relay._policy import Target

pytestmark = pytest.mark.usefixtures("no_resource_warnings")

TOKEN = b"Bearer s3cr3t-token-that-must-not-leak"


def unused_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def only(origin: Origin) -> Exchange:
    assert len(origin.exchanges) == 1
    return origin.exchanges[0]


def header_lines(raw: bytes) -> list[bytes]:
    """The header lines of a raw request, lower-cased, request line dropped."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    return [line.lower() for line in head.split(b"\r\n")[1:]]


# --------------------------------------------------------------------------
# Where the request goes


async def test_agent_dials_only_the_declared_address() -> None:
    async with serve_origin() as decoy, serve_origin() as origin:
        # The URL names the decoy; the target declares the origin.
        head = request(authority=f"127.0.0.1:{decoy.port}")
        sink = RecordingSink()
        await forward(target_at(origin.port), head, b"", sink)

    assert decoy.connections == 0
    assert only(origin).header(b"host") == [f"127.0.0.1:{decoy.port}".encode()]
    assert sink.head is not None
    assert sink.head.status == 200
    assert sink.body == b"ok"


async def test_url_host_that_does_not_resolve_is_never_looked_up() -> None:
    async with serve_origin() as origin:
        head = request(authority="scim.example.invalid:8443")
        await forward(target_at(origin.port), head, b"", RecordingSink())

    assert only(origin).header(b"host") == [b"scim.example.invalid:8443"]


# --------------------------------------------------------------------------
# The request on the wire


async def test_request_hop_by_hop_headers_are_stripped() -> None:
    headers = (
        (b"connection", b"keep-alive, X-Private-Hop"),
        (b"keep-alive", b"timeout=5"),
        (b"x-private-hop", b"1"),
        (b"proxy-connection", b"keep-alive"),
        (b"proxy-authorization", b"Basic dXNlcjpwYXNz"),
        (b"te", b"trailers"),
        (b"trailer", b"x-checksum"),
        (b"upgrade", b"h2c"),
        (b"expect", b"100-continue"),
        (b"authorization", TOKEN),
        (b"content-type", b"application/scim+json"),
        (b"x-request-id", b"abc"),
    )
    async with serve_origin() as origin:
        head = request("POST", headers=headers)
        await forward(target_at(origin.port), head, b"{}", RecordingSink())

    exchange = only(origin)
    names = [name for name, _ in exchange.request.headers]
    assert names == [
        b"host",
        b"authorization",
        b"content-type",
        b"x-request-id",
        b"content-length",
        b"connection",
    ]
    assert exchange.header(b"authorization") == [TOKEN]
    assert exchange.header(b"connection") == [b"close"]
    assert exchange.body == b"{}"


async def test_exactly_one_content_length_whatever_the_request_claims() -> None:
    headers = (
        (b"transfer-encoding", b"chunked"),
        (b"content-length", b"5"),
        (b"content-length", b"500"),
        (b"host", b"evil.example"),
    )
    async with serve_origin() as origin:
        head = request("PUT", headers=headers)
        await forward(target_at(origin.port), head, b"x" * 42, RecordingSink())

    exchange = only(origin)
    lines = header_lines(exchange.raw)
    assert [line for line in lines if line.startswith(b"content-length")] == [
        b"content-length: 42"
    ]
    assert not [line for line in lines if line.startswith(b"transfer-encoding")]
    assert [line for line in lines if line.startswith(b"host")] == [
        f"host: {HOSTNAME}".encode()
    ]
    assert exchange.raw.endswith(b"\r\n\r\n" + b"x" * 42)


@pytest.mark.parametrize(
    ("method", "body", "expected"),
    [
        ("POST", b"", [b"0"]),
        ("PUT", b"", [b"0"]),
        ("PATCH", b"", [b"0"]),
        ("POST", b"abc", [b"3"]),
        ("GET", b"", []),
        ("DELETE", b"", []),
        ("HEAD", b"", []),
        ("DELETE", b"abcd", [b"4"]),
    ],
)
async def test_content_length_is_set_for_bodies_and_body_methods(
    method: str, body: bytes, expected: list[bytes]
) -> None:
    async with serve_origin() as origin:
        await forward(target_at(origin.port), request(method), body, RecordingSink())

    exchange = only(origin)
    assert exchange.header(b"content-length") == expected
    assert exchange.body == body


async def test_large_request_body_is_written_after_the_head_whole() -> None:
    body = bytes(range(256)) * (CHUNK_SIZE // 128)  # two chunks' worth
    async with serve_origin() as origin:
        await forward(target_at(origin.port), request("PUT"), body, RecordingSink())

    exchange = only(origin)
    assert exchange.header(b"content-length") == [b"%d" % len(body)]
    assert exchange.body == body


@pytest.mark.parametrize(
    ("headers", "path", "authority"),
    [
        (((b"x-evil", b"a\r\nx-injected: 1"),), "/", HOSTNAME),
        (((b"x-evil", b"a\nb"),), "/", HOSTNAME),
        (((b"x-evil", b"a\x00b"),), "/", HOSTNAME),
        (((b"x evil", b"a"),), "/", HOSTNAME),
        ((), "/a b", HOSTNAME),
        ((), "/a\r\nb", HOSTNAME),
        ((), "http://elsewhere/", HOSTNAME),
        ((), "/", "user@host"),
        ((), "/", "host\r\nx: y"),
    ],
)
async def test_malformed_request_is_refused_before_dialling(
    headers: tuple[tuple[bytes, bytes], ...], path: str, authority: str
) -> None:
    async with serve_origin() as origin:
        head = request(path=path, authority=authority, headers=headers)
        with pytest.raises(StreamProtocolError) as caught:
            await forward(target_at(origin.port), head, b"", RecordingSink())

    assert caught.value.may_have_reached_target is False
    assert origin.connections == 0


async def test_oversize_request_body_is_refused_and_nothing_reaches_origin() -> None:
    limits = ForwardLimits(max_request_body=1000)
    async with serve_origin() as origin:
        with pytest.raises(RequestTooLarge) as caught:
            await forward(
                target_at(origin.port),
                request("POST"),
                b"x" * 1001,
                RecordingSink(),
                limits=limits,
                request_id="r-big",
            )

    assert caught.value.may_have_reached_target is False
    assert caught.value.request_id == "r-big"
    assert origin.connections == 0


async def test_oversize_request_head_is_refused_before_dialling() -> None:
    headers = ((b"x-big", b"a" * 2000),)
    async with serve_origin() as origin:
        with pytest.raises(RequestTooLarge):
            await forward(
                target_at(origin.port),
                request(headers=headers),
                b"",
                RecordingSink(),
                limits=ForwardLimits(max_request_head=1024),
            )

    assert origin.connections == 0


# --------------------------------------------------------------------------
# The response


async def test_response_hop_by_hop_and_framing_headers_are_stripped() -> None:
    answer = (
        b"HTTP/1.1 201 Created\r\n"
        b"Connection: close, X-Private-Hop\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"X-Private-Hop: 1\r\n"
        b"Proxy-Authenticate: Basic\r\n"
        b"Proxy-Connection: close\r\n"
        b"Upgrade: h2c\r\n"
        b"Trailer: X-Checksum\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"Content-Type: application/scim+json\r\n"
        b"Location: /scim/v2/Users/1\r\n"
        b"\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: 1\r\n\r\n"
    )
    sink = RecordingSink()
    async with serve_origin(respond(answer)) as origin:
        await forward(target_at(origin.port), request(), b"", sink)

    assert sink.head == ResponseHead(
        status=201,
        headers=(
            (b"content-type", b"application/scim+json"),
            (b"location", b"/scim/v2/Users/1"),
        ),
        reason=b"Created",
    )
    assert sink.body == b"hello world"


async def test_content_length_of_the_response_is_not_relayed() -> None:
    sink = RecordingSink()
    async with serve_origin() as origin:
        await forward(target_at(origin.port), request(), b"", sink)

    assert sink.head is not None
    assert sink.head.headers == ()
    assert sink.body == b"ok"


async def test_redirect_is_relayed_not_followed() -> None:
    async with serve_origin() as elsewhere:
        answer = (
            b"HTTP/1.1 302 Found\r\n"
            b"Location: http://127.0.0.1:%d/next\r\n"
            b"Content-Length: 5\r\n\r\nmoved" % elsewhere.port
        )
        sink = RecordingSink()
        async with serve_origin(respond(answer)) as origin:
            await forward(target_at(origin.port), request(), b"", sink)

    assert elsewhere.connections == 0
    assert origin.connections == 1
    assert sink.head is not None
    assert sink.head.status == 302
    assert (b"location", b"http://127.0.0.1:%d/next" % elsewhere.port) in (
        sink.head.headers
    )
    assert sink.body == b"moved"


async def test_informational_responses_are_skipped() -> None:
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
        b"HTTP/1.1 204 No Content\r\n\r\n"
    )
    sink = RecordingSink()
    async with serve_origin(respond(answer)) as origin:
        await forward(target_at(origin.port), request("DELETE"), b"", sink)

    assert sink.head == ResponseHead(status=204, headers=(), reason=b"No Content")
    assert sink.chunks == []


@pytest.mark.parametrize(
    ("method", "status_line"),
    [
        ("HEAD", b"HTTP/1.1 200 OK"),
        ("GET", b"HTTP/1.1 204 No Content"),
        ("GET", b"HTTP/1.1 304 Not Modified"),
    ],
)
async def test_head_204_and_304_have_no_body(method: str, status_line: bytes) -> None:
    async def answer_and_hold(stream: trio.abc.Stream, exchange: Exchange) -> None:
        # Announces a body that never comes, and keeps the connection open:
        # only knowing that these responses have no body lets forward end.
        await stream.send_all(status_line + b"\r\nContent-Length: 10\r\n\r\n")
        await wait_for_close(stream)

    sink = RecordingSink()
    async with serve_origin(answer_and_hold) as origin:
        with trio.fail_after(5):
            await forward(target_at(origin.port), request(method), b"", sink)

    assert sink.head is not None
    assert sink.chunks == []


async def test_large_body_reaches_the_sink_in_bounded_chunks() -> None:
    body = bytes(range(256)) * 1200  # 300 KiB
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    sink = RecordingSink()
    async with serve_origin(respond(answer)) as origin:
        await forward(target_at(origin.port), request(), b"", sink)

    assert sink.body == body
    assert all(0 < len(chunk) <= BODY_READ_SIZE for chunk in sink.chunks)


async def test_body_without_framing_ends_at_close() -> None:
    answer = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"
    sink = RecordingSink()
    async with serve_origin(respond(answer)) as origin:
        await forward(target_at(origin.port), request(), b"", sink)

    assert sink.body == b"until the end"


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"190\r\n" + b"x" * 400 + b"\r\n") * 3
        + b"0\r\n\r\n",
    ],
    ids=["declared", "counted"],
)
async def test_oversize_response_body_is_refused(answer: bytes) -> None:
    sink = RecordingSink()
    async with serve_origin(respond(answer)) as origin:
        with pytest.raises(ResponseTooLarge) as caught:
            await forward(
                target_at(origin.port),
                request(),
                b"",
                sink,
                limits=ForwardLimits(max_response_body=1000),
            )

    assert caught.value.may_have_reached_target is True
    assert len(sink.body) <= 1000


async def test_oversize_response_head_in_one_piece_is_refused() -> None:
    answer = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n"
    sink = RecordingSink()
    async with serve_origin(respond(answer)) as origin:
        with pytest.raises(ResponseTooLarge):
            await forward(
                target_at(origin.port),
                request(),
                b"",
                sink,
                limits=ForwardLimits(max_response_head=1024),
            )

    assert sink.head is None


async def test_oversize_response_head_in_pieces_is_refused(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def trickle(stream: trio.abc.Stream, exchange: Exchange) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\n")
        for _ in range(40):
            await trio.sleep(0.1)
            await stream.send_all(b"X-Many: " + b"a" * 50 + b"\r\n")
        await wait_for_close(stream)

    sink = RecordingSink()
    async with serve_origin(trickle) as origin:
        with pytest.raises(ResponseTooLarge) as caught:
            await forward(
                target_at(origin.port),
                request(),
                b"",
                sink,
                limits=ForwardLimits(max_response_head=1024),
            )

    assert isinstance(caught.value.__cause__, h11.RemoteProtocolError)
    assert sink.head is None


@pytest.mark.parametrize(
    "answer",
    [
        b"",
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 999 Whatever\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["closed", "garbage", "short-body", "bad-chunk", "status-over-599"],
)
async def test_broken_answer_is_bad_gateway(answer: bytes) -> None:
    async with serve_origin(respond(answer)) as origin:
        with pytest.raises(BadGateway) as caught:
            await forward(target_at(origin.port), request(), b"", RecordingSink())

    assert caught.value.may_have_reached_target is True
    assert len(origin.exchanges) == 1


# --------------------------------------------------------------------------
# Connection failures and time


async def test_refused_connection_is_target_unreachable() -> None:
    port = unused_port()
    with pytest.raises(TargetUnreachable) as caught:
        await forward(target_at(port), request(), b"", RecordingSink(), request_id="r1")

    assert caught.value.may_have_reached_target is False
    assert caught.value.request_id == "r1"
    assert "refused" in str(caught.value).lower()
    assert isinstance(caught.value.__cause__, OSError)


async def test_failed_name_lookup_is_target_unreachable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Stands in for the resolver: no test may ask a real DNS server.
    async def no_such_host(host: str, port: int) -> trio.SocketStream:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(trio, "open_tcp_stream", no_such_host)
    target = Target(name="scim-server", host="scim.corp.test", port=443)
    with pytest.raises(TargetUnreachable, match="Name or service not known"):
        await forward(target, request(), b"", RecordingSink())


async def test_connect_that_hangs_times_out_before_sending(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stands in for a SYN that is never answered, which loopback cannot do.
    async def black_hole(host: str, port: int) -> trio.SocketStream:
        await trio.sleep_forever()

    monkeypatch.setattr(trio, "open_tcp_stream", black_hole)
    start = trio.current_time()
    with pytest.raises(TimeoutBeforeSending) as caught:
        await forward(target_at(1), request(), b"", RecordingSink())

    assert trio.current_time() == start + ForwardLimits().connect_timeout
    assert caught.value.may_have_reached_target is False


async def silent(stream: trio.abc.Stream, exchange: Exchange) -> None:
    """Reads the request, then never answers."""
    await wait_for_close(stream)


@pytest.mark.parametrize(
    ("target_timeout", "head_timeout", "expected"),
    [(7.0, None, 7.0), (7.0, 3.0, 3.0), (7.0, 30.0, 7.0)],
)
async def test_silent_target_times_out_after_sending_at_the_deadline(
    autojump_clock: trio.abc.Clock,
    target_timeout: float,
    head_timeout: float | None,
    expected: float,
) -> None:
    async with serve_origin(silent) as origin:
        target = target_at(origin.port, timeout=target_timeout)
        start = trio.current_time()
        with pytest.raises(TimeoutAfterSending) as caught:
            await forward(target, request(timeout=head_timeout), b"", RecordingSink())
        assert trio.current_time() == start + expected

    assert caught.value.may_have_reached_target is True
    assert len(origin.exchanges) == 1


async def test_first_byte_limit_applies_before_the_deadline(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with serve_origin(silent) as origin:
        start = trio.current_time()
        with pytest.raises(TimeoutAfterSending, match="waiting for the answer"):
            await forward(
                target_at(origin.port),
                request(),
                b"",
                RecordingSink(),
                limits=ForwardLimits(first_byte_timeout=4.0),
            )
        assert trio.current_time() == start + 4.0


async def test_stalled_body_times_out_after_the_idle_limit(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def stall(stream: trio.abc.Stream, exchange: Exchange) -> None:
        await trio.sleep(1.0)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        await wait_for_close(stream)

    sink = RecordingSink()
    async with serve_origin(stall) as origin:
        start = trio.current_time()
        with pytest.raises(TimeoutAfterSending):
            await forward(
                target_at(origin.port),
                request(),
                b"",
                sink,
                limits=ForwardLimits(body_idle_timeout=5.0),
            )
        assert trio.current_time() == start + 1.0 + 5.0

    assert sink.body == b"abc"


@attrs.define
class StalledSink(RecordingSink):
    """A sink whose first call waits, as flow control toward the hub may."""

    stall: float = 0.0

    async def send_head(self, head: ResponseHead) -> None:
        await trio.sleep(self.stall)
        await super().send_head(head)


async def test_sink_waits_count_against_the_deadline_not_the_idle_limit(
    autojump_clock: trio.abc.Clock,
) -> None:
    sink = StalledSink(stall=20.0)
    async with serve_origin() as origin:
        start = trio.current_time()
        await forward(
            target_at(origin.port),
            request(),
            b"",
            sink,
            limits=ForwardLimits(first_byte_timeout=5.0, body_idle_timeout=5.0),
        )
        assert trio.current_time() == start + 20.0

    assert sink.body == b"ok"


async def test_sink_wait_past_the_deadline_is_a_timeout_after_sending(
    autojump_clock: trio.abc.Clock,
) -> None:
    sink = StalledSink(stall=20.0)
    async with serve_origin() as origin:
        start = trio.current_time()
        with pytest.raises(TimeoutAfterSending, match="deadline of 7 s passed"):
            await forward(
                target_at(origin.port, timeout=7.0),
                request(),
                b"",
                sink,
                limits=ForwardLimits(body_idle_timeout=5.0),
            )
        assert trio.current_time() == start + 7.0

    assert sink.head is None


@pytest.mark.parametrize(
    ("first_byte", "expected", "message"),
    [
        (4.0, 4.0, "waiting for the answer took longer than 4 s"),
        (7.0, 7.0, "the request's deadline of 7 s passed"),
        (9.0, 7.0, "the request's deadline of 7 s passed"),
    ],
    ids=["phase-first", "both-at-once", "deadline-first"],
)
async def test_timeout_names_whichever_limit_ran_out(
    autojump_clock: trio.abc.Clock, first_byte: float, expected: float, message: str
) -> None:
    async with serve_origin(silent) as origin:
        start = trio.current_time()
        with pytest.raises(TimeoutAfterSending, match=message):
            await forward(
                target_at(origin.port, timeout=7.0),
                request(),
                b"",
                RecordingSink(),
                limits=ForwardLimits(first_byte_timeout=first_byte),
            )
        assert trio.current_time() == start + expected


async def test_each_read_gets_the_whole_idle_limit_again(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def drip(stream: trio.abc.Stream, exchange: Exchange) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
        for byte in b"abcd":
            await trio.sleep(4.0)
            await stream.send_all(bytes([byte]))
        await wait_for_close(stream)

    sink = RecordingSink()
    async with serve_origin(drip) as origin:
        start = trio.current_time()
        await forward(
            target_at(origin.port),
            request(),
            b"",
            sink,
            limits=ForwardLimits(body_idle_timeout=5.0),
        )
        assert trio.current_time() == start + 16.0

    assert sink.body == b"abcd"


async def test_connect_timeout_is_named_in_the_error(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def black_hole(host: str, port: int) -> trio.SocketStream:
        await trio.sleep_forever()

    monkeypatch.setattr(trio, "open_tcp_stream", black_hole)
    with pytest.raises(TimeoutBeforeSending, match="connecting took longer than 3 s"):
        await forward(
            target_at(1),
            request(),
            b"",
            RecordingSink(),
            limits=ForwardLimits(connect_timeout=3.0),
        )


class ScriptedStream(trio.abc.Stream):
    """A connection whose reads return *answers*, each after a clock jump.

    The jump happens without a checkpoint, as when a read completes just as
    its limit runs out, before trio could deliver the cancellation.
    """

    def __init__(
        self, clock: trio.testing.MockClock, answers: list[tuple[float, bytes]]
    ) -> None:
        self.clock = clock
        self.answers = answers

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        jump, data = self.answers.pop(0)
        self.clock.jump(jump)
        return data

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class OneStreamPool(ConnectionPool):
    """Hands out one given connection, as if it had been kept alive."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        super().__init__()
        self.stream: trio.abc.Stream | None = stream

    async def take(self, key: Hashable) -> trio.abc.Stream | None:
        stream, self.stream = self.stream, None
        return stream


async def test_read_that_returns_past_its_limit_still_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The head's first line comes a second after the first-byte limit; the
    # limit is not forgotten because the read happened to complete.
    stream = ScriptedStream(
        autojump_clock,
        [(5.0, b"HTTP/1.1 200 OK\r\n"), (0.0, b"Content-Length: 2\r\n\r\nok")],
    )
    sink = RecordingSink()
    start = trio.current_time()
    with pytest.raises(
        TimeoutAfterSending, match="waiting for the answer took longer than 4 s"
    ):
        await forward(
            target_at(1),
            request(),
            b"",
            sink,
            limits=ForwardLimits(first_byte_timeout=4.0),
            pool=OneStreamPool(stream),
        )

    assert trio.current_time() == start + 5.0
    assert sink.head is None


async def test_request_the_target_does_not_read_times_out_at_the_send_limit(
    autojump_clock: trio.abc.Clock,
) -> None:
    body = b"x" * (16 << 20)
    await times_out_at_the_send_limit(body, len(body))


async def test_small_request_is_written_without_a_send_phase(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The kernel takes a small request whole: nothing waits, so neither
    # send_all (which yields after writing) nor the send limit is used.
    phases = phases_without_send_all(monkeypatch)
    async with serve_origin() as origin:
        await forward(
            target_at(origin.port), request("POST"), b"x" * 1000, RecordingSink()
        )

    assert only(origin).body == b"x" * 1000
    assert "sending the request" not in phases
    assert phases == ["connecting", "waiting for the answer"]


async def test_cancelled_forward_writes_nothing_on_a_plain_connection() -> None:
    recorder_data: list[bytes | bytearray] = []

    async def record(stream: trio.abc.Stream) -> None:
        recorder_data.append(await stream.receive_some(65536))

    async with serve_origin(raw_handler=record) as origin:
        pool = ConnectionPool()
        target = target_at(origin.port)
        # A connection the pool hands out at once: nothing yields before
        # the write, which must still see the cancellation.
        stream = await trio.open_tcp_stream("127.0.0.1", origin.port)
        await pool.put((target, "http", None, None), stream)
        with trio.CancelScope() as scope:
            scope.cancel()
            await forward(target, request(), b"", RecordingSink(), pool=pool)
        assert scope.cancelled_caught
        await pool.aclose()
        with trio.fail_after(2):
            await trio.testing.wait_all_tasks_blocked()
    assert recorder_data in ([], [b""])


async def test_cancelling_forward_closes_the_target_connection() -> None:
    got_request = trio.Event()
    saw_close = trio.Event()

    async def hold(stream: trio.abc.Stream, exchange: Exchange) -> None:
        got_request.set()
        await wait_for_close(stream)
        saw_close.set()

    async with serve_origin(hold) as origin:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                forward, target_at(origin.port), request(), b"", RecordingSink()
            )
            await got_request.wait()
            nursery.cancel_scope.cancel()
        with trio.fail_after(2):
            await saw_close.wait()


# --------------------------------------------------------------------------
# Logs


async def test_no_header_value_reaches_the_logs(
    tls: TlsMaterial, caplog: pytest.LogCaptureFixture
) -> None:
    secret = TOKEN.decode()
    headers = ((b"authorization", TOKEN),)
    errors: list[RequestError] = []
    caplog.set_level(logging.DEBUG, logger="trustelem_relay")

    async with serve_origin() as origin:
        await forward(
            target_at(origin.port),
            request(headers=headers),
            b"",
            RecordingSink(),
            request_id="req-ok",
        )

    async def attempt(request_id: str, target: Target, head: RequestHead) -> None:
        with pytest.raises(RequestError) as caught:
            await forward(target, head, b"", RecordingSink(), request_id=request_id)
        errors.append(caught.value)

    bad_value = ((b"authorization", TOKEN + b"\r\nx: y"),)
    await attempt("req-bad", target_at(1), request(headers=bad_value))
    await attempt("req-refused", target_at(unused_port()), request(headers=headers))
    async with serve_origin(ssl_context=tls.server_context()) as origin:
        https = request(scheme="https", headers=headers)
        await attempt("req-tls", target_at(origin.port), https)

    assert caplog.records
    assert secret not in caplog.text
    assert "s3cr3t" not in caplog.text
    for error in errors:
        assert "s3cr3t" not in str(error)
    for record in caplog.records:
        assert record.getMessage().startswith("[req-")
