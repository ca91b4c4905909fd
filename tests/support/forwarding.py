"""What the forwarder's tests share: a recording sink, targets, heads."""

from __future__ import annotations

from typing import Any

import attrs

from trustelem_relay._events import RequestHead, ResponseHead
from trustelem_relay._policy import Target

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
