"""Workflows on every backend that declares Capability.DEPENDENCIES.

Chains pass results along; DAG nodes run once their parents are Done and get
their results in depends_on order; a failed step kills its dependants and the
run, naming it; a SIGKILLed worker loses nothing and never reruns a finished
step; and a property: any DAG, any failure pattern, any stop point, every node
ends once, in the state its parents imply.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rxqueue import (
    Abort,
    BackendBuilder,
    BuildError,
    Capability,
    DagFlow,
    InvalidOption,
    ManualClock,
    Router,
    Status,
    TaskContext,
    TaskNotFound,
    UnsupportedOperation,
    WorkerBuilder,
    Workflow,
    cancel_workflow,
    events,
    workflow_status,
)
from rxqueue.backends.base import Backend
from rxqueue.backends.memory import MemoryBackend
from tests.conftest import BackendKit, require

RUN_LIMIT = 30.0
SLOW_POLL = {"poll_interval": 60.0, "max_poll_interval": 60.0}


async def workflows_backend(kit: BackendKit, **options: Any) -> Backend:
    backend = await kit.make(**options)
    require(backend, Capability.DEPENDENCIES, Capability.GET)
    return backend


async def run(backend: Backend, flow: Any, *, name: str = "w", concurrency: int = 8) -> Any:
    worker = WorkerBuilder(name).backend(backend).concurrency(concurrency).build(flow)
    async with asyncio.timeout(RUN_LIMIT):
        return await worker.run_until_idle()


async def add_one(n: int) -> int:
    return n + 1


async def double(n: int) -> int:
    return n * 2


def as_text(n: int) -> str:  # a plain function: runs in a thread
    return f"n={n}"


# --- behaviour, on every backend -------------------------------------------------------------


async def test_a_chain_passes_each_result_to_the_next_step(kit: BackendKit) -> None:
    backend = await workflows_backend(kit)
    flow = Workflow("onboard").then(add_one).then(double).then(as_text)
    run_id = await flow.push(backend, 4)
    assert (await backend.get(run_id)).status is Status.WAITING  # type: ignore[union-attr]
    await run(backend, flow)
    record = await backend.wait_for(run_id, timeout=RUN_LIMIT)
    assert (record.status, record.result) == (Status.DONE, "n=10")
    status = await workflow_status(backend, run_id)
    assert [(s.name, s.status, s.attempts, s.result) for s in status.steps] == [
        ("1-add_one", Status.DONE, 1, 5),
        ("2-double", Status.DONE, 1, 10),
        ("3-as_text", Status.DONE, 1, "n=10"),
    ]
    assert (status.workflow, status.status, status.result) == ("onboard", Status.DONE, "n=10")
    assert "3-as_text" in status._repr_html_() and "3-as_text" in str(status)


async def test_a_dag_fans_out_to_100_nodes_and_joins_them_in_order(kit: BackendKit) -> None:
    backend = await workflows_backend(kit)
    dag = DagFlow("fan")
    root = dag.node(add_one, name="root")
    branches = []
    for index in range(100):

        async def branch(n: int, index: int = index) -> int:
            return n * 1000 + index

        branches.append(dag.node(branch, name=f"b{index}").depends_on(root))

    async def join(*results: int) -> list[int]:
        return list(results)

    dag.node(join).depends_on(*branches)
    run_id = await dag.push(backend, 1)
    summary = await run(backend, dag)
    assert summary.done == 1 + 100 + 1 + 1  # root, branches, join, the run
    record = await backend.wait_for(run_id, timeout=RUN_LIMIT)
    assert record.result == [2000 + index for index in range(100)]


async def test_dag_nodes_get_their_parents_results_in_depends_on_order(kit: BackendKit) -> None:
    backend = await workflows_backend(kit)
    dag = DagFlow("report")
    users = dag.node(add_one, name="users")
    orders = dag.node(double, name="orders")

    async def join(orders: int, users: int, ctx: TaskContext) -> dict[str, Any]:
        return {"orders": orders, "users": users, "step": ctx.task_id.rsplit("/", 1)[1]}

    dag.node(join).depends_on(orders, users)
    dag.node(as_text, name="text").depends_on(users)  # a second sink
    run_id = await dag.push(backend, 10)
    await run(backend, dag)
    record = await backend.wait_for(run_id, timeout=RUN_LIMIT)
    assert record.result == {"join": {"orders": 20, "users": 11, "step": "join"}, "text": "n=11"}


async def test_a_killed_step_kills_its_dependants_and_the_run_naming_it(kit: BackendKit) -> None:
    backend = await workflows_backend(kit)
    ran: list[str] = []

    async def refuse(n: int) -> int:
        ran.append("refuse")
        raise Abort("the card was declined")

    async def after(n: int) -> int:
        ran.append("after")
        return n

    flow = Workflow("pay").then(add_one).then(refuse).then(after).then(after)
    run_id = await flow.push(backend, 1)
    await run(backend, flow)
    record = await backend.wait_for(run_id, timeout=RUN_LIMIT)
    failed = f"{run_id}/2-refuse"
    assert record.status is Status.KILLED
    assert record.last_error is not None and record.last_error.startswith(
        f"dependency {failed} ended Killed: "
    )
    assert "the card was declined" in record.last_error
    assert ran == ["refuse"]
    status = await workflow_status(backend, run_id)
    assert [(s.name, s.status) for s in status.steps] == [
        ("1-add_one", Status.DONE),
        ("2-refuse", Status.KILLED),
        ("3-after", Status.KILLED),
        ("4-after", Status.KILLED),
    ]
    assert status.steps[3].last_error == record.last_error  # the first failure, not its echo


async def test_steps_retry_with_backoff_like_any_task(kit: BackendKit) -> None:
    backend = await workflows_backend(kit)
    attempts: Counter[str] = Counter()

    async def flaky(n: int, ctx: TaskContext) -> int:
        attempts[ctx.task_id] += 1
        if ctx.attempt < 2:
            raise RuntimeError("not yet")
        return n + 100

    flow = Workflow("flaky").then(flaky, max_attempts=3).then(add_one)
    run_id = await flow.push(backend, 1)
    worker = WorkerBuilder("w").backend(backend).build(flow)
    # The retry waits out its backoff (a second or so): run until the run is Done.
    async with asyncio.timeout(RUN_LIMIT):
        task = asyncio.ensure_future(worker.run())
        record = await backend.wait_for(run_id)
        worker.stop()
        await task
    assert (record.status, record.result) == (Status.DONE, 102)
    assert attempts[f"{run_id}/1-flaky"] == 2


async def test_delay_for_holds_the_next_step_after_the_previous_finished(
    kit: BackendKit,
) -> None:
    clock = ManualClock(1_000_000.0)
    backend = await workflows_backend(kit, clock=clock)
    flow = Workflow("later").then(add_one).delay_for(30).then(double)
    run_id = await flow.push(backend, 1)
    clock.advance(5)  # the delay counts from when the first step finishes, not the push
    worker = WorkerBuilder("w").backend(backend).idle_horizon(1).build(flow)
    async with asyncio.timeout(RUN_LIMIT):
        await worker.run_until_idle()
    first, second = (await workflow_status(backend, run_id)).steps
    assert first.status is Status.DONE and second.status is Status.PENDING
    held = await backend.get(second.id)
    assert held is not None and held.run_at == pytest.approx(1_000_005.0 + 30)
    clock.advance(29)
    async with asyncio.timeout(RUN_LIMIT):
        await WorkerBuilder("w2").backend(backend).idle_horizon(0.5).build(flow).run_until_idle()
    assert (await backend.get(second.id)).status is Status.PENDING  # type: ignore[union-attr]
    clock.advance(1)
    await run(backend, flow, name="w3")
    assert (await backend.wait_for(run_id, timeout=RUN_LIMIT)).result == 4


async def test_filter_map_fans_out_items_and_collect_or_fold_join_them(kit: BackendKit) -> None:
    backend = await workflows_backend(kit)

    def split(text: str) -> list[str | None]:
        return [*text.split(","), None]  # None items are skipped

    async def length(word: str) -> int | None:
        return None if word == "skip" else len(word)  # None results are dropped

    collect = Workflow("lengths").then(split).filter_map(length).collect()
    fold = Workflow("total").then(split).filter_map(length).fold(lambda acc, n: acc + n, 1000)
    direct = Workflow("direct").filter_map(double).collect()  # the input itself fans out

    def nothing(text: str) -> list[int]:
        return []

    empty = Workflow("empty").then(nothing).filter_map(double).collect()
    ids = [
        await collect.push(backend, "a,bb,skip,dddd"),
        await fold.push(backend, "a,bb,skip,dddd"),
        await direct.push(backend, [1, None, 3]),
        await direct.push(backend, []),  # nothing to fan out: the join gets []
        await collect.push(backend, ""),  # one empty word: its length, 0
        await empty.push(backend, "x"),  # a step that returns no items: the join gets []
    ]
    await run(backend, Router(collect, fold, direct, empty))
    results = [(await backend.wait_for(i, timeout=RUN_LIMIT)).result for i in ids]
    assert results == [[1, 2, 4], 1007, [2, 6], [], [0], []]
    steps = (await workflow_status(backend, ids[0])).steps
    assert [s.name for s in steps] == [
        "1-split", "2-length/0", "2-length/1", "2-length/2", "2-length/3", "3-collect",
    ]  # fmt: skip


async def test_one_worker_serves_several_flows_and_plain_tasks(kit: BackendKit) -> None:
    backend = await workflows_backend(kit)
    a = Workflow("a").then(add_one)
    b = DagFlow("b")
    b.node(double)
    plain: list[Any] = []

    async def handler(payload: Any) -> str:
        plain.append(payload)
        return "plain"

    run_a, run_b = await a.push(backend, 1), await b.push(backend, 1)
    task_id = await backend.push({"x": 1})
    await run(backend, Router(a, b, default=handler))
    assert (await backend.wait_for(run_a, timeout=RUN_LIMIT)).result == 2
    assert (await backend.wait_for(run_b, timeout=RUN_LIMIT)).result == 2
    assert (await backend.wait_for(task_id, timeout=RUN_LIMIT)).result == "plain"
    assert plain == [{"x": 1}]


async def test_a_step_of_a_flow_the_worker_does_not_serve_is_killed_clearly(
    kit: BackendKit,
) -> None:
    backend = await workflows_backend(kit)
    served, other = Workflow("served").then(add_one), Workflow("other").then(add_one)
    run_id = await other.push(backend, 1)
    await run(backend, served)
    record = await backend.wait_for(run_id, timeout=RUN_LIMIT)
    assert record.status is Status.KILLED
    assert "workflow 'other', which this worker does not serve (serving: served)" in (
        record.last_error or ""
    )


async def test_a_bad_input_for_a_fan_out_is_refused_before_anything_is_stored(
    kit: BackendKit,
) -> None:
    backend = await workflows_backend(kit)
    with pytest.raises(InvalidOption, match="needs a list to fan out, got int"):
        await Workflow("direct").filter_map(double).collect().push(backend, 5, run_id="r1")
    assert await backend.get("r1") is None


# --- definitions refused with clear errors -----------------------------------------------------


def test_cycles_unknown_nodes_and_bad_signatures_are_refused() -> None:
    dag = DagFlow("loop")
    a, b = dag.node(add_one, name="a"), dag.node(double, name="b")
    c = dag.node(as_text, name="c")
    a.depends_on(c)
    c.depends_on(b)
    b.depends_on(a)
    with pytest.raises(BuildError, match=r"dag 'loop' has a cycle: a -> c -> b -> a"):
        dag.validate()

    stranger = DagFlow("other").node(add_one)
    mine = DagFlow("mine")
    mine.node(double).depends_on(stranger)
    with pytest.raises(BuildError, match="which is not a node of this dag"):
        mine.validate()

    async def two(a: int, b: int) -> int:
        return a + b

    wrong = DagFlow("arity")
    first = wrong.node(add_one)
    wrong.node(two).depends_on(first)
    with pytest.raises(BuildError, match=r"two\(a, b\) must take one input"):
        wrong.validate()

    with pytest.raises(BuildError, match="already has a node named 'add_one'; pass name="):
        first.dag.node(add_one)
    with pytest.raises(BuildError, match="has no nodes"):
        DagFlow("empty").validate()
    with pytest.raises(BuildError, match=r"filter_map\(\) must be followed by fold\(\) or collect"):
        Workflow("w").filter_map(add_one).then(add_one)._steps()
    with pytest.raises(BuildError, match=r"collect\(\) must follow filter_map"):
        Workflow("w").then(add_one).collect()._steps()
    with pytest.raises(BuildError, match="ends with delay_for"):
        Workflow("w").then(add_one).delay_for(3)._steps()
    with pytest.raises(InvalidOption, match="workflow name must be"):
        Workflow("no spaces")
    with pytest.raises(BuildError, match="Router takes Workflow or DagFlow"):
        Router(add_one)  # type: ignore[arg-type]


def test_to_dot_draws_the_graph() -> None:
    dag = DagFlow("report")
    users, orders = dag.node(add_one, name="users"), dag.node(double, name="orders", queue="gpu")
    dag.node(as_text, name="join").depends_on(users, orders)
    assert dag.to_dot() == (
        'digraph "report" {\n  rankdir=LR;\n  "users" [label="users"];\n'
        '  "orders" [label="orders\\n(queue gpu)"];\n  "join" [label="join"];\n'
        '  "users" -> "join";\n  "orders" -> "join";\n}\n'
    )


async def test_a_backend_without_dependencies_refuses_workflows_clearly() -> None:
    backend = (
        BackendBuilder()
        .database(object())
        .fetcher(lambda db, cfg, demand: None)
        .sink(lambda db, cfg: lambda task: None)
        .build()
    )
    with pytest.raises(UnsupportedOperation, match=r"does not declare Capability\.DEPENDENCIES"):
        await Workflow("w").then(add_one).push(backend, 1)


async def test_dag_nodes_may_run_in_other_queues_on_sql_stores(kit: BackendKit) -> None:
    if kit.name not in ("sqlite", "postgres"):
        pytest.skip(f"{kit.name}: one queue per store")
    backend = await workflows_backend(kit)
    gpu: Backend
    if kit.name == "postgres":  # the same schema, another queue
        from rxqueue.backends.postgres import PostgresBackend

        assert isinstance(backend, PostgresBackend)
        # Polling too slow to matter: the released step must ring its queue's doorbell.
        gpu = PostgresBackend(
            backend._server.dsn, schema=backend.schema, queue="gpu", **SLOW_POLL
        )
    else:
        from rxqueue.backends.sqlite import SqliteBackend

        assert isinstance(backend, SqliteBackend)
        gpu = SqliteBackend(backend.path, queue="gpu", **SLOW_POLL)
    kit.created.append(gpu)
    dag = DagFlow("split")
    cpu_node = dag.node(add_one, name="cpu")
    dag.node(double, name="gpu", queue="gpu").depends_on(cpu_node)
    away_started = asyncio.Event()
    away_worker = WorkerBuilder("away").backend(gpu).build(dag)
    away_worker.events.subscribe(
        on_next=lambda e: away_started.set() if isinstance(e, events.Idle) else None
    )
    async with asyncio.timeout(RUN_LIMIT):
        away = asyncio.ensure_future(away_worker.run())
        await away_started.wait()  # idle, polling only every minute from now on
        run_id = await dag.push(backend, 1)
        home = asyncio.ensure_future(WorkerBuilder("home").backend(backend).build(dag).run())
        record = await backend.wait_for(run_id)
        for worker_task in (home, away):
            worker_task.cancel()
        await asyncio.gather(home, away, return_exceptions=True)
    assert record.result == 4
    steps = {s.name: s.queue for s in (await workflow_status(backend, run_id)).steps}
    assert steps == {"cpu": "default", "gpu": "gpu"}


# --- a crash mid-workflow ------------------------------------------------------------------------

PROC = Path(__file__).with_name("workflow_proc.py")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_sigkilled_worker_mid_workflow_loses_nothing_and_reruns_no_finished_step(
    tmp_path: Path,
) -> None:
    from rxqueue.backends.sqlite import SqliteBackend
    from tests.workflow_proc import CHAIN

    db, runs = tmp_path / "tasks.db", tmp_path / "runs.txt"

    async def push() -> list[str]:
        async with SqliteBackend(db) as backend:
            return [await CHAIN.push(backend, n * 100) for n in range(40)]

    run_ids = asyncio.run(push())
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen(
        [sys.executable, str(PROC), str(db), str(runs), "60"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "progress"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate(timeout=30)
    with sqlite3.connect(db) as conn:
        finished = {row[0] for row in conn.execute("SELECT id FROM tasks WHERE status = 'Done'")}
        held = {row[0] for row in conn.execute("SELECT id FROM tasks WHERE lock_by IS NOT NULL")}
    before = Counter(runs.read_text().split())
    assert finished and len(finished) < 40 * 6

    async def survive() -> list[Any]:
        clock = ManualClock(time.time() + 61)  # past the dead worker's 60 s lease
        async with SqliteBackend(db, clock=clock) as backend:
            await backend.reclaim()
            from tests import workflow_proc

            workflow_proc.RUNS_FILE = str(runs)
            worker = WorkerBuilder("heir").backend(backend).concurrency(8).build(CHAIN)
            async with asyncio.timeout(RUN_LIMIT):
                await worker.run_until_idle()
            return [await backend.get(run_id) for run_id in run_ids]

    records = asyncio.run(survive())
    assert [(r.status, r.result) for r in records] == [  # type: ignore[union-attr]
        (Status.DONE, n * 100 + 5) for n in range(40)
    ]
    after = Counter(runs.read_text().split()) - before
    assert not set(after) & finished, "a step that had finished ran again"
    assert set(after) & before.keys() <= held  # only steps in flight at the kill ran twice
    assert sum((before + after).values()) >= 40 * 5


# --- the property: any DAG, any failures, any stop point -----------------------------------------


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[tuple[int, ...]], set[int], int]:
    size = draw(st.integers(1, 12))
    parents = [
        tuple(sorted(draw(st.sets(st.integers(0, index - 1), max_size=3)))) if index else ()
        for index in range(size)
    ]
    failing = draw(st.sets(st.integers(0, size - 1), max_size=3))
    stop_after = draw(st.integers(0, size))
    return parents, failing, stop_after


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=dags())
def test_every_node_ends_once_in_the_state_its_parents_imply(
    case: tuple[list[tuple[int, ...]], set[int], int],
) -> None:
    parents, failing, stop_after = case
    asyncio.run(_run_case(MemoryBackend(), parents, failing, stop_after))


@pytest.mark.slow
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=dags())
def test_every_node_ends_once_on_sqlite_too(
    case: tuple[list[tuple[int, ...]], set[int], int], tmp_path_factory: pytest.TempPathFactory
) -> None:
    from rxqueue.backends.sqlite import SqliteBackend

    parents, failing, stop_after = case
    path = tmp_path_factory.mktemp("dag") / "tasks.db"
    asyncio.run(_run_case(SqliteBackend(path), parents, failing, stop_after))


async def _run_case(
    backend: Backend, parents: list[tuple[int, ...]], failing: set[int], stop_after: int
) -> None:
    calls: Counter[int] = Counter()
    dag = DagFlow("prop")
    nodes = []
    for index, mine in enumerate(parents):

        async def step(*inputs: Any, index: int = index) -> int:
            calls[index] += 1
            if index in failing:
                raise Abort(f"node {index} fails")
            return index

        nodes.append(dag.node(step, name=f"n{index}").depends_on(*(nodes[p] for p in mine)))
    async with backend:
        run_id = await dag.push(backend, None)
        # A first worker stops after `stop_after` steps; a second one finishes the run.
        first = WorkerBuilder("first").backend(backend).concurrency(1).build(dag)
        seen = 0

        def count(event: Any) -> None:
            nonlocal seen
            seen += 1
            if seen >= stop_after:
                first.stop()

        if stop_after:
            first.events.subscribe(on_next=lambda e: count(e) if hasattr(e, "attempt") else None)
            async with asyncio.timeout(RUN_LIMIT):
                await first.run_until_idle()
        second = WorkerBuilder("second").backend(backend).concurrency(4).build(dag)
        async with asyncio.timeout(RUN_LIMIT):
            await second.run_until_idle()
        status = await workflow_status(backend, run_id)
    by_name = {s.name: s for s in status.steps}

    failed: set[int] = set()
    for index, mine in enumerate(parents):  # parents come first
        if index in failing or any(p in failed for p in mine):
            failed.add(index)
    for index, mine in enumerate(parents):
        step = by_name[f"n{index}"]
        upstream_failed = any(p in failed for p in mine)
        if upstream_failed:
            assert step.status is Status.KILLED and calls[index] == 0
            assert (step.last_error or "").startswith("dependency ")
        elif index in failing:
            assert step.status is Status.KILLED and calls[index] == 1
            assert f"node {index} fails" in (step.last_error or "")
        else:
            assert (step.status, step.result, calls[index]) == (Status.DONE, index, 1)
    assert status.status is (Status.KILLED if failed else Status.DONE)


async def test_cancel_workflow_cancels_its_steps_and_the_run_names_them(kit: BackendKit) -> None:
    backend = await workflows_backend(kit)
    require(backend, Capability.CANCEL)
    flow = Workflow("doomed").then(add_one).then(double).then(as_text)
    run_id = await flow.push(backend, 1)
    assert await cancel_workflow(backend, run_id, "the user left") == 3
    status = await workflow_status(backend, run_id)
    first = f"{run_id}/1-add_one"
    assert [(s.name, s.status) for s in status.steps] == [
        ("1-add_one", Status.CANCELLED),
        ("2-double", Status.KILLED),
        ("3-as_text", Status.KILLED),
    ]
    assert status.steps[0].last_error == "cancelled: the user left"
    assert status.steps[2].last_error == (
        f"dependency {first} ended Cancelled: cancelled: the user left"
    )
    record = await backend.wait_for(run_id, timeout=RUN_LIMIT)
    assert record.status is Status.KILLED and first in (record.last_error or "")
    summary = await run(backend, flow)  # nothing is left to run
    assert summary.done == 0
    with pytest.raises(TaskNotFound):
        await cancel_workflow(backend, "no-such-run")


async def test_builtins_and_callable_objects_are_steps_too() -> None:
    class Upper:
        def __call__(self, text: str) -> str:
            return text.upper()

    backend = MemoryBackend()
    flow = Workflow("builtins").then(Upper()).then(str).then(len)
    run_id = await flow.push(backend, "abc")
    await run(backend, flow)
    assert (await backend.wait_for(run_id, timeout=RUN_LIMIT)).result == 3
