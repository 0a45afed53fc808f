"""Task records, ids, push options and backoff."""

from __future__ import annotations

import math
import random
import threading
import uuid
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxqueue import InvalidOption, ManualClock, PushOptions, Status, Task
from rxqueue.backoff import Exponential, constant
from rxqueue.task import ACTIVE, READY, TERMINAL, new_task_id


def test_ids_are_unique_and_sorted_by_creation_even_across_threads() -> None:
    ids: list[str] = []
    lock = threading.Lock()

    def make() -> None:
        batch = [new_task_id() for _ in range(2000)]
        assert batch == sorted(batch)
        with lock:
            ids.extend(batch)

    threads = [threading.Thread(target=make) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 8000
    parsed = [uuid.UUID(i) for i in ids[:100]]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in parsed)


def test_tasks_are_frozen_and_evolve() -> None:
    task = Task(args={"a": 1})
    with pytest.raises(FrozenInstanceError):
        task.status = Status.DONE  # type: ignore[misc]
    done = task.evolve(status=Status.DONE)
    assert (task.status, done.status, done.id) == (Status.PENDING, Status.DONE, task.id)
    assert done.is_terminal and not task.is_terminal


def test_status_sets_partition_the_statuses() -> None:
    # Waiting (for dependencies) is none of them: not ready, not held, not finished.
    assert set(Status) == TERMINAL | ACTIVE | READY | {Status.WAITING}
    assert not (TERMINAL & ACTIVE or TERMINAL & READY or ACTIVE & READY)
    assert Status.WAITING not in TERMINAL | ACTIVE | READY


def test_push_options_schedule_and_validate() -> None:
    clock = ManualClock(1000.0)
    task = PushOptions(delay=5, priority=2).build("x", queue="q", now=clock(), max_attempts=3)
    assert (task.run_at, task.priority, task.queue, task.max_attempts) == (1005.0, 2, "q", 3)
    at = datetime(2030, 1, 1, tzinfo=UTC)
    assert (
        PushOptions(run_at=at).build(1, queue="q", now=0, max_attempts=1).run_at == at.timestamp()
    )
    naive = datetime(2030, 1, 1)
    assert (
        PushOptions(run_at=naive).build(1, queue="q", now=0, max_attempts=1).run_at
        == at.timestamp()
    )
    with pytest.raises(ValueError, match="either delay= or run_at="):
        PushOptions(delay=1, run_at=5.0)
    with pytest.raises(ValueError, match="delay must be >= 0"):
        PushOptions(delay=-1)
    with pytest.raises(InvalidOption, match="max_attempts must be between 1 and"):
        PushOptions(max_attempts=0)


_NOT_NUMBERS = st.one_of(
    st.text(max_size=3), st.booleans(), st.none(), st.lists(st.integers(), max_size=1)
)
_NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
BAD_OPTIONS = st.one_of(
    st.fixed_dictionaries({"delay": st.one_of(_NON_FINITE, st.floats(max_value=-1e-9),
                                             st.text(min_size=1, max_size=3), st.booleans())}),
    st.fixed_dictionaries({"run_at": st.one_of(_NON_FINITE, st.text(min_size=1, max_size=3),
                                              st.booleans())}),
    st.fixed_dictionaries({"priority": st.one_of(_NOT_NUMBERS, st.floats(), _NON_FINITE,
                                                st.integers(min_value=2**31))}),
    st.fixed_dictionaries({"max_attempts": st.one_of(st.integers(max_value=0), st.floats(),
                                                    st.text(min_size=1, max_size=3),
                                                    st.booleans())}),
    st.fixed_dictionaries({"metadata": st.one_of(
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=2),
        st.fixed_dictionaries({"x": _NON_FINITE}),
        st.fixed_dictionaries({"x": st.just(object())}),
    )}),
    st.fixed_dictionaries({"task_id": st.one_of(st.just(""), st.integers(), st.text(min_size=256,
                                                                                   max_size=300))}),
)  # fmt: skip


@given(options=BAD_OPTIONS)
def test_bad_options_are_refused_naming_the_option(options: dict[str, Any]) -> None:
    [name] = options
    with pytest.raises(InvalidOption, match=name):
        PushOptions(**options)


@given(
    delay=st.floats(0, 1e9),
    priority=st.integers(-(2**31), 2**31 - 1),
    max_attempts=st.integers(1, 2**31 - 1),
)
def test_good_options_are_kept(delay: float, priority: int, max_attempts: int) -> None:
    options = PushOptions(delay=delay, priority=priority, max_attempts=max_attempts)
    task = options.build("x", queue="q", now=0.0, max_attempts=3)
    assert (task.run_at, task.priority, task.max_attempts) == (delay, priority, max_attempts)


@given(attempt=st.integers(1, 60), seed=st.integers())
def test_exponential_backoff_grows_within_jitter_and_cap(attempt: int, seed: int) -> None:
    policy = Exponential(base=1, factor=2, max=300, jitter=0.1, rng=random.Random(seed))
    nominal = min(300.0, 2.0 ** (attempt - 1))
    assert 0.9 * nominal <= policy(attempt) <= min(300.0, 1.1 * nominal)


def test_backoff_arguments_are_checked() -> None:
    assert constant(3)(7) == 3
    with pytest.raises(ValueError, match="factor >= 1"):
        Exponential(factor=0.5)
    with pytest.raises(ValueError, match="seconds >= 0"):
        constant(-1)


def test_manual_clock_only_moves_forward() -> None:
    clock = ManualClock(10)
    assert clock.advance(5) == 15
    assert clock() == 15
    with pytest.raises(ValueError, match="only moves forward"):
        clock.advance(-1)
