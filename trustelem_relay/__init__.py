"""trustelem_relay: provision SCIM 2.0 applications on private networks.

The package is layered (see docs/architecture.md): a sans-IO protocol core,
a target policy, configuration, a Trio runtime (agent and hub) and the
operator surface. Everything public is re-exported here.

The sans-IO names are imported eagerly; the runtime's (``Hub``, ``Agent``,
``RelayTransport``...) load on first use, so that importing the protocol
core never pulls in Trio, h11 or sockets.
"""

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import (
    AgentUnavailable,
    AuthenticationFailed,
    BadGateway,
    ConfigError,
    DecryptionFailed,
    Draining,
    FrameTooLarge,
    HandshakeError,
    InternalError,
    LocalProtocolError,
    MalformedFrame,
    NonceOutOfOrder,
    Overloaded,
    ProtocolError,
    ReflectedFrame,
    RefusedByPolicy,
    RelayError,
    RemoteProtocolError,
    RequestCancelled,
    RequestError,
    RequestTooLarge,
    ResponseTooLarge,
    SessionLost,
    StreamErrorCode,
    StreamProtocolError,
    TargetUnreachable,
    TimeoutAfterSending,
    TimeoutBeforeSending,
    TLSFailure,
    UndeclaredTarget,
    VersionMismatch,
)
from ._events import (
    DataReceived,
    Event,
    GoAwayReceived,
    HandshakeComplete,
    InfoReceived,
    PingReceived,
    PongReceived,
    RequestHead,
    RequestReceived,
    ResponseHead,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from ._mux import Connection, ConnectionState, Role, Settings, StreamState
from ._policy import Refusal, Target, TLSSettings, decide
from ._version import __version__

if TYPE_CHECKING:
    from ._agent import Agent, AgentSettings
    from ._config import AgentConfig
    from ._dial import HubConnectError
    from ._forward import ForwardLimits
    from ._hub import Hub
    from ._hub_session import AgentInfo, Response, ServiceInfo
    from ._hubconfig import HubConfig, HubLimits
    from ._hubstore import HubStore, MemoryStore, SQLiteStore
    from ._transport import RelayTransport

#: Names that load their module on first use: name -> module.
_LAZY = {
    "Agent": "._agent",
    "AgentSettings": "._agent",
    "AgentConfig": "._config",
    "HubConnectError": "._dial",
    "ForwardLimits": "._forward",
    "AgentInfo": "._hub_session",
    "Hub": "._hub",
    "Response": "._hub_session",
    "ServiceInfo": "._hub_session",
    "HubConfig": "._hubconfig",
    "HubLimits": "._hubconfig",
    "HubStore": "._hubstore",
    "MemoryStore": "._hubstore",
    "SQLiteStore": "._hubstore",
    "RelayTransport": "._transport",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "Agent",
    "AgentConfig",
    "AgentInfo",
    "AgentSettings",
    "AgentUnavailable",
    "AuthenticationFailed",
    "BadGateway",
    "ConfigError",
    "Connection",
    "ConnectionState",
    "DataReceived",
    "DecryptionFailed",
    "Draining",
    "Event",
    "ForwardLimits",
    "FrameTooLarge",
    "GoAwayReceived",
    "HandshakeComplete",
    "HandshakeError",
    "Hub",
    "HubConfig",
    "HubConnectError",
    "HubLimits",
    "HubStore",
    "InfoReceived",
    "InternalError",
    "LocalProtocolError",
    "MalformedFrame",
    "MemoryStore",
    "NonceOutOfOrder",
    "Overloaded",
    "PingReceived",
    "PongReceived",
    "ProtocolError",
    "ReflectedFrame",
    "Refusal",
    "RefusedByPolicy",
    "RelayError",
    "RelayTransport",
    "RemoteProtocolError",
    "RequestCancelled",
    "RequestError",
    "RequestHead",
    "RequestReceived",
    "RequestTooLarge",
    "Response",
    "ResponseHead",
    "ResponseReceived",
    "ResponseTooLarge",
    "Role",
    "SQLiteStore",
    "ServiceInfo",
    "SessionLost",
    "Settings",
    "StreamEnded",
    "StreamErrorCode",
    "StreamProtocolError",
    "StreamReset",
    "StreamState",
    "TLSFailure",
    "TLSSettings",
    "Target",
    "TargetUnreachable",
    "TimeoutAfterSending",
    "TimeoutBeforeSending",
    "UndeclaredTarget",
    "VersionMismatch",
    "WindowUpdated",
    "__version__",
    "decide",
]
