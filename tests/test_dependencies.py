"""Task dependencies in the store (``Capability.DEPENDENCIES``): the primitive
workflows are built on, on every backend that declares it.

A task with ``depends_on`` is stored Waiting until every dependency is Done, then
claimed with their results (in order) as its payload, its delay counted from its
release; a dependency Killed or Cancelled, by any path, kills its dependants, all
the way down, naming the task that failed first. A Done may spawn tasks, stored
only if that Done is recorded, which a Waiting task then also joins.

Tests act as workers through ``_claim`` and ``report``, with a ManualClock where
time matters: every step is explicit, nothing waits on timing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rxqueue import Capability, InvalidOption, ManualClock, Status, Task, WorkerBuilder
from rxqueue.acks import AckBatch
from rxqueue.backends.base import Backend, ClaimingBackend
from rxqueue.task import Cancelled, Done, Killed, Retry, new_task_id
from tests.conftest import FACTORIES, BackendKit, require


def manual() -> ManualClock:
    """A clock a minute ahead of real time: tasks built now (run_at defaults to
    time.time()) are due by it; it moves only when a test says so."""
    return ManualClock(time.time() + 60)


async def make(kit: BackendKit, *needs: Capability, **options: Any) -> ClaimingBackend:
    """A backend to act as a worker on, by ``_claim`` and ``report``; a backend that
    claims otherwise (a custom fetcher) is covered by the worker-driven test."""
    backend = await kit.make(**options)
    require(backend, Capability.DEPENDENCIES, Capability.GET, *needs)
    if not isinstance(backend, ClaimingBackend):
        pytest.skip(f"{type(backend).__name__} has no _claim to act as a worker with")
    return backend


def job(args: Any, *depends_on: str, task_id: str | None = None, **fields: Any) -> Task[Any]:
    return Task(id=task_id or new_task_id(), args=args, depends_on=tuple(depends_on), **fields)


async def claim(backend: ClaimingBackend, worker: str = "w") -> dict[str, Task[Any]]:
    """Everything claimable now, by id."""
    return {task.id: task for task in await backend._claim(worker, 100)}


async def ack(backend: ClaimingBackend, *updates: tuple[Task[Any], Any], worker: str = "w") -> None:
    refused = await backend.report(AckBatch.of(worker, updates))
    assert list(refused) == []


def done(backend: Backend, result: Any, **spawn: Any) -> Done:
    return Done(backend.codec.encode(result), **spawn)


def inputs(backend: Backend, task: Task[Any]) -> Any:
    """The payload a claimed task hands its handler (its dependencies' results)."""
    assert isinstance(task.args, bytes)
    return backend.codec.decode(task.args)


async def state(backend: Backend, task_id: str) -> tuple[Status, str | None]:
    task = await backend.get(task_id)
    assert task is not None, f"task {task_id} is not stored"
    return task.status, task.last_error


# --- waiting, release, inputs ---------------------------------------------------------------


async def test_a_worker_runs_a_chain_and_a_join(kit: BackendKit) -> None:
    """Through a real worker, on every backend that declares dependencies."""
    backend = await kit.make()
    require(backend, Capability.DEPENDENCIES, Capability.GET)
    left, right = job({"side": "left", "n": 2}), job({"side": "right", "n": 3})
    product = job("product", left.id, right.id)
    final = job("final", product.id)
    await backend.send_many([left, right, product, final])
    seen: list[Any] = []

    async def handle(payload: Any) -> Any:
        seen.append(payload)
        if isinstance(payload, dict):
            return payload["n"]
        return payload[0] * payload[-1] if len(payload) == 2 else {"total": payload[0]}

    worker = WorkerBuilder("w").backend(backend).build(handle)
    async with asyncio.timeout(20):
        summary = await worker.run_until_idle()
    assert summary.done == 4
    assert seen[2:] == [[2, 3], [6]]
    got = await backend.get(final.id)
    assert got is not None and (got.status, got.result) == (Status.DONE, {"total": 6})


async def test_a_dependant_waits_for_its_parents_then_gets_their_results_in_order(
    kit: BackendKit,
) -> None:
    backend = await make(kit, Capability.LIST)
    stored = job({"n": 1})
    await backend.send(stored)
    same_push = job({"n": 2})
    child = job("placeholder", same_push.id, stored.id)  # inputs in this order
    await backend.send_many([same_push, child])
    assert await state(backend, child.id) == (Status.WAITING, None)
    stats = await backend.stats()
    assert (stats[Status.WAITING], stats[Status.PENDING]) == (1, 2)

    claimed = await claim(backend)
    assert set(claimed) == {stored.id, same_push.id}  # never the waiting one
    await ack(backend, (claimed[stored.id], done(backend, {"from": "stored"})))
    assert await state(backend, child.id) == (Status.WAITING, None)
    assert await claim(backend) == {}
    await ack(backend, (claimed[same_push.id], done(backend, ["same", "push"])))
    assert await state(backend, child.id) == (Status.PENDING, None)
    assert (await backend.stats())[Status.WAITING] == 0

    [got] = (await claim(backend)).values()
    assert got.id == child.id
    assert inputs(backend, got) == [["same", "push"], {"from": "stored"}]
    shown = await backend.get(child.id)
    assert shown is not None and shown.args == "placeholder"  # the stored payload stays
    await ack(backend, (got, done(backend, "joined")))
    assert await state(backend, child.id) == (Status.DONE, None)


async def test_a_parent_without_a_result_gives_none(kit: BackendKit) -> None:
    backend = await make(kit)
    parent = job(1)
    child = job(2, parent.id)
    await backend.send_many([parent, child])
    [task] = (await claim(backend)).values()
    await ack(backend, (task, Done(None)))
    [got] = (await claim(backend)).values()
    assert inputs(backend, got) == [None]


async def test_an_unknown_dependency_is_refused_and_nothing_is_stored(kit: BackendKit) -> None:
    backend = await make(kit, Capability.LIST)
    parent = job("p")
    child = job("c", parent.id, "no-such-task")
    with pytest.raises(InvalidOption, match=r"depends on 'no-such-task', which is not stored"):
        await backend.send_many([parent, child])
    assert await backend.get(parent.id) is None and await backend.get(child.id) is None
    assert sum((await backend.stats()).values()) == 0
    with pytest.raises(InvalidOption, match="cannot depend on itself"):
        await backend.send(job("c", "me", task_id="me"))


async def test_dependencies_already_done_release_at_once(kit: BackendKit) -> None:
    clock = manual()
    backend = await make(kit, clock=clock)
    parent = job("p")
    await backend.send(parent)
    [task] = (await claim(backend)).values()
    await ack(backend, (task, done(backend, 7)))
    clock.advance(100)
    child = job("c", parent.id, created_at=clock(), run_at=clock() + 5)
    await backend.send(child)
    got = await backend.get(child.id)
    assert got is not None and (got.status, got.run_at) == (Status.PENDING, clock() + 5)
    clock.advance(5)
    [claimed] = (await claim(backend)).values()
    assert inputs(backend, claimed) == [7]


@pytest.mark.parametrize("how", ["killed", "cancelled"])
async def test_a_dependency_already_failed_kills_at_once(kit: BackendKit, how: str) -> None:
    backend = await make(kit)
    require(backend, Capability.MANAGE, Capability.CANCEL)
    parent = job("p")
    await backend.send(parent)
    if how == "killed":
        await backend.kill(parent.id, "boom")
        reason = f"dependency {parent.id} ended Killed: boom"
    else:
        await backend.cancel(parent.id, "no")
        reason = f"dependency {parent.id} ended Cancelled: cancelled: no"
    child = job("c", parent.id)
    grandchild = job("g", child.id)
    await backend.send_many([child, grandchild])
    assert await state(backend, child.id) == (Status.KILLED, reason)
    assert await state(backend, grandchild.id) == (Status.KILLED, reason)  # the first failure
    assert await claim(backend) == {}


async def test_delay_counts_from_release(kit: BackendKit) -> None:
    clock = manual()
    backend = await make(kit, clock=clock)
    start = clock()
    parent = job("p")
    child = job("c", parent.id, created_at=start, run_at=start + 30)
    await backend.send_many([parent, child])
    [task] = (await claim(backend)).values()
    clock.advance(100)  # the parent takes 100 s
    await ack(backend, (task, done(backend, 1)))
    got = await backend.get(child.id)
    assert got is not None and (got.status, got.run_at) == (Status.PENDING, start + 130)
    clock.advance(29)
    assert await claim(backend) == {}
    clock.advance(1)
    assert list(await claim(backend)) == [child.id]


# --- failure travels down the graph, whatever path ends a task ------------------------------


async def chain(backend: ClaimingBackend) -> tuple[Task[Any], Task[Any], Task[Any], Task[Any]]:
    """a -> b -> c, and d waiting for both a stored Done task x and c."""
    x, a = job("x"), job("a")
    await backend.send_many([x, a])
    claimed = await claim(backend)
    await ack(backend, (claimed[x.id], done(backend, "x")))
    b = job("b", a.id)
    c = job("c", b.id)
    d = job("d", x.id, c.id)
    await backend.send_many([b, c, d])
    return claimed[a.id], b, c, d


async def assert_killed_by(
    backend: Backend, failed: str, ended: str, victims: Sequence[Task[Any]], error: str | None
) -> None:
    source = await backend.get(failed)
    assert source is not None and source.done_at is not None
    reason = f"dependency {failed} ended {ended}" + (f": {error}" if error else "")
    for victim in victims:
        got = await backend.get(victim.id)
        assert got is not None
        assert (got.status, got.last_error) == (Status.KILLED, reason), victim.args
        assert got.done_at == source.done_at


async def test_a_killed_parent_kills_its_descendants(kit: BackendKit) -> None:
    backend = await make(kit, Capability.LIST)
    a, b, c, d = await chain(backend)
    await ack(backend, (a, Killed("boom")))
    await assert_killed_by(backend, a.id, "Killed", [b, c, d], "boom")
    stats = await backend.stats()
    assert (stats[Status.KILLED], stats[Status.WAITING], stats[Status.DONE]) == (4, 0, 1)
    assert await claim(backend) == {}


async def test_an_acked_cancel_kills_its_descendants(kit: BackendKit) -> None:
    backend = await make(kit)
    a, b, c, d = await chain(backend)
    await ack(backend, (a, Cancelled("stop")))
    await assert_killed_by(backend, a.id, "Cancelled", [b, c, d], "cancelled: stop")


async def test_a_retry_is_not_a_failure(kit: BackendKit) -> None:
    clock = manual()
    backend = await make(kit, clock=clock)
    a, b, _, _ = await chain(backend)
    await ack(backend, (a, Retry(at=clock(), error="again")))
    assert await state(backend, b.id) == (Status.WAITING, None)
    [again] = (await claim(backend)).values()
    await ack(backend, (again, done(backend, "a")))
    assert await state(backend, b.id) == (Status.PENDING, None)


async def test_kill_of_a_parent_and_of_a_waiting_task(kit: BackendKit) -> None:
    backend = await make(kit)
    require(backend, Capability.MANAGE)
    a, b, c, d = await chain(backend)
    await backend.kill(c.id, "not wanted")  # a waiting task: its own dependants follow
    assert await state(backend, c.id) == (Status.KILLED, "not wanted")
    await assert_killed_by(backend, c.id, "Killed", [d], "not wanted")
    assert await state(backend, b.id) == (Status.WAITING, None)
    await backend.kill(a.id, "abort")  # claimed: its worker's outcome will be ignored
    await assert_killed_by(backend, a.id, "Killed", [b], "abort")


async def test_cancel_of_a_waiting_task_and_of_a_parent(kit: BackendKit) -> None:
    backend = await make(kit)
    require(backend, Capability.CANCEL)
    parent = job("p")
    b = job("b", parent.id)
    c = job("c", b.id)
    await backend.send_many([parent, b, c])
    assert await backend.cancel(b.id, "changed my mind") is Status.CANCELLED
    assert await state(backend, b.id) == (Status.CANCELLED, "cancelled: changed my mind")
    await assert_killed_by(backend, b.id, "Cancelled", [c], "cancelled: changed my mind")
    other = job("o", parent.id)
    await backend.send(other)
    assert await backend.cancel(parent.id) is Status.CANCELLED  # Pending: at once
    await assert_killed_by(
        backend, parent.id, "Cancelled", [other], "cancelled: cancelled by request"
    )


async def test_an_expired_lease_at_max_attempts_kills_descendants(kit: BackendKit) -> None:
    clock = manual()
    backend = await make(kit, clock=clock, lease_timeout=30)
    require(backend, Capability.LEASES)
    parent = job("p", max_attempts=1)
    child = job("c", parent.id)
    await backend.send_many([parent, child])
    await backend.register_worker("doomed")
    assert [task.id for task in await backend._claim("doomed", 10)] == [parent.id]
    clock.advance(31)
    assert await backend.reclaim() == 1
    got = await backend.get(parent.id)
    assert got is not None and got.status is Status.KILLED and got.last_error
    await assert_killed_by(backend, parent.id, "Killed", [child], got.last_error)


async def test_an_expired_lease_with_attempts_left_keeps_waiting(kit: BackendKit) -> None:
    clock = manual()
    backend = await make(kit, clock=clock, lease_timeout=30)
    require(backend, Capability.LEASES)
    parent = job("p", max_attempts=2)
    child = job("c", parent.id)
    await backend.send_many([parent, child])
    await backend.register_worker("doomed")
    await backend._claim("doomed", 10)
    clock.advance(31)
    assert await backend.reclaim() == 1
    assert await state(backend, child.id) == (Status.WAITING, None)
    [again] = (await claim(backend)).values()
    await ack(backend, (again, done(backend, "second try")))
    [got] = (await claim(backend)).values()
    assert inputs(backend, got) == ["second try"]


# --- spawn: a Done's fan-out, joined by a waiting task -------------------------------------------


def spawned(backend: Backend, *payloads: Any) -> tuple[Task[Any], ...]:
    """Tasks as a worker spawns them: payloads encoded, in the backend's queue."""
    return tuple(
        Task(args=backend.codec.encode(payload), queue=backend.queue) for payload in payloads
    )


async def test_spawned_tasks_are_stored_with_the_done_and_joined(kit: BackendKit) -> None:
    backend = await make(kit)
    parent = job("split")
    join = job("collect", parent.id)
    await backend.send_many([parent, join])
    [task] = (await claim(backend)).values()
    fan = spawned(backend, "one", "two", "three")
    await ack(backend, (task, done(backend, "head", spawn=fan, join=join.id)))
    assert await state(backend, join.id) == (Status.WAITING, None)  # waits for the fan too
    claimed = await claim(backend)
    assert set(claimed) == {each.id for each in fan}
    assert [inputs(backend, claimed[each.id]) for each in fan] == ["one", "two", "three"]
    # Finished out of order; the join's inputs stay in spawn order.
    await ack(backend, (claimed[fan[2].id], done(backend, 3)))
    await ack(backend, (claimed[fan[0].id], done(backend, 1)))
    assert await state(backend, join.id) == (Status.WAITING, None)
    await ack(backend, (claimed[fan[1].id], done(backend, 2)))
    [got] = (await claim(backend)).values()
    assert got.id == join.id and inputs(backend, got) == ["head", 1, 2, 3]


async def test_a_refused_done_spawns_nothing(kit: BackendKit) -> None:
    backend = await make(kit)
    parent = job("split")
    join = job("collect", parent.id)
    await backend.send_many([parent, join])
    [task] = (await claim(backend)).values()
    fan = spawned(backend, "one")
    stale = AckBatch.of("intruder", [(task, done(backend, "head", spawn=fan, join=join.id))])
    assert list(await backend.report(stale)) == [task.id]  # not its claim: lease lost
    assert await backend.get(fan[0].id) is None
    assert await state(backend, task.id) == (Status.QUEUED, None)
    await ack(backend, (task, done(backend, "head")))  # the real holder, spawning nothing
    [got] = (await claim(backend)).values()
    assert got.id == join.id and inputs(backend, got) == ["head"]


async def test_a_failed_spawned_task_kills_the_join(kit: BackendKit) -> None:
    backend = await make(kit)
    parent = job("split")
    join = job("collect", parent.id)
    await backend.send_many([parent, join])
    [task] = (await claim(backend)).values()
    fan = spawned(backend, "one", "two")
    await ack(backend, (task, done(backend, "head", spawn=fan, join=join.id)))
    claimed = await claim(backend)
    await ack(backend, (claimed[fan[1].id], Killed("bad input")))
    await assert_killed_by(backend, fan[1].id, "Killed", [join], "bad input")


# --- vacuum, family ----------------------------------------------------------------------------


async def test_vacuum_keeps_a_done_parent_while_its_child_is_unfinished(kit: BackendKit) -> None:
    backend = await make(kit, Capability.MANAGE, Capability.LIST)
    needed, alone, late = job("needed"), job("alone"), job("late")
    child = job("child", needed.id, late.id)
    await backend.send_many([needed, alone, late, child])
    claimed = await claim(backend)
    await ack(
        backend,
        (claimed[needed.id], done(backend, "kept")),
        (claimed[alone.id], done(backend, "gone")),
    )
    assert await backend.vacuum() == 1
    assert await backend.get(alone.id) is None and await backend.get(needed.id) is not None
    await ack(backend, (claimed[late.id], done(backend, "late")))
    [got] = (await claim(backend)).values()
    assert inputs(backend, got) == ["kept", "late"]
    await ack(backend, (got, done(backend, "all")))
    assert await backend.vacuum() == 3
    assert sum((await backend.stats()).values()) == 0


async def test_family_is_a_run_and_its_steps(kit: BackendKit) -> None:
    clock = manual()
    backend = await make(kit, Capability.LIST, clock=clock)
    ids = ["run1/b", "run1", "run10", "run1x", "other/run1/c", "run1/a", "run", "run1/a/z"]
    for n, task_id in enumerate(ids):
        created = clock() + n
        await backend.send(job(n, task_id=task_id, created_at=created, run_at=created))
    family = await backend.family("run1")
    assert [task.id for task in family] == ["run1/b", "run1", "run1/a", "run1/a/z"]
    assert [task.args for task in family] == [0, 1, 5, 7]  # decoded, as get shows them
    assert await backend.family("nothing") == []


# --- the property: any small DAG, any outcomes, any order ---------------------------------------


@dataclass(frozen=True)
class Dag:
    parents: tuple[tuple[int, ...], ...]  # per node, its dependencies (earlier nodes), in order
    fails: frozenset[int]  # nodes whose own attempt is acked Killed
    second: int  # nodes from here on are pushed later, after `after` acks
    after: int


@st.composite
def dags(draw: st.DrawFn) -> Dag:
    size = draw(st.integers(1, 8))
    parents = tuple(
        tuple(draw(st.lists(st.integers(0, n - 1), unique=True, max_size=3))) if n else ()
        for n in range(size)
    )
    fails = frozenset(draw(st.sets(st.integers(0, size - 1), max_size=size)))
    return Dag(parents, fails, draw(st.integers(1, size)), draw(st.integers(0, size)))


def expected(dag: Dag) -> dict[int, tuple[Status, set[int]]]:
    """Per node: its final status, and which failed nodes may be named as the cause."""
    out: dict[int, tuple[Status, set[int]]] = {}
    for node, parents in enumerate(dag.parents):
        causes = {c for p in parents if out[p][0] is Status.KILLED for c in out[p][1]}
        if causes:
            out[node] = (Status.KILLED, causes)
        elif node in dag.fails:
            out[node] = (Status.KILLED, {node})
        else:
            out[node] = (Status.DONE, set())
    return out


async def run_dag(backend: ClaimingBackend, dag: Dag, order: st.DataObject) -> None:
    ids = [f"{new_task_id()}-{node}" for node in range(len(dag.parents))]
    now = time.time()  # no delay, exactly: claim order is then by id, run after run
    tasks = [
        job(
            f"node {node}",
            *(ids[p] for p in parents),
            task_id=ids[node],
            created_at=now,
            run_at=now,
        )
        for node, parents in enumerate(dag.parents)
    ]
    await backend.send_many(tasks[: dag.second])
    acked = 0
    ran: list[int] = []
    pushed_rest = dag.second >= len(tasks)
    while True:
        if not pushed_rest and acked >= dag.after:
            await backend.send_many(tasks[dag.second :])
            pushed_rest = True
        claimed = await backend._claim("w", order.draw(st.integers(1, 3), label="claim"))
        if not claimed:
            if pushed_rest:
                break
            await backend.send_many(tasks[dag.second :])
            pushed_rest = True
            continue
        nodes = [ids.index(task.id) for task in claimed]
        for index in order.draw(st.permutations(range(len(claimed))), label="ack order"):
            task, node = claimed[index], nodes[index]
            ran.append(node)
            parents = dag.parents[node]
            want = [f"result {p}" for p in parents] if parents else f"node {node}"
            assert inputs(backend, task) == want, (node, dag)
            outcome = (
                Killed(f"boom {node}") if node in dag.fails else done(backend, f"result {node}")
            )
            await ack(backend, (task, outcome))
            acked += 1
    assert len(ran) == len(set(ran)), f"a node ran twice: {ran}"
    for node, (status, causes) in expected(dag).items():
        got = await backend.get(ids[node])
        assert got is not None and got.status is status, (node, got, dag)
        if status is Status.DONE:
            assert node in ran
        elif causes == {node}:
            assert got.last_error == f"boom {node}"
        else:
            assert node not in ran, (node, dag)
            named = [
                c
                for c in causes
                if got.last_error == (f"dependency {ids[c]} ended Killed: boom {c}")
            ]
            assert named, (node, got.last_error, causes, dag)
    assert not await backend.list(status=Status.WAITING)


EXAMPLES = {"memory": 60, "sqlite": 25, "postgres": 10}


def test_any_dag_ends_in_the_states_its_parents_imply(kit: BackendKit) -> None:
    """Each example on a fresh store (its own event loop): a sync test running the
    hypothesis property, with fewer examples on the slower stores."""
    factory = FACTORIES[kit.name]

    async def scenario(dag: Dag | None, data: st.DataObject | None) -> frozenset[Capability]:
        """Run one example (``dag`` None: only report the capabilities) on a fresh
        store, cleaned up here, in this example's loop."""
        cleanups = len(kit.cleanups)
        backend = await factory(kit, clock=time.time, queue="dags")
        try:
            if dag is not None and data is not None:
                assert isinstance(backend, ClaimingBackend)
                await run_dag(backend, dag, data)
            return frozenset(backend.capabilities)
        finally:
            await backend.close()
            while len(kit.cleanups) > cleanups:
                await kit.cleanups.pop()()

    capabilities = asyncio.run(scenario(None, None))
    missing = {Capability.DEPENDENCIES, Capability.GET, Capability.LIST} - capabilities
    if missing:
        pytest.skip(f"{kit.name} does not declare {', '.join(sorted(missing))}")

    @settings(
        max_examples=EXAMPLES.get(kit.name, 10),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(dag=dags(), data=st.data())
    def check(dag: Dag, data: st.DataObject) -> None:
        asyncio.run(scenario(dag, data))

    check()
