"""What the forwarder's tests share: a recording sink, targets, heads."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio

from trustelem_relay import TimeoutAfterSending, _forward_send
from trustelem_relay._events import RequestHead, ResponseHead
from trustelem_relay._forward import ForwardLimits, RequestBody, _Exchange, forward
from trustelem_relay._policy import Target

from .origin import serve_origin

#: The URL host most tests use; the shared test certificate is valid for it.
HOSTNAME = "scim.corp.test"


@attrs.define
class RecordingSink:
    """Collects what forward() relays, and checks the order of the calls."""

    head: ResponseHead | None = None
    chunks: list[bytes] = attrs.field(factory=list)

    async def send_head(self, head: ResponseHead) -> None:
        assert self.head is None, "send_head called twice"
        self.head = head

    async def send_data(self, data: bytes) -> None:
        assert self.head is not None, "send_data before send_head"
        self.chunks.append(data)

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


def target_at(port: int, **kwargs: Any) -> Target:
    """The target ``scim-server``, declared at 127.0.0.1:*port*."""
    return Target(name="scim-server", host="127.0.0.1", port=port, **kwargs)


def request(
    method: str = "GET",
    path: str = "/scim/v2/Users",
    *,
    scheme: str = "http",
    authority: str = HOSTNAME,
    headers: tuple[tuple[bytes, bytes], ...] = (),
    timeout: float | None = None,
) -> RequestHead:
    """A request head as the hub would send it."""
    return RequestHead(
        method=method,
        scheme=scheme,
        authority=authority,
        path=path,
        headers=headers,
        timeout=timeout,
    )


def phases_without_send_all(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the phases forward() opens, and fail any use of send_all.

    For the writes that must go straight to a plain socket: send_all
    yields after writing, and the send phase is for what waits.
    """
    phases: list[str] = []
    start_phase = _Exchange.start_phase

    def record(self: _Exchange, what: str, seconds: float, **kw: float) -> None:
        phases.append(what)
        start_phase(self, what, seconds, **kw)

    async def no_send_all(*args: object) -> None:
        raise AssertionError("send_all was used")

    monkeypatch.setattr(_Exchange, "start_phase", record)
    monkeypatch.setattr(_forward_send, "_write", no_send_all)
    return phases


async def times_out_at_the_send_limit(body: bytes | RequestBody, length: int) -> None:
    """Forward *body* (*length* bytes) to a target that never reads it: the
    request must fail exactly at the 5 s send limit (autojump clock).

    Far more than the kernel's buffers take: what a write tried at once
    leaves goes to send_all, which the send limit bounds.
    """
    never_read = trio.Event()

    async def hold(stream: trio.abc.Stream) -> None:
        await never_read.wait()

    async with serve_origin(raw_handler=hold) as origin:
        start = trio.current_time()
        with pytest.raises(TimeoutAfterSending, match="sending the request took"):
            await forward(
                target_at(origin.port, timeout=30.0),
                request("POST"),
                body,
                RecordingSink(),
                limits=ForwardLimits(send_timeout=5.0, max_request_body=length),
            )
        assert trio.current_time() == start + 5.0
        never_read.set()
