"""SocketDoorbell: rings across processes over Unix datagram sockets.

Every wait has a timeout and every check waits on an event, never a bare sleep.
Keys are unique per test, so tests never hear each other's listeners.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rxqueue.backends import _doorbell
from rxqueue.backends._doorbell import SocketDoorbell, channel_dir

pytestmark = pytest.mark.skipif(
    not hasattr(socket, "AF_UNIX") or sys.platform == "win32", reason="Unix sockets"
)


@pytest.fixture
def key() -> str:
    return f"/tmp/test-doorbell-{uuid.uuid4().hex}.db|default"


@pytest.fixture
def bells() -> Iterator[list[SocketDoorbell]]:
    made: list[SocketDoorbell] = []
    yield made
    for bell in made:
        bell.close()


def sockets(key: str) -> list[str]:
    try:
        return sorted(name for name in os.listdir(channel_dir(key)) if name.endswith(".sock"))
    except FileNotFoundError:
        return []


def exists(path: str) -> bool:
    return os.path.exists(path)


async def listening(bell: SocketDoorbell) -> None:
    """Open ``bell``'s listener in this loop (the first wait does it)."""
    assert not await bell.wait(0)


async def test_wait_times_out_without_a_ring(key: str, bells: list[SocketDoorbell]) -> None:
    bell = SocketDoorbell(key)
    bells.append(bell)
    assert not await bell.wait(0.01)
    assert len(sockets(key)) == 1


async def test_notify_wakes_a_local_waiter(key: str, bells: list[SocketDoorbell]) -> None:
    bell = SocketDoorbell(key)
    bells.append(bell)
    await listening(bell)
    waiter = asyncio.create_task(bell.wait(5))
    await asyncio.sleep(0)  # let it start waiting
    bell.notify()
    assert await asyncio.wait_for(waiter, 1)


async def test_a_ring_while_nobody_waits_is_kept(key: str, bells: list[SocketDoorbell]) -> None:
    listener, ringer = SocketDoorbell(key), SocketDoorbell(key)
    bells += [listener, ringer]
    await listening(listener)
    ringer.ring()
    assert await listener.wait(1)  # the datagram was queued; this wait finds it
    assert not await listener.wait(0)  # and consumed it


async def test_ring_wakes_another_listener_not_itself(
    key: str, bells: list[SocketDoorbell]
) -> None:
    a, b = SocketDoorbell(key), SocketDoorbell(key)
    bells += [a, b]
    await listening(a)
    await listening(b)
    assert len(sockets(key)) == 2
    waiter = asyncio.create_task(b.wait(5))
    await asyncio.sleep(0)
    a.ring()
    assert await asyncio.wait_for(waiter, 1)
    assert not await a.wait(0)  # its own ring does not reach it


async def test_ring_with_no_listeners_is_a_no_op(key: str) -> None:
    bell = SocketDoorbell(key)
    bell.ring()
    bell.notify()
    assert sockets(key) == []
    assert not exists(channel_dir(key))
    bell.close()


async def test_close_removes_its_file(key: str) -> None:
    a, b = SocketDoorbell(key), SocketDoorbell(key)
    await listening(a)
    await listening(b)
    assert len(sockets(key)) == 2
    a.close()
    assert len(sockets(key)) == 1
    b.close()
    assert sockets(key) == []
    b.ring()  # closed: does nothing, raises nothing
    assert not await b.wait(0)


async def test_ring_removes_the_file_of_a_dead_listener(
    key: str, bells: list[SocketDoorbell]
) -> None:
    # A socket bound and closed without unlinking: what a killed process leaves.
    os.makedirs(channel_dir(key), mode=0o700, exist_ok=True)
    stale = os.path.join(channel_dir(key), "999999999-1.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(stale)
    dead.close()
    live, ringer = SocketDoorbell(key), SocketDoorbell(key)
    bells += [live, ringer]
    await listening(live)
    ringer.ring()
    assert not exists(stale)
    assert await live.wait(1)  # the live one was still rung


async def test_a_full_listener_counts_as_rung(key: str, bells: list[SocketDoorbell]) -> None:
    listener, ringer = SocketDoorbell(key), SocketDoorbell(key)
    bells += [listener, ringer]
    await listening(listener)
    for _ in range(1000):  # far past any datagram queue: the extra rings are dropped
        ringer.ring()
    assert len(sockets(key)) == 1  # not mistaken for a dead listener
    assert await listener.wait(1)


def test_one_listener_per_event_loop(key: str) -> None:
    bell, ringer = SocketDoorbell(key), SocketDoorbell(key)
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        first.run_until_complete(listening(bell))
        second.run_until_complete(listening(bell))
        assert len(sockets(key)) == 2
        ringer.ring()
        assert first.run_until_complete(bell.wait(1))
        assert second.run_until_complete(bell.wait(1))
        first.close()
        asyncio.run(listening(bell))  # a fresh loop; the closed loop's listener is let go
        assert len(sockets(key)) == 2
    finally:
        bell.close()
        ringer.close()
        first.close()
        second.close()
    assert sockets(key) == []


async def test_degrades_to_in_process_when_sockets_fail(
    key: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A per-user directory that others may write in is refused.
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    monkeypatch.setattr(_doorbell, "_user_dir", lambda: str(shared))
    bell = SocketDoorbell(key)
    assert not await bell.wait(0)  # no raise
    assert list(shared.iterdir()) == []
    waiter = asyncio.create_task(bell.wait(5))
    await asyncio.sleep(0)
    bell.notify()  # no raise, still wakes this process
    assert await asyncio.wait_for(waiter, 1)
    bell.close()


LISTENER = textwrap.dedent(
    """
    import asyncio, sys
    from rxqueue.backends._doorbell import SocketDoorbell

    async def main():
        bell = SocketDoorbell(sys.argv[1])
        await bell.wait(0)  # opens the listener
        print("listening", flush=True)
        rung = await bell.wait(10)
        print("rung" if rung else "timeout", flush=True)
        bell.close()

    asyncio.run(main())
    """
)


@pytest.mark.slow
async def test_ring_wakes_a_listener_in_another_process(
    key: str, bells: list[SocketDoorbell]
) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LISTENER, key, stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    try:
        assert await asyncio.wait_for(child.stdout.readline(), 10) == b"listening\n"
        ringer = SocketDoorbell(key)
        bells.append(ringer)
        loop = asyncio.get_running_loop()
        started = loop.time()
        ringer.notify()
        assert await asyncio.wait_for(child.stdout.readline(), 5) == b"rung\n"
        assert loop.time() - started < 0.5
        assert await asyncio.wait_for(child.wait(), 5) == 0
        assert sockets(key) == []  # its close() removed its file
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
