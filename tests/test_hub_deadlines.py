"""How the hub times out requests waiting for their answer.

While the hub serves, one task watches every waiting request's deadline
(``Hub._expire_requests``); without it, a request waits under a deadline
scope of its own. Both end a wait with ``trio.TooSlowError`` at the
deadline, exactly, and leave an answer that came in time alone. The whole
relay's timeouts are in test_relay_faults.py.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trustelem_relay._hub import Hub
from trustelem_relay._hub_session import Pending


async def wait_times(hub: Hub, timeouts: list[float]) -> dict[float, float | None]:
    """Wait for one request per timeout, none ever answered; return when
    each timed out (None if it did not)."""
    start = trio.current_time()
    ended: dict[float, float | None] = {}

    async def one(timeout: float) -> None:
        try:
            await hub._wait_for_answer(Pending("r", 10), start + timeout)
        except trio.TooSlowError:
            ended[timeout] = trio.current_time() - start
        else:
            ended[timeout] = None

    async with trio.open_nursery() as nursery:
        for timeout in timeouts:
            nursery.start_soon(one, timeout)
            await trio.testing.wait_all_tasks_blocked()
    return ended


@pytest.mark.parametrize("watched", [True, False])
async def test_each_wait_ends_at_its_deadline(
    autojump_clock: trio.testing.MockClock, watched: bool
) -> None:
    hub = Hub()
    async with trio.open_nursery() as nursery:
        if watched:
            nursery.start_soon(hub._expire_requests)
            await trio.testing.wait_all_tasks_blocked()
        assert (hub._expiry_wake is not None) is watched
        assert await wait_times(hub, [9.0, 3.0, 6.0, 3.0]) == {3.0: 3, 6.0: 6, 9.0: 9}
        nursery.cancel_scope.cancel()
    assert hub._expiry_wake is None
    assert not hub._waiting


async def test_an_answer_in_time_is_kept_though_its_deadline_passes_unseen(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Answered (done) before the deadline, its task not yet resumed when
    # the watcher looks at the deadline: as with a deadline scope, the
    # answer wins. The other one, never answered, times out.
    hub = Hub()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub._expire_requests)
        await trio.testing.wait_all_tasks_blocked()
        deadline = trio.current_time() + 5
        answered, silent = Pending("a", 10), Pending("b", 10)
        for pending in (answered, silent):
            pending.deadline = deadline
            hub._waiting.add(pending)
        hub._next_expiry = deadline
        assert hub._expiry_wake is not None
        hub._expiry_wake.set()
        answered.done.set()
        await trio.sleep_until(deadline)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert not answered.timed_out
    assert silent.timed_out
    assert silent.done.is_set()
