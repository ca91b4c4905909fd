"""Every exception the package raises, under one root.

The tree has three branches:

* :class:`ProtocolError` — something broke the wire protocol. A
  :class:`LocalProtocolError` means *our* caller asked for something illegal
  (a bug in the code using the library); a :class:`RemoteProtocolError` means
  the peer sent something illegal, and the session it arrived on is over.
* :class:`RequestError` — a relayed request failed. Each one says, through
  :attr:`RequestError.may_have_reached_target`, whether the target may have
  seen the request, so that the caller knows whether a retry is safe.
* :class:`ConfigError` — an operator's file or command line is wrong.

Errors from PyNaCl, h11 and sockets are translated into these at the edge
where they happen, with the original chained as ``__cause__``.
"""

from __future__ import annotations

import enum


class RelayError(Exception):
    """The root of every error raised by :mod:`trustelem_relay`."""


# --------------------------------------------------------------------------
# Protocol errors


class ProtocolError(RelayError):
    """The wire protocol was broken, by us or by the peer."""


class LocalProtocolError(ProtocolError):
    """The caller asked the protocol core for something illegal.

    Nothing was sent; the session is unaffected. This is a bug in the code
    driving the core, not a network problem.
    """


class RemoteProtocolError(ProtocolError):
    """The peer sent something illegal; the session must be closed.

    ``close_code`` is the websocket close code the runtime should use;
    ``reply``, when set, is a last frame to send before closing (the hub's
    REJECT during the handshake).
    """

    close_code = 4400
    reply: bytes | None = None


class FrameTooLarge(RemoteProtocolError):
    """A frame announced a size above the negotiated bound."""

    close_code = 4409


class MalformedFrame(RemoteProtocolError):
    """A frame's bytes do not follow the layout in docs/protocol.md."""


class DecryptionFailed(RemoteProtocolError):
    """A sealed frame did not authenticate: tampered, or not for this session."""

    close_code = 4401


class NonceOutOfOrder(RemoteProtocolError):
    """A frame's counter is not the next one expected: replayed, reordered
    or a frame was dropped."""

    close_code = 4401


class ReflectedFrame(RemoteProtocolError):
    """A frame that this side sent came back to it."""

    close_code = 4401


class HandshakeError(RemoteProtocolError):
    """The handshake failed; no session keys were agreed."""

    close_code = 4403


class VersionMismatch(HandshakeError):
    """The two ends share no protocol version."""

    close_code = 4426


class AuthenticationFailed(HandshakeError):
    """The peer does not hold the service's secret (wrong or rotated
    service_id, or a server that is not the hub)."""


# --------------------------------------------------------------------------
# Request errors


class StreamErrorCode(enum.IntEnum):
    """Why a stream ended without a full answer; carried in RESET frames.

    The numeric values are part of the wire protocol (docs/protocol.md).
    """

    CANCELLED = 1
    UNDECLARED_TARGET = 2
    REFUSED_BY_POLICY = 3
    TARGET_UNREACHABLE = 4
    TLS_FAILURE = 5
    TIMEOUT_BEFORE_SENDING = 6
    TIMEOUT_AFTER_SENDING = 7
    OVERLOADED = 8
    DRAINING = 9
    REQUEST_TOO_LARGE = 10
    RESPONSE_TOO_LARGE = 11
    BAD_GATEWAY = 12
    PROTOCOL_ERROR = 13
    INTERNAL_ERROR = 14


class RequestError(RelayError):
    """A relayed request did not produce a complete answer.

    ``may_have_reached_target`` is False only when the request certainly did
    not reach the target (nothing was dialled, or nothing was written to the
    target's connection); then it is safe to retry. When it is True the
    outcome is unknown: look at the target's state before trying again.
    """

    code: StreamErrorCode = StreamErrorCode.INTERNAL_ERROR
    default_may_have_reached = True

    def __init__(
        self,
        message: str,
        *,
        may_have_reached_target: bool | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        if may_have_reached_target is None:
            may_have_reached_target = self.default_may_have_reached
        self.may_have_reached_target = may_have_reached_target
        self.request_id = request_id

    def __str__(self) -> str:
        text = super().__str__()
        if self.request_id:
            text = f"{text} (request {self.request_id})"
        return text


class RequestCancelled(RequestError):
    """The other end cancelled the request."""

    code = StreamErrorCode.CANCELLED


class UndeclaredTarget(RequestError):
    """The agent has no target of that name; nothing was dialled."""

    code = StreamErrorCode.UNDECLARED_TARGET
    default_may_have_reached = False


class RefusedByPolicy(RequestError):
    """The target exists but its policy refuses this method or path."""

    code = StreamErrorCode.REFUSED_BY_POLICY
    default_may_have_reached = False


class TargetUnreachable(RequestError):
    """The agent could not connect to the target's declared address."""

    code = StreamErrorCode.TARGET_UNREACHABLE
    default_may_have_reached = False


class TLSFailure(RequestError):
    """The TLS handshake with the target failed (certificate, pin, version)."""

    code = StreamErrorCode.TLS_FAILURE
    default_may_have_reached = False


class TimeoutBeforeSending(RequestError):
    """The deadline passed before any byte of the request reached the target."""

    code = StreamErrorCode.TIMEOUT_BEFORE_SENDING
    default_may_have_reached = False


class TimeoutAfterSending(RequestError):
    """The deadline passed after the request was sent: outcome unknown."""

    code = StreamErrorCode.TIMEOUT_AFTER_SENDING


class Overloaded(RequestError):
    """Too many requests in flight; refused at once, nothing was sent."""

    code = StreamErrorCode.OVERLOADED
    default_may_have_reached = False


class Draining(RequestError):
    """The agent is shutting down and takes no new requests."""

    code = StreamErrorCode.DRAINING
    default_may_have_reached = False


class RequestTooLarge(RequestError):
    """The request's head or body is over the limit; nothing was sent."""

    code = StreamErrorCode.REQUEST_TOO_LARGE
    default_may_have_reached = False


class ResponseTooLarge(RequestError):
    """The target's answer was over the limit and was dropped."""

    code = StreamErrorCode.RESPONSE_TOO_LARGE


class BadGateway(RequestError):
    """The target answered with something that is not valid HTTP/1.1."""

    code = StreamErrorCode.BAD_GATEWAY


class StreamProtocolError(RequestError):
    """A stream broke the relay protocol."""

    code = StreamErrorCode.PROTOCOL_ERROR


class InternalError(RequestError):
    """An unexpected failure inside the relay."""

    code = StreamErrorCode.INTERNAL_ERROR


class AgentUnavailable(RequestError):
    """No live agent serves this service; nothing was sent."""

    code = StreamErrorCode.TARGET_UNREACHABLE
    default_may_have_reached = False


class SessionLost(RequestError):
    """The websocket to the agent died while the request was in flight."""

    code = StreamErrorCode.PROTOCOL_ERROR


_ERROR_BY_CODE: dict[StreamErrorCode, type[RequestError]] = {
    cls.code: cls
    for cls in (
        RequestCancelled,
        UndeclaredTarget,
        RefusedByPolicy,
        TargetUnreachable,
        TLSFailure,
        TimeoutBeforeSending,
        TimeoutAfterSending,
        Overloaded,
        Draining,
        RequestTooLarge,
        ResponseTooLarge,
        BadGateway,
        StreamProtocolError,
        InternalError,
    )
}


def error_for_code(
    code: StreamErrorCode,
    message: str,
    *,
    may_have_reached_target: bool,
    request_id: str | None = None,
) -> RequestError:
    """Build the :class:`RequestError` subclass that a RESET code stands for."""
    cls = _ERROR_BY_CODE.get(code, InternalError)
    return cls(
        message,
        may_have_reached_target=may_have_reached_target,
        request_id=request_id,
    )


# --------------------------------------------------------------------------
# Operator errors


class ConfigError(RelayError):
    """A configuration file, state directory or command argument is wrong.

    The message is one line meant for an operator: it names the file and key
    where there is one, and says what was expected.
    """
