"""SqliteBackend against a pure-Python model, driven by hypothesis.

Each step runs on one event loop kept for the whole example; time moves only
by ``ManualClock.advance``. After every step the statuses and attempts of all
tasks must agree, and every claim must return what the model predicts, in
claim order (priority desc, run_at, id).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from rxqueue import ManualClock, Status, Task
from rxqueue.acks import AckBatch
from rxqueue.backends.sqlite import SqliteBackend
from rxqueue.task import ACTIVE, READY, TERMINAL, Done, Killed, Retry, Started, Update

LEASE = 30.0
WORKERS = ("w1", "w2")
OUTCOMES = ("started", "done", "retry", "killed")  # the order a batch applies them in
T = TypeVar("T")


@dataclass
class Model:
    """What the reference expects of one task."""

    id: str
    priority: int
    run_at: float
    max_attempts: int
    status: Status = Status.PENDING
    attempts: int = 0
    lock_by: str | None = None


class SqliteMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = Path(tempfile.mkdtemp(prefix="rxqueue-stateful-"))
        self.clock = ManualClock()
        self.backend = SqliteBackend(self.dir / "tasks.db", clock=self.clock, lease_timeout=LEASE)
        self.tasks: dict[str, Model] = {}
        self.seen: dict[str, float] = {}  # worker -> last heartbeat
        self.claimed: dict[str, list[Task[Any]]] = {name: [] for name in WORKERS}
        for name in WORKERS:
            self.run(self.backend.register_worker(name))
            self.seen[name] = self.clock()

    def teardown(self) -> None:
        try:
            self.run(self.backend.close())
        finally:
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def held(self, worker: str) -> list[Task[Any]]:
        return [
            task
            for task in self.claimed[worker]
            if self.tasks[task.id].lock_by == worker and self.tasks[task.id].status in ACTIVE
        ]

    def unlock(self, model: Model) -> None:
        model.lock_by = None

    # --- rules ------------------------------------------------------------------------

    @rule(
        priority=st.integers(0, 3),
        delay=st.sampled_from([0.0, 0.0, 5.0, 20.0]),
        max_attempts=st.integers(1, 3),
        count=st.integers(1, 3),
    )
    def push(self, priority: int, delay: float, max_attempts: int, count: int) -> None:
        ids = self.run(
            self.backend.push_many(
                range(count), priority=priority, delay=delay, max_attempts=max_attempts
            )
        )
        for task_id in ids:
            self.tasks[task_id] = Model(task_id, priority, self.clock() + delay, max_attempts)

    @rule(worker=st.sampled_from(WORKERS), limit=st.integers(1, 4))
    def claim(self, worker: str, limit: int) -> None:
        now = self.clock()
        ready = [m for m in self.tasks.values() if m.status in READY and m.run_at <= now]
        ready.sort(key=lambda m: (-m.priority, m.run_at, m.id))
        expected = ready[:limit]
        got = self.run(self.backend._claim(worker, limit))
        assert [t.id for t in got] == [m.id for m in expected]
        for model in expected:
            model.status, model.lock_by = Status.QUEUED, worker
        self.claimed[worker].extend(got)

    @precondition(lambda self: any(self.claimed.values()))
    @rule(data=st.data(), delay=st.sampled_from([0.0, 10.0]))
    def report(self, data: st.DataObject, delay: float) -> None:
        """One worker's ack batch: distinct tasks, mixed kinds, some maybe no longer held."""
        worker = data.draw(st.sampled_from([w for w in WORKERS if self.claimed[w]]))
        candidates = list({task.id: task for task in self.claimed[worker]}.values())
        tasks = data.draw(
            st.lists(st.sampled_from(candidates), min_size=1, max_size=4, unique_by=lambda t: t.id)
        )
        kinds = data.draw(
            st.lists(st.sampled_from(OUTCOMES), min_size=len(tasks), max_size=len(tasks))
        )
        now = self.clock()
        updates: list[tuple[Task[Any], Update]] = []
        for task, kind in zip(tasks, kinds, strict=True):
            update: Update
            if kind == "started":
                update = Started(now)
            elif kind == "done":
                update = Done(kind.encode())  # the worker sends results encoded
            elif kind == "retry":
                update = Retry(now + delay, "try again")
            else:
                update = Killed("give up")
            updates.append((task, update))
        refused = self.run(self.backend.report(AckBatch.of(worker, updates)))
        # Refused: exactly the tasks whose lease was lost, in apply order (kind, then batch).
        expected = [
            task.id
            for kind in OUTCOMES
            for task, each in zip(tasks, kinds, strict=True)
            if each == kind
            and (self.tasks[task.id].lock_by != worker or self.tasks[task.id].status not in ACTIVE)
        ]
        assert list(refused) == expected
        for task, kind in zip(tasks, kinds, strict=True):
            model = self.tasks[task.id]
            if task.id in expected:
                continue  # nothing changes
            if kind == "started":
                model.status = Status.RUNNING
                continue
            model.attempts += 1
            self.unlock(model)
            if kind == "retry":
                model.status, model.run_at = Status.FAILED, now + delay
            else:
                model.status = Status.DONE if kind == "done" else Status.KILLED

    @rule(worker=st.sampled_from(WORKERS))
    def release(self, worker: str) -> None:
        self.run(self.backend.release(self.claimed[worker], worker))
        for task in self.claimed[worker]:
            model = self.tasks[task.id]
            if model.lock_by == worker and model.status is Status.QUEUED:
                model.status = Status.PENDING
                self.unlock(model)

    @rule(seconds=st.sampled_from([5.0, 10.0, 15.0, 30.0]))
    def advance(self, seconds: float) -> None:
        """Time passes, and a worker's heartbeat loop reclaims expired leases."""
        self.clock.advance(seconds)
        self.reclaim()

    @rule(worker=st.sampled_from(WORKERS))
    def heartbeat(self, worker: str) -> None:
        self.run(self.backend.heartbeat(worker))
        self.seen[worker] = self.clock()

    @rule()
    def reclaim(self) -> None:
        now = self.clock()
        dead = {w for w, seen in self.seen.items() if now - seen >= LEASE}
        expected = 0
        for model in self.tasks.values():
            if model.lock_by in dead and model.status in ACTIVE:
                expected += 1
                model.attempts += 1
                self.unlock(model)
                if model.attempts >= model.max_attempts:
                    model.status = Status.KILLED
                else:
                    model.status = Status.PENDING
        assert self.run(self.backend.reclaim()) == expected

    @precondition(lambda self: bool(self.tasks))
    @rule(data=st.data())
    def kill(self, data: st.DataObject) -> None:
        model = data.draw(st.sampled_from(sorted(self.tasks.values(), key=lambda m: m.id)))
        self.run(self.backend.kill(model.id))
        if model.status not in TERMINAL:
            model.status = Status.KILLED
            self.unlock(model)

    # --- invariants ---------------------------------------------------------------------

    @invariant()
    def agree(self) -> None:
        stored = self.run(self.backend.list(limit=10_000))
        got = {t.id: (t.status, t.attempts, t.lock_by) for t in stored}
        want = {m.id: (m.status, m.attempts, m.lock_by) for m in self.tasks.values()}
        assert got == want


SqliteMachine.TestCase.settings = settings(max_examples=50, stateful_step_count=30, deadline=None)
TestSqliteMachine = SqliteMachine.TestCase
