"""Two multiplexer ends driven by random sequences of operations.

A Hypothesis state machine plays the hub and the agent at once: it opens
streams, sends bodies in chunks no larger than the window allows (and
checks that a larger one is refused without effect), answers, cancels from
either end, drains, consumes data, delivers the bytes in flight in random
prefixes, and now and then flips a bit of a frame in flight.

The model keeps, per stream, what each side sent and received and how each
side saw the stream end. It checks, after every step, that no credit is ever
negative, that unacknowledged bytes stay within the windows, and that the
receiver's books balance (credit + unacknowledged + acknowledged-but-not-yet-
returned = window). At the end it lets every stream finish and checks that
each ended exactly once on each side, that completed bodies arrived whole,
and that every byte of session credit came back.
"""

from __future__ import annotations

import random

import attrs
import hypothesis
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from support.pair import make_pair

from trustelem_relay._errors import (
    DecryptionFailed,
    FrameTooLarge,
    LocalProtocolError,
    MalformedFrame,
    NonceOutOfOrder,
    ReflectedFrame,
    StreamErrorCode,
)
from trustelem_relay._events import (
    DataReceived,
    Event,
    GoAwayReceived,
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
from trustelem_relay._frames import MAX_FRAME_LENGTH, MAX_PAYLOAD
from trustelem_relay._mux import Connection, ConnectionState, Settings, StreamState

SETTINGS = Settings(
    stream_window=MAX_PAYLOAD, session_window=2 * MAX_PAYLOAD, max_open_streams=3
)
HEAD = RequestHead("PUT", "https", "scim.corp", "/scim/v2/Users/1")
ANSWER = ResponseHead(200, ((b"etag", b'W/"1"'),))
TAMPER_ERRORS = (
    DecryptionFailed,
    NonceOutOfOrder,
    ReflectedFrame,
    MalformedFrame,
    FrameTooLarge,
)

#: Body bytes are slices of this, so that every chunk differs.
NOISE = random.Random(20).randbytes(1 << 20)

HUB, AGENT = "hub", "agent"
picks = st.integers(0, 1 << 16)
#: Chunk sizes; FILL means "exactly the window", OVER "one byte more".
FILL, OVER = -1, -2
sizes = st.one_of(
    st.sampled_from([FILL, OVER]),
    st.integers(0, 64),
    st.integers(0, MAX_PAYLOAD + 10),
)


def event_note(text: str) -> None:
    """Count an occurrence in Hypothesis' statistics (--hypothesis-show-statistics)."""
    hypothesis.event(text)


def feed_tampered(conn: Connection, frame: bytes, position: int) -> None:
    """Feed a frame changed at ``position``; it must raise, at once or soon."""
    assert conn.receive_data(frame) == []
    # Only a grown length prefix leaves the frame waiting; the bytes that
    # follow on the wire complete it, and then it fails.
    assert position < 4
    conn.receive_data(bytes(MAX_FRAME_LENGTH))


def noise(stream_id: int, offset: int, size: int) -> bytes:
    start = (stream_id * 7919 + offset) % (len(NOISE) - MAX_PAYLOAD - 11)
    return NOISE[start : start + size]


@attrs.define
class Side:
    """One side's view of one stream."""

    sent: bytearray = attrs.field(factory=bytearray)
    received: bytearray = attrs.field(factory=bytearray)
    head_sent: bool = False
    head_received: bool = False
    ended_sending: bool = False
    ended_receiving: bool = False
    unacked: int = 0
    #: How the stream ended for this side; must end up with exactly one.
    outcomes: list[str] = attrs.field(factory=list)

    @property
    def done(self) -> bool:
        return bool(self.outcomes)

    def note_end(self) -> None:
        if self.ended_sending and self.ended_receiving and not self.outcomes:
            self.outcomes.append("complete")


@attrs.define
class Model:
    """Both sides of one stream."""

    hub: Side = attrs.field(factory=Side)
    agent: Side = attrs.field(factory=Side)


class Wire:
    """Bytes in flight one way: whole frames plus the rest of a started one."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.partial = b""

    def __bool__(self) -> bool:
        return bool(self.frames or self.partial)

    def take(self, size: int) -> bytes:
        out = bytearray()
        while len(out) < size and self:
            if not self.partial:
                self.partial = self.frames.pop(0)
            need = size - len(out)
            out += self.partial[:need]
            self.partial = self.partial[need:]
        return bytes(out)

    def take_all(self) -> bytes:
        return self.take(1 << 62)


class MuxMachine(RuleBasedStateMachine):
    # ------------------------------------------------------------------
    # Set-up

    @initialize(seed=st.integers(0, 1 << 30), streams=st.integers(0, 3))
    def start(self, seed: int, streams: int) -> None:
        self.seed = seed
        self.sessions = 0
        self.tampered = False
        self.new_session()
        # Start some runs with requests already on their way, so that short
        # runs still reach the interesting states.
        for _ in range(streams):
            self.open_stream(False)

    def new_session(self) -> None:
        self.sessions += 1
        pair = make_pair(settings=SETTINGS, seed=self.seed + self.sessions)
        self.conns = {HUB: pair.hub, AGENT: pair.agent}
        self.wires = {HUB: Wire(), AGENT: Wire()}  # keyed by receiver
        self.streams: dict[int, Model] = {}
        self.pings = {HUB: 0, AGENT: 0}
        self.pongs = {HUB: 0, AGENT: 0}

    @property
    def hub(self) -> Connection:
        return self.conns[HUB]

    @property
    def agent(self) -> Connection:
        return self.conns[AGENT]

    def collect(self) -> None:
        """Move what each side queued onto the wire towards the other."""
        self.wires[AGENT].frames += self.hub.data_to_send()
        self.wires[HUB].frames += self.agent.data_to_send()

    def side(self, name: str, model: Model) -> Side:
        return model.hub if name == HUB else model.agent

    def pick(self, candidates: list[int], index: int) -> int:
        return sorted(candidates)[index % len(candidates)]

    # ------------------------------------------------------------------
    # Events

    def deliver(self, receiver: str, data: bytes) -> None:
        events = self.conns[receiver].receive_data(data)
        for event in events:
            self.handle(receiver, event)
        self.collect()

    def handle(self, name: str, event: Event) -> None:
        if isinstance(event, PingReceived):
            return
        if isinstance(event, PongReceived):
            self.pongs[name] += 1
            return
        if isinstance(event, GoAwayReceived):
            assert self.conns[AGENT if name == HUB else HUB].local_going_away
            assert self.conns[name].remote_going_away
            return
        if isinstance(event, WindowUpdated):
            return
        stream_id = event.stream_id  # type: ignore[attr-defined]
        model = self.streams[stream_id]
        me = self.side(name, model)
        peer = self.side(AGENT if name == HUB else HUB, model)
        # A side that saw its stream end hears nothing more of it.
        assert not me.done, (name, event)

        if isinstance(event, RequestReceived):
            assert name == AGENT
            assert (event.target, event.head) == ("t", HEAD)
            me.head_received = True
            return
        if isinstance(event, ResponseReceived):
            assert name == HUB
            assert peer.head_sent
            assert event.head == ANSWER
            me.head_received = True
            return
        if isinstance(event, DataReceived):
            assert me.head_received
            me.received += event.data
            me.unacked += len(event.data)
            # Nothing lost, nothing reordered: always a prefix of what left.
            assert peer.sent.startswith(me.received)
            return
        if isinstance(event, StreamEnded):
            assert peer.ended_sending
            assert me.received == peer.sent
            me.ended_receiving = True
            me.note_end()
            return
        assert isinstance(event, StreamReset)
        # Honest peers never break a stream's rules.
        assert event.code is not StreamErrorCode.PROTOCOL_ERROR
        if event.code in (StreamErrorCode.OVERLOADED, StreamErrorCode.DRAINING):
            assert name == HUB
            assert not peer.head_received
            assert not event.may_have_reached_target
        if event.code is StreamErrorCode.DRAINING:
            assert self.agent.local_going_away
        me.outcomes.append(f"reset by peer: {event.code.name}")
        event_note(f"{name} heard a reset: {event.code.name}")
        me.unacked = 0

    # ------------------------------------------------------------------
    # The hub's operations

    def hub_sending(self) -> list[int]:
        return [
            sid
            for sid, m in self.streams.items()
            if not m.hub.done and not m.hub.ended_sending
        ]

    @rule(end=st.booleans())
    def open_stream(self, end: bool) -> None:
        hub = self.hub
        if hub.local_going_away or hub.remote_going_away:
            sealer = hub._sealer
            assert sealer is not None
            before = (hub._last_stream_id, sealer.counter)
            try:
                hub.open_stream("t", HEAD, end_stream=end)
            except LocalProtocolError:
                pass
            else:
                raise AssertionError("opened a stream while going away")
            assert (hub._last_stream_id, sealer.counter) == before
            return
        stream_id = hub.open_stream("t", HEAD, end_stream=end)
        assert stream_id not in self.streams
        model = self.streams[stream_id] = Model()
        model.hub.head_sent = True
        model.hub.ended_sending = end
        self.collect()

    def send_chunk(self, name: str, stream_id: int, size: int) -> None:
        conn = self.conns[name]
        me = self.side(name, self.streams[stream_id])
        window = conn.send_window(stream_id)
        assert 0 <= window <= MAX_PAYLOAD
        size = {FILL: window, OVER: window + 1}.get(size, size)
        data = noise(stream_id, len(me.sent), size)
        if size > window:
            # Flow control: a chunk over the window is refused, no effect.
            counter = conn._sealer.counter  # type: ignore[union-attr]
            try:
                conn.send_data(stream_id, data)
            except LocalProtocolError:
                event_note("a chunk over the window was refused")
            else:
                raise AssertionError("sent more than the window")
            assert conn.send_window(stream_id) == window
            assert conn._sealer.counter == counter  # type: ignore[union-attr]
            return
        conn.send_data(stream_id, data)
        me.sent += data
        self.collect()

    def end(self, name: str, stream_id: int) -> None:
        self.conns[name].end_stream(stream_id)
        me = self.side(name, self.streams[stream_id])
        me.ended_sending = True
        me.note_end()
        self.collect()

    @precondition(lambda self: self.hub_sending())
    @rule(index=picks, size=sizes)
    def send_request_chunk(self, index: int, size: int) -> None:
        self.send_chunk(HUB, self.pick(self.hub_sending(), index), size)

    @precondition(lambda self: self.hub_sending())
    @rule(index=picks)
    def end_request(self, index: int) -> None:
        self.end(HUB, self.pick(self.hub_sending(), index))

    # ------------------------------------------------------------------
    # The agent's operations

    def agent_to_answer(self) -> list[int]:
        return [
            sid
            for sid, m in self.streams.items()
            if m.agent.head_received and not m.agent.done and not m.agent.head_sent
        ]

    def agent_sending(self) -> list[int]:
        return [
            sid
            for sid, m in self.streams.items()
            if m.agent.head_sent and not m.agent.done and not m.agent.ended_sending
        ]

    @precondition(lambda self: self.agent_to_answer())
    @rule(index=picks, end=st.booleans())
    def respond(self, index: int, end: bool) -> None:
        self.answer(self.pick(self.agent_to_answer(), index), end)

    def answer(self, stream_id: int, end: bool) -> None:
        self.agent.send_response(stream_id, ANSWER, end_stream=end)
        me = self.streams[stream_id].agent
        me.head_sent = True
        if end:
            me.ended_sending = True
            me.note_end()
        self.collect()

    @precondition(lambda self: self.agent_sending())
    @rule(index=picks, size=sizes)
    def send_response_chunk(self, index: int, size: int) -> None:
        self.send_chunk(AGENT, self.pick(self.agent_sending(), index), size)

    @precondition(lambda self: self.agent_sending())
    @rule(index=picks)
    def end_response(self, index: int) -> None:
        self.end(AGENT, self.pick(self.agent_sending(), index))

    # ------------------------------------------------------------------
    # Cancelling, from either end

    def cancellable(self, name: str) -> list[int]:
        # Live streams, plus finished ones still holding unconsumed bytes
        # (cancelling those sends nothing but must release the bytes).
        out = []
        for sid, model in self.streams.items():
            me = self.side(name, model)
            known = name == HUB or me.head_received
            if known and (not me.done or (me.outcomes == ["complete"] and me.unacked)):
                out.append(sid)
        return out

    def cancel(self, name: str, stream_id: int, reached: bool) -> None:
        conn = self.conns[name]
        me = self.side(name, self.streams[stream_id])
        conn.reset_stream(
            stream_id,
            StreamErrorCode.CANCELLED,
            "cancelled",
            may_have_reached_target=reached,
        )
        if not me.done:
            me.outcomes.append("reset here")
        elif me.unacked:
            event_note("a finished stream's unconsumed bytes were released")
        me.unacked = 0
        assert conn.stream_state(stream_id) is None
        self.collect()

    @precondition(lambda self: self.cancellable(HUB))
    @rule(index=picks)
    def cancel_from_hub(self, index: int) -> None:
        self.cancel(HUB, self.pick(self.cancellable(HUB), index), True)

    @precondition(lambda self: self.cancellable(AGENT))
    @rule(index=picks, reached=st.booleans())
    def cancel_from_agent(self, index: int, reached: bool) -> None:
        self.cancel(AGENT, self.pick(self.cancellable(AGENT), index), reached)

    # ------------------------------------------------------------------
    # Delivery, consumption, session frames

    prefixes = st.one_of(
        st.integers(1, 100), st.integers(1, 3 * MAX_PAYLOAD), st.just(1 << 30)
    )

    @precondition(lambda self: self.wires[HUB])
    @rule(size=prefixes)
    def deliver_to_hub(self, size: int) -> None:
        self.deliver(HUB, self.wires[HUB].take(size))

    @precondition(lambda self: self.wires[AGENT])
    @rule(size=prefixes)
    def deliver_to_agent(self, size: int) -> None:
        self.deliver(AGENT, self.wires[AGENT].take(size))

    def unacked(self, name: str) -> list[int]:
        return [
            sid for sid, m in self.streams.items() if self.side(name, m).unacked > 0
        ]

    def consume(self, name: str, index: int, part: float) -> None:
        stream_id = self.pick(self.unacked(name), index)
        me = self.side(name, self.streams[stream_id])
        size = max(1, round(me.unacked * part))
        self.conns[name].acknowledge_data(stream_id, size)
        me.unacked -= size
        self.collect()

    @precondition(lambda self: self.unacked(HUB))
    @rule(index=picks, part=st.floats(0.0, 1.0))
    def consume_on_hub(self, index: int, part: float) -> None:
        self.consume(HUB, index, part)

    @precondition(lambda self: self.unacked(AGENT))
    @rule(index=picks, part=st.floats(0.0, 1.0))
    def consume_on_agent(self, index: int, part: float) -> None:
        self.consume(AGENT, index, part)

    @rule(from_hub=st.booleans())
    def ping(self, from_hub: bool) -> None:
        name = HUB if from_hub else AGENT
        self.conns[name].ping(b"%d" % self.pings[name])
        self.pings[name] += 1
        self.collect()

    # Draining stops new streams; it waits until a few exist, or runs would
    # mostly test sessions with nothing in them.
    @precondition(lambda self: len(self.streams) >= 3 and not self.hub.local_going_away)
    @rule()
    def drain_hub(self) -> None:
        self.hub.go_away("hub draining")
        self.collect()

    @precondition(
        lambda self: len(self.streams) >= 3 and not self.agent.local_going_away
    )
    @rule()
    def drain_agent(self) -> None:
        self.agent.go_away("agent draining")
        self.collect()

    # ------------------------------------------------------------------
    # Tampering ends the session

    @precondition(
        lambda self: (
            not self.tampered
            and len(self.streams) >= 2
            and (self.wires[HUB].frames or self.wires[AGENT].frames)
        )
    )
    @rule(
        to_hub=st.booleans(),
        index=picks,
        position=st.integers(0, 1 << 20),
        bit=st.integers(0, 7),
    )
    def tamper(self, to_hub: bool, index: int, position: int, bit: int) -> None:
        receiver = HUB if to_hub else AGENT
        if not self.wires[receiver].frames:
            receiver = AGENT if to_hub else HUB
        wire = self.wires[receiver]
        victim = index % len(wire.frames)

        # Everything before the victim arrives intact and is handled.
        before = wire.partial + b"".join(wire.frames[:victim])
        frame = bytearray(wire.frames[victim])
        wire.frames = wire.frames[victim + 1 :]
        wire.partial = b""
        self.deliver(receiver, before)

        frame[position % len(frame)] ^= 1 << bit
        conn = self.conns[receiver]
        with pytest.raises(TAMPER_ERRORS) as caught:
            feed_tampered(conn, bytes(frame), position % len(frame))
        event_note(f"tampering raised {type(caught.value).__name__}")
        assert conn.state is ConnectionState.CLOSED
        # Once per run is enough: the rest of the run uses a fresh session.
        self.tampered = True
        self.new_session()

    # ------------------------------------------------------------------
    # Invariants

    @invariant()
    def credit_is_never_negative_and_books_balance(self) -> None:
        for name, conn in self.conns.items():
            assert conn._send_credit >= 0
            assert conn._recv_credit >= 0
            held = 0
            for stream in conn._streams.values():
                assert stream.send_credit >= 0
                assert stream.recv_credit >= 0
                assert 0 <= stream.unacked <= SETTINGS.stream_window
                held += stream.unacked
                if stream.state in (StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL):
                    balance = stream.recv_credit + stream.unacked + stream.pending_ack
                    assert balance == SETTINGS.stream_window
            assert held <= SETTINGS.session_window
            books = conn._recv_credit + held + conn._pending_ack
            assert books == SETTINGS.session_window, name
        # A sender never believes it has more credit than its receiver gave.
        assert self.hub._send_credit <= self.agent._recv_credit
        assert self.agent._send_credit <= self.hub._recv_credit

    @invariant()
    def model_and_connections_agree_on_unacknowledged_bytes(self) -> None:
        for name, conn in self.conns.items():
            for sid, model in self.streams.items():
                assert conn.unacknowledged(sid) == self.side(name, model).unacked

    @invariant()
    def each_side_ends_a_stream_at_most_once(self) -> None:
        for model in self.streams.values():
            assert len(model.hub.outcomes) <= 1
            assert len(model.agent.outcomes) <= 1

    # ------------------------------------------------------------------
    # The end: let everything finish, then check the books

    def settle(self) -> None:
        for _ in range(1000):
            moved = False
            for receiver in (HUB, AGENT):
                if self.wires[receiver]:
                    self.deliver(receiver, self.wires[receiver].take_all())
                    moved = True
            for name in (HUB, AGENT):
                for sid in self.unacked(name):
                    me = self.side(name, self.streams[sid])
                    if me.outcomes == ["complete"] and sid % 2 == 0:
                        # The user drops a finished body it never read: the
                        # bytes must be released all the same.
                        self.cancel(name, sid, True)
                    else:
                        self.conns[name].acknowledge_data(sid, me.unacked)
                        me.unacked = 0
                    moved = True
            for sid in self.hub_sending():
                self.end(HUB, sid)
                moved = True
            for sid in self.agent_to_answer():
                self.answer(sid, True)
                moved = True
            for sid in self.agent_sending():
                self.end(AGENT, sid)
                moved = True
            self.collect()
            if not moved:
                return
        raise AssertionError("the session never settled")

    def teardown(self) -> None:
        if not hasattr(self, "conns"):
            return
        self.settle()
        for model in self.streams.values():
            # Exactly one ending on each side that knew the stream.
            assert len(model.hub.outcomes) == 1
            if model.agent.head_received:
                assert len(model.agent.outcomes) == 1
            else:
                assert model.agent.outcomes == []
            # A completed body arrived whole.
            if model.hub.outcomes == ["complete"]:
                assert model.hub.received == model.agent.sent
                if len(model.hub.received) > MAX_PAYLOAD:
                    event_note("a response body spanned several windows")
            if model.agent.outcomes == ["complete"]:
                assert model.agent.received == model.hub.sent
        for conn in self.conns.values():
            assert conn.state is ConnectionState.OPEN
            assert conn._streams == {}
            assert conn.open_streams == 0
        # Every byte of session credit came back (up to the last batch).
        for sender, receiver in ((HUB, AGENT), (AGENT, HUB)):
            recv = self.conns[receiver]
            assert self.conns[sender]._send_credit == recv._recv_credit
            assert recv._recv_credit + recv._pending_ack == SETTINGS.session_window
        assert self.pongs == self.pings


MuxMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=50, deadline=None
)
TestMuxStateMachine = MuxMachine.TestCase
