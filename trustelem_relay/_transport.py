"""An httpx transport that sends every request through the relay.

Any httpx-based client (SCIM libraries included) can then talk to an
application on a customer's network as if it were local::

    transport = RelayTransport(hub, service.service_id, "scim-server")
    async with httpx.AsyncClient(transport=transport, base_url=url) as client:
        response = await client.get("/Users")

The transport reads the whole request body (bounded by the hub's limit),
calls :meth:`Hub.request` and wraps its answer. Relay failures are raised
as they are: :class:`~._errors.RequestError` subclasses, which say whether
the request may have reached the target. httpx's own timeout settings are
honoured: the smallest of connect, write, read and pool timeouts that is set
becomes the request's deadline.
"""

from __future__ import annotations

import httpx

from ._hub import Hub


class RelayTransport(httpx.AsyncBaseTransport):
    """Send httpx requests to ``target`` through an agent of the service."""

    def __init__(
        self,
        hub: Hub,
        service_id: str,
        target: str,
        *,
        timeout: float | None = None,
    ) -> None:
        self._hub = hub
        self._service_id = service_id
        self._target = target
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"<RelayTransport target={self._target!r}>"

    def _deadline(self, request: httpx.Request) -> float | None:
        timeouts = request.extensions.get("timeout") or {}
        chosen = [t for t in timeouts.values() if isinstance(t, int | float)]
        if self._timeout is not None:
            chosen.append(self._timeout)
        return min(chosen) if chosen else None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        # httpx adds its own framing headers; the agent sets the framing.
        headers = [
            (name, value)
            for name, value in request.headers.raw
            if name.lower() not in (b"content-length", b"transfer-encoding")
        ]
        answer = await self._hub.request(
            self._service_id,
            self._target,
            request.method,
            str(request.url),
            headers=headers,
            body=body,
            timeout=self._deadline(request),
        )
        return httpx.Response(
            status_code=answer.status,
            headers=answer.headers,
            content=answer.body,
            request=request,
            extensions={"trustelem_request_id": answer.request_id},
        )
