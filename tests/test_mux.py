"""The stream multiplexer and flow control (trustelem_relay._mux)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.pair import Pair, make_pair, random_chunker

from trustelem_relay._errors import (
    FrameTooLarge,
    LocalProtocolError,
    MalformedFrame,
    RemoteProtocolError,
    StreamErrorCode,
)
from trustelem_relay._events import (
    DataReceived,
    Event,
    GoAwayReceived,
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
from trustelem_relay._frames import (
    FLAG_END_STREAM,
    MAX_PAYLOAD,
    Kind,
    Reset,
    encode_request_head,
    encode_reset,
    encode_response_head,
    encode_window,
)
from trustelem_relay._mux import (
    _TRANSITIONS,
    MAX_PING,
    MAX_STREAM_ID,
    MAX_WINDOW,
    Connection,
    ConnectionState,
    FlowControlError,
    Settings,
    StreamState,
    _Input,
)

E = TypeVar("E", bound=Event)

GET = RequestHead("GET", "https", "scim.corp", "/scim/v2/Users")
POST = RequestHead("POST", "https", "scim.corp", "/scim/v2/Users")
OK = ResponseHead(200, ((b"content-type", b"application/scim+json"),))

#: The smallest windows allowed, so that tests reach them quickly.
TIGHT = Settings(stream_window=MAX_PAYLOAD, session_window=2 * MAX_PAYLOAD)


def forge(
    sender: Connection,
    kind: Kind,
    payload: bytes,
    *,
    stream_id: int = 0,
    flags: int = 0,
    target: str = "",
) -> bytes:
    """A frame sealed with the sender's real key, skipping its checks: what a
    buggy or hostile peer that holds the secret could send."""
    assert sender._sealer is not None
    return sender._sealer.seal(
        kind, payload, stream_id=stream_id, flags=flags, target=target
    )


def of_type(events: list[Event], kind: type[E]) -> list[E]:
    return [e for e in events if isinstance(e, kind)]


def body_of(events: list[Event], stream_id: int) -> bytes:
    return b"".join(
        e.data
        for e in events
        if isinstance(e, DataReceived) and e.stream_id == stream_id
    )


def state_of(conn: Connection) -> tuple[object, ...]:
    """Everything a local call could change, for "changes nothing" checks."""
    streams = tuple(
        sorted(
            (s.id, s.state, s.local_head, s.send_credit, s.recv_credit, s.unacked)
            for s in conn._streams.values()
        )
    )
    sealer = conn._sealer.counter if conn._sealer is not None else None
    return (
        conn.state,
        streams,
        conn._send_credit,
        conn._recv_credit,
        conn._last_stream_id,
        conn.local_going_away,
        sealer,
        tuple(conn._outbox),
    )


def exchange(pair: Pair, request: bytes, response: bytes, target: str = "t") -> int:
    """Run one request with bodies to completion, acknowledging as it goes."""
    hub, agent = pair.hub, pair.agent
    stream = hub.open_stream(target, POST)
    sent = 0
    while sent < len(request) or hub.stream_state(stream) is StreamState.OPEN:
        size = min(hub.send_window(stream), len(request) - sent)
        last = sent + size == len(request)
        hub.send_data(stream, request[sent : sent + size], end_stream=last)
        sent += size
        agent_events, _ = pair.pump()
        for event in of_type(agent_events, DataReceived):
            assert isinstance(event, DataReceived)
            agent.acknowledge_data(stream, len(event.data))
        pair.pump()
    agent.send_response(stream, OK)
    sent = 0
    while sent < len(response) or agent.stream_state(stream) is not None:
        size = min(agent.send_window(stream), len(response) - sent)
        last = sent + size == len(response)
        agent.send_data(stream, response[sent : sent + size], end_stream=last)
        sent += size
        _, hub_events = pair.pump()
        for event in of_type(hub_events, DataReceived):
            assert isinstance(event, DataReceived)
            hub.acknowledge_data(stream, len(event.data))
        pair.pump()
    return stream


# --------------------------------------------------------------------------
# Requests and responses


def test_request_and_response_with_bodies() -> None:
    pair = make_pair()
    stream = pair.hub.open_stream("scim-server", POST)
    pair.hub.send_data(stream, b'{"userName":', end_stream=False)
    pair.hub.send_data(stream, b'"bjensen"}', end_stream=True)
    agent_events, _ = pair.pump()
    assert agent_events == [
        RequestReceived(stream, "scim-server", POST, False),
        DataReceived(stream, b'{"userName":'),
        DataReceived(stream, b'"bjensen"}'),
        StreamEnded(stream),
    ]
    pair.agent.send_response(stream, OK)
    pair.agent.send_data(stream, b'{"id":"1"}', end_stream=True)
    _, hub_events = pair.pump()
    assert hub_events == [
        ResponseReceived(stream, OK, False),
        DataReceived(stream, b'{"id":"1"}'),
        StreamEnded(stream),
    ]
    # Both sides still hold the bytes until they are acknowledged.
    assert pair.hub.stream_state(stream) is StreamState.CLOSED
    pair.hub.acknowledge_data(stream, 10)
    pair.agent.acknowledge_data(stream, 22)
    assert pair.hub.stream_state(stream) is None
    assert pair.agent.stream_state(stream) is None
    assert pair.hub.open_streams == pair.agent.open_streams == 0


def test_request_and_response_without_bodies_use_the_end_flag() -> None:
    pair = make_pair()
    stream = pair.hub.open_stream("t", GET, end_stream=True)
    assert pair.hub.stream_state(stream) is StreamState.HALF_CLOSED_LOCAL
    agent_events, _ = pair.pump()
    assert agent_events == [
        RequestReceived(stream, "t", GET, True),
        StreamEnded(stream),
    ]
    assert pair.agent.stream_state(stream) is StreamState.HALF_CLOSED_REMOTE
    pair.agent.send_response(stream, ResponseHead(204), end_stream=True)
    _, hub_events = pair.pump()
    assert hub_events == [
        ResponseReceived(stream, ResponseHead(204), True),
        StreamEnded(stream),
    ]
    assert pair.hub.stream_state(stream) is None
    assert pair.agent.stream_state(stream) is None


def test_agent_may_answer_before_the_request_body_ends() -> None:
    pair = make_pair()
    stream = pair.hub.open_stream("t", POST)
    pair.pump()
    pair.agent.send_response(stream, ResponseHead(413), end_stream=True)
    _, hub_events = pair.pump()
    assert of_type(hub_events, StreamEnded) == [StreamEnded(stream)]
    assert pair.hub.stream_state(stream) is StreamState.HALF_CLOSED_REMOTE
    pair.hub.end_stream(stream)
    agent_events, _ = pair.pump()
    assert agent_events == [StreamEnded(stream)]
    assert pair.hub.stream_state(stream) is None
    assert pair.agent.stream_state(stream) is None


def test_stream_ids_grow_from_one() -> None:
    pair = make_pair()
    ids = [pair.hub.open_stream("t", GET, end_stream=True) for _ in range(3)]
    assert ids == [1, 2, 3]


def test_stream_ids_end_at_the_32_bit_limit() -> None:
    pair = make_pair()
    pair.hub._last_stream_id = MAX_STREAM_ID - 1
    assert pair.hub.open_stream("t", GET, end_stream=True) == MAX_STREAM_ID
    pair.pump()
    before = state_of(pair.hub)
    with pytest.raises(LocalProtocolError, match="stream ids are used up"):
        pair.hub.open_stream("t", GET)
    assert state_of(pair.hub) == before


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 200_000), st.integers(0, 600_000)),
        min_size=1,
        max_size=3,
    ),
    st.integers(0, 2**32),
    st.integers(100, 20_000),
)
def test_bodies_survive_random_chunking_through_a_connection_pair(
    sizes: list[tuple[int, int]], seed: int, max_chunk: int
) -> None:
    # Bodies span several windows, so WINDOW frames interleave with DATA,
    # and every frame is cut at random points on its way.
    generator = random.Random(seed)
    pair = make_pair(chunker=random_chunker(generator, max_chunk))
    for request_size, response_size in sizes:
        request = generator.randbytes(request_size)
        response = generator.randbytes(response_size)
        stream = exchange(pair, request, response)
        assert body_of(pair.agent_events, stream) == request
        assert body_of(pair.hub_events, stream) == response
    assert pair.hub.open_streams == pair.agent.open_streams == 0


# --------------------------------------------------------------------------
# Flow control


def test_flow_control_blocks_at_the_stream_window_and_resumes_after_ack() -> None:
    pair = make_pair(settings=TIGHT)
    stream = pair.hub.open_stream("t", POST)
    pair.hub.send_data(stream, bytes(MAX_PAYLOAD))
    assert pair.hub.send_window(stream) == 0
    before = state_of(pair.hub)
    with pytest.raises(LocalProtocolError, match="exceed the send window"):
        pair.hub.send_data(stream, b"x")
    assert state_of(pair.hub) == before

    # Delivering is not enough: credit comes back only when consumed.
    pair.pump()
    assert pair.agent.unacknowledged(stream) == MAX_PAYLOAD
    assert pair.hub.send_window(stream) == 0

    # Below a quarter of the window nothing is returned yet...
    pair.agent.acknowledge_data(stream, MAX_PAYLOAD // 4 - 1)
    assert pair.agent.data_to_send() == []
    # ...at a quarter, one WINDOW frame returns the batch.
    pair.agent.acknowledge_data(stream, 1)
    _, hub_events = pair.pump()
    assert hub_events == [WindowUpdated(stream)]
    assert pair.hub.send_window(stream) == MAX_PAYLOAD // 4


def test_session_window_is_shared_across_streams() -> None:
    pair = make_pair(settings=TIGHT)
    streams = [pair.hub.open_stream("t", POST) for _ in range(3)]
    pair.hub.send_data(streams[0], bytes(MAX_PAYLOAD))
    pair.hub.send_data(streams[1], bytes(MAX_PAYLOAD))
    # Each stream has its own credit left, but the session has none.
    assert pair.hub._streams[streams[2]].send_credit == MAX_PAYLOAD
    assert pair.hub.send_window(streams[2]) == 0
    pair.pump()

    # Acknowledging on one stream frees session credit for another.
    pair.agent.acknowledge_data(streams[0], MAX_PAYLOAD // 2)
    _, hub_events = pair.pump()
    assert WindowUpdated(0) in hub_events
    assert pair.hub.send_window(streams[2]) == MAX_PAYLOAD // 2
    assert pair.hub.send_window(streams[1]) == 0


def test_send_window_never_exceeds_one_frame() -> None:
    pair = make_pair()
    stream = pair.hub.open_stream("t", POST)
    assert pair.hub.send_window(stream) == MAX_PAYLOAD
    assert pair.hub.send_window(999) == 0


def test_no_stream_credit_is_returned_once_the_sender_finished() -> None:
    pair = make_pair(settings=TIGHT)
    stream = pair.hub.open_stream("t", POST)
    pair.hub.send_data(stream, bytes(MAX_PAYLOAD), end_stream=True)
    pair.pump()
    assert pair.agent.stream_state(stream) is StreamState.HALF_CLOSED_REMOTE
    pair.agent.acknowledge_data(stream, MAX_PAYLOAD)
    (window,) = pair.agent.data_to_send()
    # Only the session-level WINDOW (stream 0) leaves.
    assert window[7:11] == bytes(4)


def test_acknowledging_the_last_bytes_of_a_closed_stream_forgets_it() -> None:
    pair = make_pair()
    stream = pair.hub.open_stream("t", GET, end_stream=True)
    pair.pump()
    pair.agent.send_response(stream, OK)
    pair.agent.send_data(stream, b"abcdef", end_stream=True)
    pair.pump()
    assert pair.hub.stream_state(stream) is StreamState.CLOSED
    assert pair.hub.open_streams == 0
    pair.hub.acknowledge_data(stream, 2)
    assert pair.hub.stream_state(stream) is StreamState.CLOSED
    pair.hub.acknowledge_data(stream, 4)
    assert pair.hub.stream_state(stream) is None


def test_resetting_a_finished_stream_releases_its_unacknowledged_bytes() -> None:
    pair = make_pair(settings=TIGHT)
    stream = pair.hub.open_stream("t", GET, end_stream=True)
    pair.pump()
    pair.agent.send_response(stream, OK)
    pair.agent.send_data(stream, bytes(MAX_PAYLOAD), end_stream=True)
    pair.pump()
    assert pair.hub.stream_state(stream) is StreamState.CLOSED
    # The user gives up on the body: no RESET is due (the stream is over on
    # both sides) but the session credit must come back.
    pair.hub.reset_stream(stream, StreamErrorCode.RESPONSE_TOO_LARGE)
    assert pair.hub.stream_state(stream) is None
    frames = pair.hub.data_to_send()
    assert [frame[5] for frame in frames] == [Kind.WINDOW]
    pair.agent.receive_data(frames[0])
    assert pair.agent._send_credit == 2 * MAX_PAYLOAD


def test_window_growing_past_the_limit_is_a_session_error() -> None:
    pair = make_pair()
    frame = forge(pair.hub, Kind.WINDOW, encode_window(MAX_WINDOW))
    with pytest.raises(FlowControlError, match="session window"):
        pair.agent.receive_data(frame)

    pair = make_pair()
    stream = pair.hub.open_stream("t", POST)
    pair.pump()
    frame = forge(pair.agent, Kind.WINDOW, encode_window(MAX_WINDOW), stream_id=stream)
    with pytest.raises(FlowControlError, match=f"stream {stream} window"):
        pair.hub.receive_data(frame)


def test_data_beyond_the_session_credit_is_a_session_error() -> None:
    pair = make_pair(settings=TIGHT)
    streams = [pair.hub.open_stream("t", POST) for _ in range(3)]
    pair.hub.send_data(streams[0], bytes(MAX_PAYLOAD))
    pair.hub.send_data(streams[1], bytes(MAX_PAYLOAD))
    pair.pump()
    frame = forge(pair.hub, Kind.DATA, b"x", stream_id=streams[2])
    with pytest.raises(FlowControlError, match="session credit"):
        pair.agent.receive_data(frame)
    assert pair.agent.state is ConnectionState.CLOSED


def test_data_beyond_the_stream_credit_is_a_session_error() -> None:
    pair = make_pair(settings=TIGHT)
    stream = pair.hub.open_stream("t", POST)
    pair.hub.send_data(stream, bytes(MAX_PAYLOAD))
    pair.pump()
    frame = forge(pair.hub, Kind.DATA, b"x", stream_id=stream)
    with pytest.raises(FlowControlError, match="stream credit"):
        pair.agent.receive_data(frame)


def test_window_for_a_stream_already_gone_is_ignored() -> None:
    pair = make_pair()
    stream = pair.hub.open_stream("t", GET, end_stream=True)
    pair.pump()
    pair.agent.send_response(stream, OK, end_stream=True)
    pair.pump()
    assert pair.agent.stream_state(stream) is None
    frame = forge(pair.hub, Kind.WINDOW, encode_window(5), stream_id=stream)
    assert pair.agent.receive_data(frame) == []


@pytest.mark.parametrize("value", [MAX_PAYLOAD - 1, MAX_WINDOW + 1])
def test_settings_refuse_windows_out_of_range(value: int) -> None:
    with pytest.raises(ValueError, match="stream_window"):
        Settings(stream_window=value)
    with pytest.raises(ValueError, match="session_window"):
        Settings(session_window=value)


# --------------------------------------------------------------------------
# Cancelling and its races


def test_hub_cancels_a_stream() -> None:
    pair = make_pair()
    stream = pair.hub.open_stream("t", POST)
    pair.pump()
    pair.hub.reset_stream(stream, StreamErrorCode.CANCELLED, "caller gave up")
    assert pair.hub.stream_state(stream) is None
    agent_events, _ = pair.pump()
    assert agent_events == [
        StreamReset(stream, StreamErrorCode.CANCELLED, "caller gave up", True)
    ]
    assert pair.agent.stream_state(stream) is None


def test_agent_cancels_a_stream_saying_whether_the_target_saw_it() -> None:
    pair = make_pair()
    stream = pair.hub.open_stream("t", GET, end_stream=True)
    pair.pump()
    pair.agent.reset_stream(
        stream,
        StreamErrorCode.TARGET_UNREACHABLE,
        "connection refused",
        may_have_reached_target=False,
    )
    _, hub_events = pair.pump()
    assert hub_events == [
        StreamReset(
            stream, StreamErrorCode.TARGET_UNREACHABLE, "connection refused", False
        )
    ]
    assert pair.hub.open_streams == 0


def test_both_ends_cancelling_at_once_is_not_an_error() -> None:
    pair = make_pair()
    stream = pair.hub.open_stream("t", POST)
    pair.pump()
    pair.hub.reset_stream(stream, StreamErrorCode.CANCELLED)
    pair.agent.reset_stream(stream, StreamErrorCode.TIMEOUT_AFTER_SENDING)
    agent_events, hub_events = pair.pump()
    assert agent_events == hub_events == []
    # Cancelling again, or a stream gone long ago, does nothing either.
    pair.hub.reset_stream(stream, StreamErrorCode.CANCELLED)
    assert pair.hub.data_to_send() == []


def test_data_arriving_after_a_reset_is_dropped_and_its_credit_returned() -> None:
    pair = make_pair(settings=TIGHT)
    stream = pair.hub.open_stream("t", POST)
    pair.pump()
    # The hub sends a full window while the agent resets: the DATA crosses
    # the RESET on the wire.
    pair.hub.send_data(stream, bytes(MAX_PAYLOAD))
    pair.agent.reset_stream(stream, StreamErrorCode.CANCELLED)
    agent_events, hub_events = pair.pump()
    assert agent_events == []
    assert hub_events == [
        StreamReset(stream, StreamErrorCode.CANCELLED, "", True),
        WindowUpdated(0),
    ]
    # The agent dropped the bytes and returned their session credit.
    assert pair.agent._recv_credit == 2 * MAX_PAYLOAD
    assert pair.hub._send_credit == 2 * MAX_PAYLOAD


def test_bytes_held_by_a_reset_stream_return_to_the_session() -> None:
    pair = make_pair(settings=TIGHT)
    stream = pair.hub.open_stream("t", POST)
    pair.hub.send_data(stream, bytes(MAX_PAYLOAD))
    pair.pump()
    assert pair.agent.unacknowledged(stream) == MAX_PAYLOAD
    pair.hub.reset_stream(stream, StreamErrorCode.CANCELLED)
    pair.pump()
    assert pair.agent.unacknowledged(stream) == 0
    # Acknowledging afterwards is harmless: the bytes were returned already.
    pair.agent.acknowledge_data(stream, MAX_PAYLOAD)
    assert pair.hub._send_credit == 2 * MAX_PAYLOAD


def test_reset_for_a_stream_already_finished_is_ignored() -> None:
    pair = make_pair()
    stream = pair.hub.open_stream("t", GET, end_stream=True)
    pair.pump()
    pair.agent.send_response(stream, OK, end_stream=True)
    pair.pump()
    frame = forge(
        pair.hub,
        Kind.RESET,
        encode_reset(Reset(StreamErrorCode.CANCELLED, True, "")),
        stream_id=stream,
    )
    assert pair.agent.receive_data(frame) == []


def test_reset_of_a_kept_closed_stream_is_ignored() -> None:
    pair = make_pair()
    stream = pair.hub.open_stream("t", GET, end_stream=True)
    pair.pump()
    pair.agent.send_response(stream, OK)
    pair.agent.send_data(stream, b"abc", end_stream=True)
    pair.pump()
    frame = forge(
        pair.agent,
        Kind.RESET,
        encode_reset(Reset(StreamErrorCode.CANCELLED, True, "")),
        stream_id=stream,
    )
    assert pair.hub.receive_data(frame) == []
    assert pair.hub.unacknowledged(stream) == 3


def test_response_arriving_after_the_hub_cancelled_is_dropped() -> None:
    pair = make_pair()
    stream = pair.hub.open_stream("t", GET, end_stream=True)
    pair.pump()
    pair.hub.reset_stream(stream, StreamErrorCode.CANCELLED)
    pair.agent.send_response(stream, OK)
    pair.agent.send_data(stream, b"late body")
    agent_events, hub_events = pair.pump()
    assert hub_events == []
    assert agent_events == [StreamReset(stream, StreamErrorCode.CANCELLED, "", True)]
    # The late body's session credit is counted as returned at once.
    assert pair.hub._pending_ack == len(b"late body")


# --------------------------------------------------------------------------
# The stream state table


@pytest.mark.parametrize("state", list(StreamState))
@pytest.mark.parametrize("event", list(_Input))
def test_every_state_and_input_pair_follows_the_table(
    state: StreamState, event: _Input
) -> None:
    pair = make_pair()
    stream = pair.hub.open_stream("t", POST)
    record = pair.hub._streams[stream]
    record.state = state
    record.unacked = 1  # keep a CLOSED stream in the table
    expected = _TRANSITIONS.get((state, event))
    if expected is None:
        with pytest.raises(LocalProtocolError, match=f"cannot {event.value}"):
            pair.hub._transition(record, event)
        assert record.state is state
    else:
        pair.hub._transition(record, event)
        assert record.state is expected


def test_state_table_matches_the_documented_transitions() -> None:
    s, i = StreamState, _Input
    assert _TRANSITIONS == {
        (s.OPEN, i.SEND_DATA): s.OPEN,
        (s.OPEN, i.RECV_DATA): s.OPEN,
        (s.OPEN, i.SEND_END): s.HALF_CLOSED_LOCAL,
        (s.OPEN, i.RECV_END): s.HALF_CLOSED_REMOTE,
        (s.HALF_CLOSED_LOCAL, i.RECV_DATA): s.HALF_CLOSED_LOCAL,
        (s.HALF_CLOSED_LOCAL, i.RECV_END): s.CLOSED,
        (s.HALF_CLOSED_REMOTE, i.SEND_DATA): s.HALF_CLOSED_REMOTE,
        (s.HALF_CLOSED_REMOTE, i.SEND_END): s.CLOSED,
    }


# --------------------------------------------------------------------------
# Overload and drain


def test_requests_beyond_the_limit_are_refused_as_overloaded() -> None:
    pair = make_pair(agent_settings=Settings(max_open_streams=2))
    first = pair.hub.open_stream("t", GET, end_stream=True)
    second = pair.hub.open_stream("t", GET, end_stream=True)
    third = pair.hub.open_stream("t", POST)
    pair.hub.send_data(third, b"body that will be dropped", end_stream=True)
    agent_events, hub_events = pair.pump()
    assert [e.stream_id for e in of_type(agent_events, RequestReceived)] == [
        first,
        second,
    ]
    (reset,) = of_type(hub_events, StreamReset)
    assert reset == StreamReset(
        third, StreamErrorCode.OVERLOADED, "too many streams open", False
    )
    # The refused body's credit went back; the agent keeps no state for it.
    assert pair.agent.stream_state(third) is None
    assert pair.agent._recv_credit + pair.agent._pending_ack == 4 * 1024 * 1024

    # Once a stream finishes, there is room again.
    pair.agent.send_response(first, OK, end_stream=True)
    pair.pump()
    fourth = pair.hub.open_stream("t", GET, end_stream=True)
    agent_events, _ = pair.pump()
    assert of_type(agent_events, RequestReceived)[0].stream_id == fourth


def test_draining_agent_refuses_new_requests_and_finishes_old_ones() -> None:
    pair = make_pair()
    old = pair.hub.open_stream("t", GET, end_stream=True)
    pair.pump()
    pair.agent.go_away("shutting down")
    assert pair.agent.local_going_away
    # The hub opens one more before it hears of the drain.
    late = pair.hub.open_stream("t", GET, end_stream=True)
    agent_events, hub_events = pair.pump()
    assert agent_events == []
    assert hub_events == [
        GoAwayReceived(old, "shutting down"),
        StreamReset(late, StreamErrorCode.DRAINING, "the agent is draining", False),
    ]
    assert pair.hub.remote_going_away
    with pytest.raises(LocalProtocolError, match="going away"):
        pair.hub.open_stream("t", GET)
    # The stream opened before the drain still completes.
    pair.agent.send_response(old, OK, end_stream=True)
    _, hub_events = pair.pump()
    assert hub_events == [ResponseReceived(old, OK, True), StreamEnded(old)]


def test_hub_going_away_opens_no_more_streams() -> None:
    pair = make_pair()
    pair.hub.go_away()
    with pytest.raises(LocalProtocolError, match="going away"):
        pair.hub.open_stream("t", GET)
    agent_events, _ = pair.pump()
    assert agent_events == [GoAwayReceived(0, "")]
    assert pair.agent.remote_going_away


# --------------------------------------------------------------------------
# Violations inside a stream reset only that stream


def _session_goes_on(pair: Pair) -> None:
    pair.hub.ping(b"still here")
    agent_events, hub_events = pair.pump()
    assert PingReceived(b"still here") in agent_events
    assert PongReceived(b"still here") in hub_events


def test_malformed_response_head_resets_only_that_stream() -> None:
    pair = make_pair()
    bad = pair.hub.open_stream("t", GET, end_stream=True)
    good = pair.hub.open_stream("t", GET, end_stream=True)
    pair.pump()
    head = encode_response_head(ResponseHead(200))
    frame = forge(pair.agent, Kind.RESPONSE, b"\x00\x10" + head[2:], stream_id=bad)
    events = pair.hub.receive_data(frame)
    assert events == [
        StreamReset(
            bad,
            StreamErrorCode.PROTOCOL_ERROR,
            "RESPONSE status 16 is outside 100-599",
            True,
        )
    ]
    (reset,) = pair.hub.data_to_send()
    assert reset[5] == Kind.RESET
    agent_events = pair.agent.receive_data(reset)
    assert of_type(agent_events, StreamReset)[0].code is StreamErrorCode.PROTOCOL_ERROR
    pair.agent.send_response(good, OK, end_stream=True)
    _, hub_events = pair.pump()
    assert hub_events == [ResponseReceived(good, OK, True), StreamEnded(good)]
    _session_goes_on(pair)


def test_second_response_head_resets_the_stream() -> None:
    pair = make_pair()
    stream = pair.hub.open_stream("t", GET, end_stream=True)
    pair.pump()
    pair.agent.send_response(stream, OK)
    pair.pump()
    frame = forge(pair.agent, Kind.RESPONSE, encode_response_head(OK), stream_id=stream)
    (event,) = pair.hub.receive_data(frame)
    assert event == StreamReset(
        stream, StreamErrorCode.PROTOCOL_ERROR, "RESPONSE out of turn", True
    )
    pair.hub.data_to_send()


def test_data_before_the_response_head_resets_the_stream() -> None:
    pair = make_pair()
    stream = pair.hub.open_stream("t", GET, end_stream=True)
    pair.pump()
    frame = forge(pair.agent, Kind.DATA, b"early", stream_id=stream)
    (event,) = pair.hub.receive_data(frame)
    assert event == StreamReset(
        stream, StreamErrorCode.PROTOCOL_ERROR, "DATA out of turn", True
    )
    # The dropped bytes' session credit is counted as returned.
    assert pair.hub._pending_ack == 5


def test_data_after_the_end_resets_the_stream() -> None:
    pair = make_pair()
    stream = pair.hub.open_stream("t", GET, end_stream=True)
    pair.pump()
    frame = forge(pair.hub, Kind.DATA, b"more", stream_id=stream)
    (event,) = pair.agent.receive_data(frame)
    assert isinstance(event, StreamReset)
    assert event.code is StreamErrorCode.PROTOCOL_ERROR


def replace_request(
    hub: Connection, payload: bytes, target: str = "t"
) -> tuple[int, bytes]:
    """Open a stream on the hub but swap its REQUEST for a forged one."""
    assert hub._sealer is not None
    counter = hub._sealer.counter
    stream = hub.open_stream("t", GET)
    hub.data_to_send()
    hub._sealer.counter = counter
    return stream, forge(hub, Kind.REQUEST, payload, stream_id=stream, target=target)


@pytest.mark.parametrize(
    ("payload", "target", "message"),
    [
        (b"\x00" + encode_request_head(GET)[4:], "t", "not an HTTP token"),
        (encode_request_head(GET) + b"!", "t", "trailing bytes"),
        (encode_request_head(GET), "", "names no target"),
    ],
)
def test_defective_request_is_refused_without_telling_the_user(
    payload: bytes, target: str, message: str
) -> None:
    pair = make_pair()
    stream, frame = replace_request(pair.hub, payload, target)
    assert pair.agent.receive_data(frame) == []
    assert pair.agent.stream_state(stream) is None
    _, hub_events = pair.pump()
    (reset,) = hub_events
    assert isinstance(reset, StreamReset)
    assert reset.code is StreamErrorCode.PROTOCOL_ERROR
    assert message in reset.message
    # Nothing was forwarded, so a retry is safe.
    assert reset.may_have_reached_target is False
    _session_goes_on(pair)


# --------------------------------------------------------------------------
# Violations of the session's rules end it


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda p: forge(p.hub, Kind.DATA, b"x", stream_id=7),
            "stream 7, never opened",
        ),
        (lambda p: forge(p.hub, Kind.RESET, b"\x00\x01\x00", stream_id=0), "never"),
        (lambda p: forge(p.hub, Kind.WINDOW, encode_window(1), stream_id=9), "never"),
        (lambda p: forge(p.hub, Kind.RESPONSE, b"", stream_id=1), "sent to the agent"),
        (lambda p: forge(p.hub, Kind.PING, b"", target="t"), "names a target"),
        (lambda p: forge(p.hub, Kind.PING, b"", stream_id=1), "PING frame on stream"),
        (lambda p: forge(p.hub, Kind.PING, bytes(MAX_PING + 1)), "over 64 bytes"),
        (lambda p: forge(p.hub, Kind.PONG, bytes(MAX_PING + 1)), "over 64 bytes"),
        (lambda p: forge(p.hub, Kind.INFO, b"{"), "not JSON"),
        (lambda p: forge(p.hub, Kind.INFO, b"\xff"), "not JSON"),
        (lambda p: forge(p.hub, Kind.INFO, b"[" * 60000), "not JSON"),
        (lambda p: forge(p.hub, Kind.INFO, b"[1]"), "not a JSON object"),
        (lambda p: forge(p.hub, Kind.CONFIRM, bytes(32)), "unexpected CONFIRM"),
        (lambda p: forge(p.hub, Kind.WINDOW, bytes(4)), "must not be zero"),
        (lambda p: forge(p.hub, Kind.GOAWAY, b"\x00"), "truncated"),
        (
            lambda p: forge(
                p.hub, Kind.REQUEST, encode_request_head(GET), stream_id=0, target="t"
            ),
            "reuses stream id 0",
        ),
    ],
)
def test_session_violations_end_the_session(
    build: Callable[[Pair], bytes], message: str
) -> None:
    pair = make_pair()
    frame = build(pair)
    with pytest.raises(RemoteProtocolError, match=message):
        pair.agent.receive_data(frame)
    assert pair.agent.state is ConnectionState.CLOSED
    with pytest.raises(LocalProtocolError, match="closed"):
        pair.agent.receive_data(b"")


def test_request_sent_to_the_hub_ends_the_session() -> None:
    pair = make_pair()
    frame = forge(
        pair.agent, Kind.REQUEST, encode_request_head(GET), stream_id=1, target="t"
    )
    with pytest.raises(MalformedFrame, match="REQUEST frame sent to the hub"):
        pair.hub.receive_data(frame)


def test_reused_stream_id_ends_the_session() -> None:
    pair = make_pair()
    stream = pair.hub.open_stream("t", GET, end_stream=True)
    pair.pump()
    frame = forge(
        pair.hub, Kind.REQUEST, encode_request_head(GET), stream_id=stream, target="t"
    )
    with pytest.raises(MalformedFrame, match=f"reuses stream id {stream}"):
        pair.agent.receive_data(frame)


def test_a_violation_voids_the_whole_chunk_it_arrived_in() -> None:
    # The error wins: a session that broke the rules is over, and the
    # caller must not act on half of what arrived with the bad frame.
    pair = make_pair()
    pair.hub.ping(b"a")
    (ping,) = pair.hub.data_to_send()
    bad = forge(pair.hub, Kind.INFO, b"[]")
    with pytest.raises(MalformedFrame):
        pair.agent.receive_data(ping + bad)


# --------------------------------------------------------------------------
# Local misuse raises LocalProtocolError and changes nothing


def _misuse_cases() -> list[tuple[str, str, Callable[[Connection], object]]]:
    def long_head() -> RequestHead:
        big = ((b"x", bytes(65000)), (b"y", bytes(1000)))
        return RequestHead("GET", "https", "a", "/", headers=big)

    return [
        ("agent", "only the hub opens", lambda c: c.open_stream("t", GET)),
        ("hub", "only the agent sends", lambda c: c.send_response(1, OK)),
        ("hub", "target name must be", lambda c: c.open_stream("", GET)),
        ("hub", "target name must be", lambda c: c.open_stream("x" * 64, GET)),
        ("hub", "cannot be encoded", lambda c: c.open_stream("té", GET)),
        (
            "hub",
            "cannot be encoded",
            lambda c: c.open_stream("t", RequestHead("GET", "ftp", "a", "/")),
        ),
        (
            "hub",
            "cannot be encoded",
            lambda c: c.open_stream("t", RequestHead("GET", "https", "é", "/")),
        ),
        (
            "hub",
            "is invalid",
            lambda c: c.open_stream("t", RequestHead("GET /", "https", "a", "/")),
        ),
        ("hub", "larger than one frame", lambda c: c.open_stream("t", long_head())),
        ("hub", "not open", lambda c: c.send_data(99, b"")),
        ("hub", "not open", lambda c: c.end_stream(99)),
        (
            "hub",
            "never opened",
            lambda c: c.reset_stream(99, StreamErrorCode.CANCELLED),
        ),
        ("hub", "never opened", lambda c: c.reset_stream(0, StreamErrorCode.CANCELLED)),
        ("hub", "negative", lambda c: c.acknowledge_data(1, -1)),
        ("hub", "over 64 bytes", lambda c: c.ping(bytes(MAX_PING + 1))),
        ("hub", "larger than one frame", lambda c: c.send_info({"x": "y" * 70000})),
        ("hub", "not JSON", lambda c: c.send_info({"x": object()})),
        ("hub", "not JSON", lambda c: c.send_info({"x": float("nan")})),
        ("agent", "not open", lambda c: c.send_response(5, OK)),
    ]


@pytest.mark.parametrize(("side", "message", "call"), _misuse_cases())
def test_local_misuse_raises_and_changes_nothing(
    side: str, message: str, call: Callable[[Connection], object]
) -> None:
    pair = make_pair()
    conn = pair.hub if side == "hub" else pair.agent
    before = state_of(conn)
    with pytest.raises(LocalProtocolError, match=message):
        call(conn)
    assert state_of(conn) == before


def test_stream_misuse_raises_and_changes_nothing() -> None:
    pair = make_pair()
    stream = pair.hub.open_stream("t", GET, end_stream=True)
    pair.pump()
    hub_before, agent_before = state_of(pair.hub), state_of(pair.agent)
    with pytest.raises(LocalProtocolError, match="cannot send data"):
        pair.hub.send_data(stream, b"x")
    with pytest.raises(LocalProtocolError, match="no head sent yet"):
        pair.agent.send_data(stream, b"x")
    with pytest.raises(LocalProtocolError, match="acknowledging 1 bytes"):
        pair.agent.acknowledge_data(stream, 1)
    with pytest.raises(LocalProtocolError, match="is invalid"):
        pair.agent.send_response(stream, ResponseHead(99))
    with pytest.raises(LocalProtocolError, match="cannot be encoded"):
        pair.agent.send_response(stream, ResponseHead(70000))
    too_big = ResponseHead(200, ((b"x", bytes(65000)), (b"y", bytes(1000))))
    with pytest.raises(LocalProtocolError, match="larger than one frame"):
        pair.agent.send_response(stream, too_big)
    assert state_of(pair.hub) == hub_before
    assert state_of(pair.agent) == agent_before

    pair.agent.send_response(stream, OK)
    agent_before = state_of(pair.agent)
    with pytest.raises(LocalProtocolError, match="response already sent"):
        pair.agent.send_response(stream, OK)
    assert state_of(pair.agent) == agent_before


def test_nothing_is_sent_on_a_closed_or_unfinished_session() -> None:
    pair = make_pair(handshake=False)
    for conn in pair:
        with pytest.raises(LocalProtocolError, match="handshake"):
            conn.send_info({})
        with pytest.raises(LocalProtocolError, match="handshake"):
            conn.go_away()
    pair.pump()
    pair.agent.send_info({"a": 1})
    pair.agent.close()
    assert pair.agent.state is ConnectionState.CLOSED
    assert pair.agent.data_to_send() == []
    with pytest.raises(LocalProtocolError, match="closed"):
        pair.agent.ping(b"")
    # Acknowledging after the end is harmless: there is nobody to tell.
    pair.agent.acknowledge_data(1, 0)


# --------------------------------------------------------------------------
# Session frames


def test_ping_is_answered_with_the_same_payload() -> None:
    pair = make_pair()
    pair.agent.ping(b"\x00" * MAX_PING)
    agent_events, hub_events = pair.pump()
    assert hub_events == [PingReceived(b"\x00" * MAX_PING)]
    assert agent_events == [PongReceived(b"\x00" * MAX_PING)]


def test_info_carries_a_json_object() -> None:
    pair = make_pair()
    info: dict[str, object] = {"version": "0.1.0", "targets": ["a", "b"], "n": 1}
    pair.agent.send_info(info)
    _, hub_events = pair.pump()
    assert hub_events == [InfoReceived(info)]


def test_last_received_follows_the_clock_on_whole_frames_only() -> None:
    pair = make_pair()
    start = pair.agent.last_received
    pair.clock.advance(5)
    pair.hub.ping(b"")
    (frame,) = pair.hub.data_to_send()
    pair.agent.receive_data(frame[:3])
    assert pair.agent.last_received == start
    assert pair.agent.buffered == 3
    pair.agent.receive_data(frame[3:])
    assert pair.agent.last_received == start + 5
    assert pair.agent.buffered == 0


def test_repr_names_the_role_state_and_stream_count() -> None:
    pair = make_pair()
    pair.hub.open_stream("t", GET)
    assert repr(pair.hub) == "<Connection hub open streams=1>"
    assert repr(pair.agent) == "<Connection agent open streams=0>"


# --------------------------------------------------------------------------
# Robustness


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=5), st.booleans())
def test_random_bytes_to_an_open_session_give_events_or_a_remote_error(
    pieces: list[bytes], to_hub: bool
) -> None:
    pair = make_pair()
    conn = pair.hub if to_hub else pair.agent
    try:
        for piece in pieces:
            conn.receive_data(piece)
    except RemoteProtocolError:
        assert conn.state is ConnectionState.CLOSED


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([k for k in Kind if k >= Kind.CONFIRM]),
    st.integers(0, 4),
    st.sampled_from([0, FLAG_END_STREAM]),
    st.binary(max_size=80),
    st.sampled_from(["", "t"]),
)
def test_authenticated_garbage_gives_events_or_a_remote_error(
    kind: Kind, stream_id: int, flags: int, payload: bytes, target: str
) -> None:
    # A peer that holds the keys but sends nonsense: every payload decoder
    # and every state check sees arbitrary input, and still only events or
    # a remote error come out.
    for receiver_is_agent in (True, False):
        pair = make_pair()
        pair.hub.open_stream("t", POST)
        pair.hub.open_stream("t", GET, end_stream=True)
        pair.pump()
        pair.agent.send_response(1, OK)
        pair.pump()
        sender = pair.hub if receiver_is_agent else pair.agent
        receiver = pair.agent if receiver_is_agent else pair.hub
        frame = forge(
            sender, kind, payload, stream_id=stream_id, flags=flags, target=target
        )
        try:
            receiver.receive_data(frame)
        except RemoteProtocolError:
            assert receiver.state is ConnectionState.CLOSED
        else:
            assert receiver.state is ConnectionState.OPEN


def test_oversized_payload_is_refused_before_decryption() -> None:
    pair = make_pair()
    frame = forge(pair.hub, Kind.DATA, bytes(MAX_PAYLOAD + 1), stream_id=0)
    with pytest.raises(FrameTooLarge):
        pair.agent.receive_data(frame)
