"""PostgreSQL backend: many workers on many machines, on a server you already run.

``rxqueue.connect("postgresql://user@host:5432/db", queue="emails", schema="rxqueue")``,
or ``PostgresBackend(dsn, queue="emails")``. Needs ``pip install 'rxqueue[postgres]'``
(asyncpg).

**Schema.** rxqueue's tables live in one PostgreSQL schema (``schema=``,
default ``rxqueue``), created and migrated on open under an advisory lock;
:func:`schema_sql` gives the DDL for those who apply it themselves.

**Claiming.** One statement, ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE
SKIP LOCKED) RETURNING ...``, sized by the worker's free capacity, over a
partial index on ready tasks: workers on any number of hosts never claim the
same task, and never wait for each other's locks.

**Wake-up.** A push runs ``pg_notify`` inside its own transaction (a rolled
back push wakes nobody); every backend keeps one dedicated LISTEN connection
per queue and event loop, opened by its first idle fetcher, which reconnects
and listens again after it is lost. An adaptive poll is the fallback for
delayed tasks and lost notifications. ``wait_for`` is woken by a NOTIFY that
acks send only for tasks someone waits for (see ``waiters`` in the schema).

**Transactional push.** ``await backend.push(payload, connection=conn)`` with
your own asyncpg connection stores the task inside your transaction: it
exists if and only if your transaction commits.

**Guarantees.** At-least-once, as on SQLite: a task runs once unless its
worker dies (or loses the server for longer than ``lease_timeout``), in which
case another worker runs it again once the lease expires. Lease times come
from the backend's clock (``time.time()`` by default): keep worker hosts'
clocks in sync (NTP), as for any lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import asyncpg

from rxqueue.acks import AckBatch
from rxqueue.backends import _postgres_schema as schema_module
from rxqueue.backends._postgres_schema import SCHEMA_VERSION, check_schema, schema_sql
from rxqueue.backends._rows import (
    COLUMN_NAMES,
    answer_ids,
    claim_order,
    metadata_json,
    read_claimed,
    read_shown,
)
from rxqueue.backends.base import (
    ALL_CAPABILITIES,
    Capability,
    ClaimingBackend,
    Limits,
    frees_room,
)
from rxqueue.clock import Clock, system_clock
from rxqueue.codec import DEFAULT_CODEC, Codec, encode_list
from rxqueue.errors import (
    BackendClosed,
    BackendError,
    BackendUnavailable,
    InvalidOption,
    InvalidTransition,
    TaskExists,
    TaskNotFound,
    UnsupportedOperation,
    WorkerError,
)
from rxqueue.streams import Doorbell
from rxqueue.task import (
    ACTIVE,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_QUEUE,
    READY,
    Status,
    Task,
    TaskId,
    check_int,
    check_seconds,
    dependency_failed,
)

__all__ = ["SCHEMA_VERSION", "PostgresBackend", "PostgresDoorbell", "schema_sql"]

# --- SQL ------------------------------------------------------------------------------
# Templates: ``{s}`` is the quoted schema. asyncpg prepares and caches each statement
# per connection, so a hot statement is parsed and planned once per connection.

_COLUMNS: Final = ", ".join(
    "metadata::text AS metadata" if name == "metadata" else name for name in COLUMN_NAMES
)
_READY: Final = "status IN ('Pending', 'Failed')"  # exactly the partial index's WHERE
_ACTIVE: Final = "status IN ('Queued', 'Running')"
_FINISHED: Final = "status IN ('Done', 'Killed', 'Cancelled')"  # tasks_finished's WHERE
_ASKED: Final = "cancel_reason IS NOT NULL"  # a claimed task was asked to cancel

# $1 worker, $2 now, $3 queue, $4 limit. ``id = ANY(ARRAY(subquery))`` rather than
# ``id IN (subquery)``: the subquery runs once and the update finds its rows by primary
# key; with IN the planner may hash-join against a sequential scan of the whole table.
# A task that depended on others comes back with their results, in order (``inputs``,
# NULL for every other task: the CASE spares plain tasks the subquery). The claim's
# snapshot sees them: a task is released in the transaction of its last parent's Done.
# Each result is a scalar subquery by primary key, not a join: on a table never
# analyzed (a new deployment) the planner chose a hash join over a sequential scan
# of tasks, per claimed step, which made 10-step chains 14 times slower.
_INPUTS: Final = """
CASE WHEN t.has_dependencies THEN ARRAY(
    SELECT (SELECT p.result FROM {s}.tasks AS p WHERE p.id = e.parent)
    FROM {s}.task_edges AS e WHERE e.child = t.id ORDER BY e.position) END AS inputs
"""
_CLAIM: Final = f"""
UPDATE {{s}}.tasks AS t SET status = 'Queued', lock_by = $1, lock_at = $2
WHERE id = ANY(ARRAY(
    SELECT id FROM {{s}}.tasks
    WHERE queue = $3 AND {_READY} AND run_at <= $2
    ORDER BY priority DESC, run_at, id
    LIMIT $4
    FOR UPDATE SKIP LOCKED
))
RETURNING {_COLUMNS}, {_INPUTS}
"""
# Limits: a claim under rate_limit / max_running is a transaction that first locks
# the queue's limits row, so such claims run one at a time, each seeing the tasks
# the previous one claimed (READ COMMITTED: a new statement, a new snapshot). Then
# _CLAIM limited by the tokens ($4, counted by the caller) and by max_running ($5,
# less the tasks held now, counted through tasks_held), which spends the tokens
# ($6 refilled as of $7) of the tasks it claimed.
_LOCK_LIMITS: Final = "SELECT tokens, updated_at FROM {s}.limits WHERE queue = $1 FOR UPDATE"
_ADD_LIMITS: Final = """
INSERT INTO {s}.limits (queue, tokens, updated_at) VALUES ($1, $2, $3)
ON CONFLICT (queue) DO NOTHING
"""
_CLAIM_LIMITED: Final = f"""
WITH claimed AS (
    UPDATE {{s}}.tasks AS t SET status = 'Queued', lock_by = $1, lock_at = $2
    WHERE id = ANY(ARRAY(
        SELECT id FROM {{s}}.tasks
        WHERE queue = $3 AND {_READY} AND run_at <= $2
        ORDER BY priority DESC, run_at, id
        LIMIT greatest(0, least($4::int, $5::int - (
            SELECT count(*) FROM {{s}}.tasks WHERE queue = $3 AND {_ACTIVE})))
        FOR UPDATE SKIP LOCKED
    ))
    RETURNING {_COLUMNS}, {_INPUTS}
), spent AS (
    UPDATE {{s}}.limits SET tokens = greatest(0, $6::float8 - (SELECT count(*) FROM claimed)),
        updated_at = $7
    WHERE queue = $3 AND EXISTS (SELECT 1 FROM claimed)
)
SELECT * FROM claimed
"""
_NO_CAP: Final = 2**31 - 1  # max_running when unset

# $1 queue, $2.. the columns as arrays, $11 the queue's channel.
_INSERT: Final = """
WITH inserted AS (
    INSERT INTO {s}.tasks (id, queue, args, attempts, max_attempts, priority, run_at,
                           created_at, last_error, metadata)
    SELECT i, $1, a, n, m, p, r, c, e, d::jsonb
    FROM unnest($2::text[], $3::bytea[], $4::int[], $5::int[], $6::int[],
                $7::float8[], $8::float8[], $9::text[], $10::text[])
         AS x(i, a, n, m, p, r, c, e, d)
    RETURNING 1
)
SELECT pg_notify($11, '')
"""
# push_many's usual shape: every column but id and payload is the same, so it goes
# as a value instead of an array ($4-$10 are scalars here): half the database work.
_INSERT_ALIKE: Final = """
WITH inserted AS (
    INSERT INTO {s}.tasks (id, queue, args, attempts, max_attempts, priority, run_at,
                           created_at, last_error, metadata)
    SELECT i, $1, a, $4, $5, $6, $7, $8, $9, $10::jsonb
    FROM unnest($2::text[], $3::bytea[]) AS x(i, a)
    RETURNING 1
)
SELECT pg_notify($11, '')
"""

# From this many tasks on, a push_many of alike tasks goes by COPY instead.
_COPY_FROM: Final = 1_000
_COPY_COLUMNS: Final = (
    "id", "queue", "args", "attempts", "max_attempts", "priority", "run_at", "created_at",
    "last_error", "metadata",
)  # fmt: skip

# Unique keys, in one transaction: let go of keys whose holders finished (and whose
# unique_until passed), insert what holds a free key, then read every key's holder.
# $1 queue, $2 keys, $3 now. The status test is written so that it does not imply
# tasks_finished's predicate: the release finds its rows by key (see _BY_KEY_ACTIVE).
_RELEASE_KEYS: Final = """
UPDATE {s}.tasks SET unique_key = NULL
WHERE queue = $1 AND unique_key = ANY($2::text[])
  AND status NOT IN ('Pending', 'Queued', 'Running', 'Failed')
  AND coalesce(unique_until, 0) <= $3
"""
# As _INSERT, with $12 keys and $13 unique_until; rows go in key order, so that
# pushers racing for the same keys wait for each other in one order (no deadlock).
_INSERT_UNIQUE: Final = """
WITH inserted AS (
    INSERT INTO {s}.tasks (id, queue, args, attempts, max_attempts, priority, run_at,
                           created_at, last_error, metadata, unique_key, unique_until)
    SELECT i, $1, a, n, m, p, r, c, e, d::jsonb, k, u
    FROM unnest($2::text[], $3::bytea[], $4::int[], $5::int[], $6::int[],
                $7::float8[], $8::float8[], $9::text[], $10::text[], $12::text[],
                $13::float8[])
         AS x(i, a, n, m, p, r, c, e, d, k, u)
    ORDER BY k
    ON CONFLICT (queue, unique_key) WHERE unique_key IS NOT NULL DO NOTHING
    RETURNING 1
)
SELECT pg_notify($11, '') WHERE EXISTS (SELECT 1 FROM inserted)
"""
_KEY_HOLDERS: Final = """
SELECT unique_key, id FROM {s}.tasks WHERE queue = $1 AND unique_key = ANY($2::text[])
"""

# Dependencies (workflows), in one transaction: flag and lock the stored parents (in
# id order; a parent being acked is waited for, then seen as it ended), insert the
# tasks (those with dependencies Waiting) and their edges, then kill those with a
# failed parent and count down those with parents already Done. The schema's
# trigger (tasks_settle) does the rest whenever a flagged parent ends, by any path.
# $1 parent ids.
_LOCK_PARENTS: Final = """
UPDATE {s}.tasks SET has_dependants = true
WHERE id = ANY(ARRAY(SELECT id FROM {s}.tasks WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE))
RETURNING id, status, last_error
"""
# Every column, each its own array (queues too: a workflow's steps may go elsewhere).
_INSERT_GRAPH: Final = """
INSERT INTO {s}.tasks (id, queue, args, attempts, max_attempts, priority, run_at,
                       created_at, last_error, metadata, status, waiting,
                       has_dependencies, has_dependants)
SELECT i, q, a, n, m, p, r, c, e, d::jsonb,
       CASE WHEN w > 0 THEN 'Waiting' ELSE 'Pending' END, w, w > 0, f
FROM unnest($1::text[], $2::text[], $3::bytea[], $4::int[], $5::int[], $6::int[],
            $7::float8[], $8::float8[], $9::text[], $10::text[], $11::int[], $12::bool[])
     AS x(i, q, a, n, m, p, r, c, e, d, w, f)
"""
_INSERT_EDGES: Final = """
INSERT INTO {s}.task_edges (child, position, parent)
SELECT * FROM unnest($1::text[], $2::int[], $3::text[])
"""
# $1 ids, $2 reasons, $3 now: killed by a dependency that had already failed.
_KILL_WAITING: Final = """
UPDATE {s}.tasks AS t SET status = 'Killed', waiting = 0, last_error = k.reason, done_at = $3
FROM unnest($1::text[], $2::text[]) AS k(id, reason)
WHERE t.id = k.id AND t.status = 'Waiting'
"""
# $1 ids, $2 parents already Done, $3 now: released if that was all of them.
_COUNT_DOWN: Final = """
UPDATE {s}.tasks AS t SET waiting = t.waiting - k.done,
    status = CASE WHEN t.waiting = k.done THEN 'Pending' ELSE t.status END,
    run_at = CASE WHEN t.waiting = k.done THEN $3 + (t.run_at - t.created_at) ELSE t.run_at END
FROM unnest($1::text[], $2::int[]) AS k(id, done)
WHERE t.id = k.id AND t.status = 'Waiting'
"""
_NOTIFY_ALL: Final = "SELECT pg_notify(c, '') FROM unnest($1::text[]) AS c"
# The join also waits for the spawned tasks, after its own inputs. $1 join, $2 spawned.
_JOIN_MORE: Final = """
WITH edges AS (
    INSERT INTO {s}.task_edges (child, position, parent)
    SELECT $1, base.next + s.ord - 1, s.id
    FROM unnest($2::text[]) WITH ORDINALITY AS s(id, ord),
         (SELECT coalesce(max(position) + 1, 0) AS next FROM {s}.task_edges
          WHERE child = $1) AS base
)
UPDATE {s}.tasks SET waiting = waiting + cardinality($2::text[]), has_dependencies = true
WHERE id = $1 AND status = 'Waiting'
"""
# family(run_id): the run and "<run_id>/..." in byte order, by the tasks_family index.
_FAMILY: Final = f"""
SELECT {_COLUMNS} FROM {{s}}.tasks WHERE id = $1
UNION ALL
SELECT {_COLUMNS} FROM {{s}}.tasks WHERE strpos(id, '/') > 0 AND id ~>=~ $2 AND id ~<~ $3
ORDER BY created_at, id
"""

# Acks apply only while the acking worker still holds the lease. One statement: a
# CTE per kind (each touches other rows), the ids that changed come back, so the
# refused ones are known exactly. Completion NOTIFYs go out only for tasks that
# someone waits for (the waiters table).
# The same test as _ACTIVE, written so that it does not imply the predicate of the
# tasks_held index (status IN ('Queued', 'Running')): acks and releases then find
# their rows by primary key, the only index left to them. When they could use
# tasks_held, a generic plan (asyncpg prepares statements; PostgreSQL switches to
# generic plans after five runs) estimated a few held tasks and a few ids, and
# nested-loop-joined every task the worker held against every id of the batch:
# 1.3 s for 1,000 acks with 8,000 held, against 10 ms by key.
_BY_KEY_ACTIVE: Final = "status NOT IN ('Pending', 'Done', 'Failed', 'Killed', 'Cancelled')"
_BY_KEY_QUEUED: Final = (
    "status NOT IN ('Pending', 'Running', 'Done', 'Failed', 'Killed', 'Cancelled')"
)
# Written as a comparison with the joined row, so the planner takes it for a join
# condition: estimated from statistics of an all-Pending table (autoanalyze after a
# big push) as a filter, it expected one held row and compared every held task with
# every acked id (1.3 million rows filtered for 1,024 acks, 200-450 ms a batch).
_HELD: Final = f"(t.lock_by = $1 AND t.{_BY_KEY_ACTIVE}) = (a.id IS NOT NULL)"
_UNLOCK: Final = "attempts = t.attempts + 1, lock_by = NULL, lock_at = NULL"
# A spawning Done: its task still held by this very claim (locked until the acks).
# $1 ids, $2 attempts, $3 worker.
_HOLDS: Final = f"""
SELECT t.id FROM {{s}}.tasks AS t JOIN unnest($1::text[], $2::int[]) AS a(id, attempts)
    ON t.id = a.id AND t.attempts = a.attempts
WHERE t.lock_by = $3 AND t.{_BY_KEY_ACTIVE}
FOR UPDATE OF t
"""
_WAKE_WAITERS: Final = """
SELECT NULL FROM (
    SELECT pg_notify({done}, CASE WHEN sum(length(w.task_id) + 1) < 7900
                                  THEN string_agg(w.task_id, ',') ELSE '' END)
    FROM (SELECT DISTINCT task_id FROM {s}.waiters
          WHERE task_id IN (SELECT id FROM {finished})) AS w
    HAVING count(*) > 0
) AS n
"""
_ACKS: Final = f"""
WITH progressed AS (  -- not an outcome: never read, never refused
    UPDATE {{s}}.tasks AS t SET progress = a.fraction, progress_note = a.note
    FROM unnest($21::text[], $22::float8[], $23::text[], $24::int[])
        AS a(id, fraction, note, attempts)
    WHERE t.id = a.id AND t.attempts = a.attempts AND {_HELD}
), started AS (
    UPDATE {{s}}.tasks AS t SET status = 'Running'
    FROM unnest($2::text[], $14::int[]) AS a(id, attempts)
    WHERE t.id = a.id AND t.attempts = a.attempts AND {_HELD}
    RETURNING t.id, a.attempts
), done AS (
    UPDATE {{s}}.tasks AS t SET status = 'Done', {_UNLOCK}, result = a.result, done_at = $10
    FROM unnest($3::text[], $4::bytea[], $15::int[]) AS a(id, result, attempts)
    WHERE t.id = a.id AND t.attempts = a.attempts AND {_HELD}
    RETURNING t.id, a.attempts, t.has_dependants
), children AS (  -- how many of each waiting child's parents this batch ends Done
    SELECT e.child, count(*) AS n FROM {{s}}.task_edges AS e
    WHERE e.parent = ANY(ARRAY(SELECT id FROM done WHERE has_dependants))
    GROUP BY e.child
), counted AS (
    -- The Dones count their waiting dependants down here, all in one update (a
    -- fan-out's join once per batch, not once per item); at zero one is released,
    -- its delay counting from now. Failures spread by the tasks_settle trigger.
    -- Children come as arrays, so each is found by key (as the acks find theirs).
    UPDATE {{s}}.tasks AS c SET waiting = c.waiting - x.n,
        status = CASE WHEN c.waiting = x.n THEN 'Pending' ELSE c.status END,
        run_at = CASE WHEN c.waiting = x.n THEN $10 + (c.run_at - c.created_at)
                      ELSE c.run_at END
    FROM unnest(ARRAY(SELECT child FROM children ORDER BY child),
                ARRAY(SELECT n FROM children ORDER BY child)) AS x(child, n)
    WHERE c.id = x.child AND c.status = 'Waiting'
    RETURNING c.queue, c.status
), retried AS (
    -- A task asked to cancel while this attempt ran is never retried: it ends Cancelled.
    UPDATE {{s}}.tasks AS t SET {_UNLOCK}, run_at = a.run_at,
        status = CASE WHEN t.cancel_reason IS NULL THEN 'Failed' ELSE 'Cancelled' END,
        last_error = CASE WHEN t.cancel_reason IS NULL THEN a.error
                          ELSE 'cancelled: ' || t.cancel_reason END,
        done_at = CASE WHEN t.cancel_reason IS NULL THEN t.done_at ELSE $10 END
    FROM unnest($5::text[], $6::float8[], $7::text[], $16::int[])
        AS a(id, run_at, error, attempts)
    WHERE t.id = a.id AND t.attempts = a.attempts AND {_HELD}
    RETURNING t.id, a.attempts
), killed AS (
    UPDATE {{s}}.tasks AS t SET status = 'Killed', {_UNLOCK}, last_error = a.error,
        done_at = $10
    FROM unnest($8::text[], $9::text[], $17::int[]) AS a(id, error, attempts)
    WHERE t.id = a.id AND t.attempts = a.attempts AND {_HELD}
    RETURNING t.id, a.attempts
), cancelled AS (
    UPDATE {{s}}.tasks AS t SET status = 'Cancelled', {_UNLOCK}, last_error = a.error,
        done_at = $10
    FROM unnest($18::text[], $19::text[], $20::int[]) AS a(id, error, attempts)
    WHERE t.id = a.id AND t.attempts = a.attempts AND {_HELD}
    RETURNING t.id, a.attempts
), finished AS (
    SELECT id, attempts FROM done UNION ALL SELECT id, attempts FROM killed
    UNION ALL SELECT id, attempts FROM cancelled
)
SELECT id, attempts FROM started
UNION ALL SELECT id, attempts FROM finished
UNION ALL SELECT id, attempts FROM retried
UNION ALL SELECT NULL, NULL FROM (SELECT pg_notify($11, '')) AS n
          WHERE $12 AND EXISTS (SELECT 1 FROM retried)
UNION ALL SELECT NULL, NULL FROM (
    {_WAKE_WAITERS.format(s="{s}", done="$13", finished="finished")}
) AS w
UNION ALL SELECT NULL, NULL FROM (
    SELECT pg_notify($25, r.queue) FROM (
        SELECT DISTINCT queue FROM counted WHERE status = 'Pending') AS r
) AS released
"""


def _hand_back(where: str, *, now: str, ready: str, done: str) -> str:
    """Hand back the claimed tasks ``where`` selects: Pending again, unless asked to
    cancel: then they end Cancelled (they must not run again), with no attempt
    counted, as cancel() ends a waiting task. Wakes fetchers if some went back to
    Pending, and the waiters of those that ended; returns the ids that ended."""
    return f"""
WITH released AS (
    UPDATE {{s}}.tasks SET lock_by = NULL, lock_at = NULL,
        status = CASE WHEN {_ASKED} THEN 'Cancelled' ELSE 'Pending' END,
        last_error = CASE WHEN {_ASKED} THEN 'cancelled: ' || cancel_reason ELSE last_error END,
        done_at = CASE WHEN {_ASKED} THEN {now}::float8 ELSE done_at END
    WHERE {where}
    RETURNING id, status
), cancelled AS (
    SELECT id FROM released WHERE status = 'Cancelled'
)
SELECT id FROM cancelled
UNION ALL SELECT NULL FROM (SELECT pg_notify({ready}, '')) AS n
          WHERE EXISTS (SELECT 1 FROM released WHERE status = 'Pending')
UNION ALL {_WAKE_WAITERS.format(s="{s}", done=done, finished="cancelled")}
"""


# $1 ids, $2 worker, $3 ready channel, $4 now, $5 done channel.
_RELEASE: Final = _hand_back(
    f"id = ANY($1::text[]) AND lock_by = $2 AND {_BY_KEY_QUEUED}", now="$4", ready="$3", done="$5"
)
# After a claim whose answer was lost with its connection: hand back what it may
# have claimed (its lock_at is that claim's own time). $1 queue, $2 worker, $3 that
# time, $4 ready channel, $5 now, $6 done channel.
_UNCLAIM: Final = _hand_back(
    "queue = $1 AND lock_by = $2 AND status = 'Queued' AND lock_at = $3",
    now="$5", ready="$4", done="$6",
)  # fmt: skip

# Leases: a task held by a worker whose heartbeat is older than the lease, or by a
# worker with no heartbeat row whose claim is older than the lease, is taken back:
# Pending with one more attempt, or Killed once attempts reach max_attempts; a task
# asked to cancel ends Cancelled (no attempt counted), as on release.
_EXPIRE_SET: Final = f"""
    lock_by = NULL, lock_at = NULL,
    attempts = CASE WHEN t.{_ASKED} THEN t.attempts ELSE t.attempts + 1 END,
    last_error = CASE WHEN t.{_ASKED} THEN 'cancelled: ' || t.cancel_reason
        ELSE format('lease expired: worker %s stopped heartbeating', quote_literal(t.lock_by))
        END,
    status = CASE WHEN t.{_ASKED} THEN 'Cancelled'
                  WHEN t.attempts + 1 >= t.max_attempts THEN 'Killed' ELSE 'Pending' END,
    done_at = CASE WHEN t.{_ASKED} OR t.attempts + 1 >= t.max_attempts THEN $2
                   ELSE t.done_at END
"""
_EXPIRE_TAIL: Final = f"""
), killed AS (
    SELECT id FROM changed WHERE status IN ('Killed', 'Cancelled')
)
SELECT id, status FROM changed
UNION ALL SELECT NULL, NULL FROM (SELECT pg_notify($4, '')) AS n
          WHERE EXISTS (SELECT 1 FROM changed WHERE status = 'Pending')
UNION ALL SELECT NULL, NULL FROM (
    {_WAKE_WAITERS.format(s="{s}", done="$5", finished="killed")}
) AS k
"""
# $1 queue, $2 now, $3 lease, $4 ready channel, $5 done channel.
_RECLAIM: Final = f"""
WITH expired AS (
    SELECT t.id FROM {{s}}.tasks AS t
    LEFT JOIN {{s}}.workers AS w ON w.queue = t.queue AND w.name = t.lock_by
    WHERE t.queue = $1 AND t.{_ACTIVE} AND t.lock_by IS NOT NULL
      AND CASE WHEN w.name IS NULL THEN $2 - t.lock_at >= $3
               ELSE $2 - w.last_seen >= $3 END
    FOR UPDATE OF t SKIP LOCKED
), changed AS (
    UPDATE {{s}}.tasks AS t SET {_EXPIRE_SET}
    FROM expired WHERE t.id = expired.id
    RETURNING t.id, t.status
{_EXPIRE_TAIL}
"""
# A restarted worker takes back every task its dead predecessor held.
# $1 queue, $2 now, $3 name, $4 ready channel, $5 done channel.
_EXPIRE_NAME: Final = f"""
WITH changed AS (
    UPDATE {{s}}.tasks AS t SET {_EXPIRE_SET}
    WHERE t.queue = $1 AND t.lock_by = $3 AND t.{_ACTIVE}
    RETURNING t.id, t.status
{_EXPIRE_TAIL}
"""
_REGISTER: Final = """
INSERT INTO {s}.workers AS w (queue, name, last_seen, started_at, pid, host)
VALUES ($1, $2, $3, $3, $5, $6)
ON CONFLICT (queue, name) DO UPDATE
    SET last_seen = excluded.last_seen, started_at = excluded.started_at,
        pid = excluded.pid, host = excluded.host
    WHERE $3 - w.last_seen >= $4
RETURNING 1
"""
_WORKER_SEEN: Final = "SELECT last_seen, pid, host FROM {s}.workers WHERE queue = $1 AND name = $2"
# The beat, and the cancel requests for the tasks the worker holds (by tasks_held).
_HEARTBEAT: Final = f"""
WITH beat AS (
    INSERT INTO {{s}}.workers AS w (queue, name, last_seen, started_at, pid, host)
    VALUES ($1, $2, $3, $3, $4, $5)
    ON CONFLICT (queue, name) DO UPDATE SET last_seen = excluded.last_seen
)
SELECT id, cancel_reason FROM {{s}}.tasks
WHERE queue = $1 AND lock_by = $2 AND {_ACTIVE} AND {_ASKED}
"""
_UNREGISTER: Final = """
DELETE FROM {s}.workers WHERE queue = $1 AND name = $2 AND pid = $3 AND host = $4
"""

# Inspection and management.
_GET: Final = f"SELECT {_COLUMNS} FROM {{s}}.tasks WHERE id = $1 AND queue = $2"
_STATUS: Final = "SELECT status FROM {s}.tasks WHERE id = $1 AND queue = $2"
_EXISTING: Final = "SELECT id FROM {s}.tasks WHERE id = ANY($1::text[]) LIMIT 1"
_STATS: Final = "SELECT status, count(*) FROM {s}.tasks WHERE queue = $1 GROUP BY status"
_LIST: Final = f"""
SELECT {_COLUMNS} FROM {{s}}.tasks WHERE queue = $1
ORDER BY created_at, id LIMIT $2 OFFSET $3
"""
_LIST_STATUS: Final = f"""
SELECT {_COLUMNS} FROM {{s}}.tasks WHERE queue = $1 AND status = $4
ORDER BY created_at, id LIMIT $2 OFFSET $3
"""
_RETRY_NOW: Final = """
WITH retried AS (
    UPDATE {s}.tasks SET status = 'Pending', run_at = $3, done_at = NULL, lock_by = NULL,
        lock_at = NULL, max_attempts = greatest(max_attempts, attempts + 1)
    WHERE id = $1 AND queue = $2 AND status IN ('Failed', 'Killed')
    RETURNING id
)
SELECT id FROM retried
UNION ALL SELECT NULL FROM (SELECT pg_notify($4, '')) AS n
          WHERE EXISTS (SELECT 1 FROM retried)
"""
_KILL: Final = f"""
WITH killed AS (
    UPDATE {{s}}.tasks SET status = 'Killed', lock_by = NULL, lock_at = NULL,
        last_error = $3, done_at = $4
    WHERE id = $1 AND queue = $2 AND status NOT IN ('Done', 'Killed', 'Cancelled')
    RETURNING id
)
SELECT id FROM killed
UNION ALL {_WAKE_WAITERS.format(s="{s}", done="$5", finished="killed")}
"""
# cancel(): the task's status, locked until the transaction ends; then one of:
_CANCEL_STATUS: Final = "SELECT status FROM {s}.tasks WHERE id = $1 AND queue = $2 FOR UPDATE"
# a waiting task ends now ($2 error, $3 now, $4 done channel), waking its waiters;
_CANCEL_NOW: Final = f"""
WITH cancelled AS (
    UPDATE {{s}}.tasks SET status = 'Cancelled', lock_by = NULL, lock_at = NULL,
        last_error = $2, done_at = $3
    WHERE id = $1
    RETURNING id
)
{_WAKE_WAITERS.format(s="{s}", done="$4", finished="cancelled")}
"""
# a claimed one keeps the request for its worker (its heartbeat reads it).
_CANCEL_LATER: Final = "UPDATE {s}.tasks SET cancel_reason = $2 WHERE id = $1"
# A finished parent stays while a child that has not finished may still need its
# result; the edges of deleted children go with them.
_VACUUM: Final = f"""
WITH gone AS (
    DELETE FROM {{s}}.tasks AS t
    WHERE queue = $1 AND {_FINISHED} AND done_at <= $2
      AND (NOT has_dependants OR NOT EXISTS (
          SELECT 1 FROM {{s}}.task_edges AS e JOIN {{s}}.tasks AS c ON c.id = e.child
          WHERE e.parent = t.id AND c.status NOT IN ('Done', 'Killed', 'Cancelled')))
    RETURNING id, has_dependencies
), edges AS (
    DELETE FROM {{s}}.task_edges WHERE child IN (SELECT id FROM gone WHERE has_dependencies)
)
SELECT count(*) FROM gone
"""
_VACUUM_WAITERS: Final = """
DELETE FROM {s}.waiters AS w
WHERE NOT EXISTS (SELECT 1 FROM {s}.tasks AS t WHERE t.id = w.task_id)
"""
_HAS_WORK: Final = f"""
SELECT EXISTS (SELECT 1 FROM {{s}}.tasks WHERE queue = $1 AND {_READY} AND run_at <= $2)
"""
_WAIT_ON: Final = """
INSERT INTO {s}.waiters (task_id, token, since) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING
"""
_WAIT_OFF: Final = "DELETE FROM {s}.waiters WHERE task_id = $1 AND token = $2"


# --- rows <-> tasks -----------------------------------------------------------------------


_UNIQUE_TRIES: Final = 5  # see PostgresBackend._store_unique


class _HolderGone(Exception):
    """A unique key's holder vanished (vacuumed) between the insert and the read."""


_DUPLICATE_KEY = re.compile(r"Key \(id\)=\((.*)\) already exists", re.DOTALL)

_DRIVER_ERRORS: Final = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


# --- URLs and descriptions --------------------------------------------------------------


def _describe(dsn: str) -> str:
    """``PostgreSQL at host:port/database``, never the password."""
    parts = urlsplit(dsn)
    hosts = parts.netloc.rpartition("@")[2] or "localhost"
    database = unquote(parts.path.lstrip("/")) or "(the user's database)"
    return f"PostgreSQL at {hosts}/{database}"


def _redact(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    netloc = f"{userinfo}@{hosts}" if at else hosts
    return parts._replace(netloc=netloc).geturl()


def _check_url(url: str) -> None:
    if not isinstance(url, str):
        raise InvalidOption(f"the PostgreSQL DSN must be a URL string, got {type(url).__name__}")
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("postgres", "postgresql"):
            raise ValueError(f"the scheme is {scheme or 'missing'!r}, not postgresql://")
        hosts = parts.netloc.rpartition("@")[2]
        for host in filter(None, hosts.split(",")):
            port = host.rpartition("]")[2].rpartition(":")[2] if ":" in host else ""
            if port and not port.isdigit():
                raise ValueError(f"the port {port!r} is not a number")
    except ValueError as exc:
        raise BackendError(
            f"bad PostgreSQL URL {_redact(url)!r}: {exc}; write "
            "postgresql://user[:password]@host[:port]/database"
        ) from None


def _channel_name(schema: str, queue: str, suffix: str = "") -> str:
    """A NOTIFY channel of at most 63 bytes: ``<schema>_<hash of schema and queue>``."""
    digest = hashlib.sha1(f"{schema}\0{queue}".encode(), usedforsecurity=False).hexdigest()
    return f"{schema}_{digest[:12]}{suffix}"


async def _no_reset(connection: asyncpg.Connection) -> None:
    """Pool reset: rxqueue leaves no session state behind (its advisory locks are
    transaction-scoped, it never LISTENs on pool connections), so the default
    reset's extra round trip per checkout buys nothing. An open transaction is
    still rolled back by asyncpg itself."""


# --- the doorbell: LISTEN/NOTIFY ---------------------------------------------------------------


Connect = Callable[[], Awaitable[asyncpg.Connection]]
Handler = Callable[[str], None]


class PostgresDoorbell:
    """A :class:`~rxqueue.streams.Doorbell` rung by NOTIFY on one queue's channel.

    One dedicated connection LISTENs, opened by the first :meth:`wait` (a
    producer-only process never opens it). If it is lost, it reconnects with
    backoff and listens again, and rings once (a notification may have been
    missed meanwhile); a connection quiet for ``check_after`` seconds is
    checked with ``SELECT 1``. :meth:`notify` rings this process's waiters
    only: pushes ring other processes by ``pg_notify`` in their transaction.
    As with the socket doorbell, a ring while nobody waits is kept: the next
    :meth:`wait` returns True at once.
    """

    check_after: float = 30.0

    def __init__(
        self, connect: Connect, channel: str, *, released: tuple[str, str] | None = None
    ) -> None:
        self._connect = connect
        self.channel = channel
        self._event = asyncio.Event()
        self._handlers: dict[str, Handler] = {channel: self._rung}
        if released is not None:
            # (channel, queue): the schema's trigger announces there, by queue name,
            # tasks released by their last dependency's Done (tasks_settle).
            released_channel, queue = released

            def on_released(payload: str) -> None:
                if payload == queue:
                    self._event.set()

            self._handlers[released_channel] = on_released
        self._runner: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self._listening = asyncio.Event()
        self._lock = asyncio.Lock()  # one operation at a time on the connection
        self._users: set[int] = set()
        self._closed = False
        self.connections = 0  # connections made (tests watch reconnects)
        self.last_error: BaseException | None = None

    def __repr__(self) -> str:
        state = "listening" if self._listening.is_set() else "idle"
        return f"PostgresDoorbell({self.channel!r}, {state})"

    # --- the Doorbell protocol -----------------------------------------------------------

    def notify(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        self._start()
        event = self._event
        if not event.is_set():
            try:
                async with asyncio.timeout(timeout):
                    await event.wait()
            except TimeoutError:
                return False
        event.clear()
        return True

    # --- listening ----------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    async def until_listening(self, timeout: float) -> bool:
        """Start listening if needed; True once LISTEN is active (False after ``timeout``)."""
        self._start()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._listening.wait()
        return self._listening.is_set()

    async def listen(self, channel: str, handler: Handler) -> None:
        """Also call ``handler(payload)`` for NOTIFYs on ``channel``."""
        if channel in self._handlers:
            return
        self._handlers[channel] = handler
        conn = self._conn
        if conn is not None and self._listening.is_set():  # else the setup will add it
            async with self._lock:
                with contextlib.suppress(*_DRIVER_ERRORS):  # lost: the reconnection adds it
                    await conn.add_listener(channel, self._on_notification)

    def _rung(self, payload: str) -> None:
        self._event.set()

    def _on_notification(self, connection: object, pid: int, channel: str, payload: object) -> None:
        handler = self._handlers.get(channel)
        if handler is not None:
            handler(str(payload))

    def _start(self) -> None:
        if self._runner is None and not self._closed:
            self._runner = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        pause = 0.05
        while not self._closed:
            try:
                conn = await self._connect()
            except Exception as exc:  # the server is down: the poll finds tasks meanwhile
                self.last_error = exc
                await asyncio.sleep(pause)
                pause = min(2.0, pause * 2)
                continue
            self.connections += 1
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _, lost=lost: lost.set())
            try:
                self._conn = conn
                added: set[str] = set()
                while pending := [name for name in self._handlers if name not in added]:
                    async with self._lock:
                        for channel in pending:  # listen() may add more meanwhile
                            await conn.add_listener(channel, self._on_notification)
                            added.add(channel)
                self._listening.set()
                pause = 0.05
                self._event.set()  # a notification may have been missed: claim once
                await self._watch(conn, lost)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = exc
            finally:
                self._listening.clear()
                self._conn = None
                conn.terminate()
            if not self._closed:
                self._event.set()  # lost: claim now, then poll until we are back
                await asyncio.sleep(pause)
                pause = min(2.0, pause * 2)

    async def _watch(self, conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        """Return when the connection is lost (a quiet one is checked now and then)."""
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.check_after):
                    await lost.wait()
            if lost.is_set() or conn.is_closed():
                return
            async with self._lock:
                await conn.execute("SELECT 1", timeout=min(10.0, self.check_after))

    # --- users and teardown ------------------------------------------------------------------

    def attach(self, user: object) -> None:
        self._users.add(id(user))
        self._closed = False

    async def detach(self, user: object) -> None:
        """``user`` (a backend's shared state) closed; the last one stops listening."""
        self._users.discard(id(user))
        if not self._users:
            await self.close()

    async def close(self) -> None:
        self._closed = True
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        self._listening.clear()


# --- the backend -------------------------------------------------------------------------------


class _Server:
    """What a backend and its ``pipe`` copies share: the pool and the connect options."""

    __slots__ = ("closed", "connect_options", "dsn", "pool", "where")

    def __init__(self, dsn: str, where: str, connect_options: dict[str, Any]) -> None:
        self.dsn = dsn
        self.where = where
        self.connect_options = connect_options
        self.pool: asyncpg.Pool | None = None
        self.closed = False


class PostgresBackend(ClaimingBackend):
    """Tasks in a PostgreSQL schema, shared by workers on any number of hosts.

    The pool opens lazily on first use (or ``async with``); :meth:`close`
    closes it. ``pool_min_size``/``pool_max_size`` size it; every connection
    shows ``application_name`` ``rxqueue`` (``rxqueue:<worker_name>`` when
    given) in ``pg_stat_activity``. ``connect_timeout`` bounds a connection
    attempt (an unreachable server fails a push within it), ``command_timeout``
    a statement (``None``: no limit). ``lease_timeout`` is how long a worker
    may go without a heartbeat before its tasks are reclaimed;
    ``heartbeat_interval`` is how often workers send one. ``rate_limit=(n, per)``
    and ``max_running=n`` hold for the queue across every worker on any host,
    checked inside the claim (see :class:`~rxqueue.backends.base.Limits`); claims
    under a limit are one transaction of two statements, run one at a time per queue.
    """

    capabilities = ALL_CAPABILITIES | {Capability.TRANSACTIONS}

    def __init__(
        self,
        dsn: str,
        *,
        queue: str = DEFAULT_QUEUE,
        schema: str = "rxqueue",
        codec: Codec = DEFAULT_CODEC,
        clock: Clock = system_clock,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        lease_timeout: float = 60.0,
        heartbeat_interval: float = 10.0,
        poll_interval: float = 0.05,
        max_poll_interval: float = 1.0,
        pool_min_size: int = 1,
        pool_max_size: int = 10,
        worker_name: str | None = None,
        connect_timeout: float = 5.0,
        command_timeout: float | None = 60.0,
        rate_limit: tuple[int, float] | None = None,
        max_running: int | None = None,
    ) -> None:
        super().__init__(queue=queue, codec=codec, clock=clock, max_attempts=max_attempts)
        self.limits = Limits.check(rate_limit, max_running)
        _check_url(dsn)
        self.schema = check_schema(schema)
        for name, value in {
            "lease_timeout": lease_timeout,
            "heartbeat_interval": heartbeat_interval,
            "poll_interval": poll_interval,
            "connect_timeout": connect_timeout,
        }.items():
            if check_seconds(name, value) <= 0:
                raise InvalidOption(f"{name} must be a positive number of seconds, got {value!r}")
        check_seconds("max_poll_interval", max_poll_interval)
        if command_timeout is not None and check_seconds("command_timeout", command_timeout) <= 0:
            raise InvalidOption(
                f"command_timeout must be positive or None, got {command_timeout!r}"
            )
        check_int("pool_min_size", pool_min_size, low=0)
        check_int("pool_max_size", pool_max_size, low=max(1, pool_min_size))
        if worker_name is not None and (not isinstance(worker_name, str) or not worker_name):
            raise InvalidOption(f"worker_name must be a non-empty string, got {worker_name!r}")
        self.lease_timeout = float(lease_timeout)
        self.heartbeat_interval = float(heartbeat_interval)
        self.poll_interval = float(poll_interval)
        self.max_poll_interval = max(self.poll_interval, float(max_poll_interval))
        self.pool_min_size = pool_min_size
        self.pool_max_size = pool_max_size
        self.connect_timeout = float(connect_timeout)
        self.command_timeout = command_timeout
        self.application_name = (f"rxqueue:{worker_name}" if worker_name else "rxqueue")[:63]
        where = _describe(dsn)
        self._server = _Server(
            dsn,
            where,
            {
                "timeout": self.connect_timeout,
                "command_timeout": command_timeout,
                "server_settings": {"application_name": self.application_name},
            },
        )
        self._sql = _Statements(self.schema)
        self.channel = _channel_name(self.schema, queue)
        self.done_channel = _channel_name(self.schema, queue, "_d")
        # Where acks announce released workflow steps, by queue (every queue listens).
        self._released_channel = f"{self.schema}_released"
        self._channel_key = ("postgres", where, self.schema, queue)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresBackend:
        """``postgresql://user[:password]@host[:port]/database`` (``postgres://`` too);
        ``schema=``, ``queue=`` and the other options are keywords."""
        _check_url(url)
        return cls(url, **options)

    @property
    def where(self) -> str:
        """``PostgreSQL at host:port/database``: how messages name the server."""
        return self._server.where

    def __repr__(self) -> str:
        ops = f", ops={len(self._operators)}" if self._operators else ""
        return (
            f"PostgresBackend({_redact(self._server.dsn)!r}, schema={self.schema!r}, "
            f"queue={self.queue!r}{ops})"
        )

    # --- plumbing -------------------------------------------------------------------------

    async def _open(self) -> None:
        server = self._server
        if server.closed:
            raise BackendClosed(f"{self!r} is closed; open a new one")
        try:
            pool = await asyncpg.create_pool(
                server.dsn,
                min_size=self.pool_min_size,
                max_size=self.pool_max_size,
                reset=_no_reset,
                **server.connect_options,
            )
        except _DRIVER_ERRORS as exc:
            raise schema_module.translate(exc, where=server.where) from exc
        try:
            async with pool.acquire() as conn:
                await schema_module.prepare(conn, schema=self.schema, where=server.where)
        except BaseException as exc:
            pool.terminate()
            if isinstance(exc, _DRIVER_ERRORS):
                raise schema_module.translate(exc, where=server.where) from exc
            raise
        server.pool = pool
        bell = self._bell()
        if bell is not None:
            bell.attach(server)

    async def _close(self) -> None:
        server = self._server
        server.closed = True
        pool, server.pool = server.pool, None
        bell = self._bell()
        if bell is not None:
            await bell.detach(server)
        if pool is not None:
            try:
                async with asyncio.timeout(10):
                    await pool.close()
            except (TimeoutError, *_DRIVER_ERRORS):
                pool.terminate()

    def _make_doorbell(self) -> Doorbell:
        server = self._server

        async def connect() -> asyncpg.Connection:
            return await asyncpg.connect(server.dsn, **server.connect_options)

        released = (self._released_channel, self.queue)
        return PostgresDoorbell(connect, self.channel, released=released)

    def _bell(self) -> PostgresDoorbell | None:
        bell = self._local().doorbell
        return bell if isinstance(bell, PostgresDoorbell) else None

    async def _pool(self) -> asyncpg.Pool:
        pool = self._server.pool
        if pool is None:
            await self.open()  # raises BackendClosed once closed
            pool = self._server.pool
            if pool is None:
                raise BackendClosed(f"{self!r} is closed; open a new one")
        return pool

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except _DRIVER_ERRORS as exc:
            if isinstance(exc, asyncpg.InterfaceError) and self._server.closed:
                raise BackendClosed(f"{self!r} was closed during the operation") from exc
            raise schema_module.translate(exc, where=self._server.where) from exc

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pool connection; a transient error drops it (it may be broken) and
        every driver error leaves as a BackendError naming the server."""
        pool = await self._pool()
        with self._translated():
            async with pool.acquire() as conn:
                try:
                    yield conn
                except _DRIVER_ERRORS as exc:
                    if schema_module.is_transient(exc):
                        # A connection already lost is back in the pool (to be replaced).
                        with contextlib.suppress(asyncpg.InterfaceError):
                            conn.terminate()
                    raise

    async def _fetch(self, statement: str, *args: Any) -> list[asyncpg.Record]:
        async with self._connection() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(statement, *args)
            return rows

    async def _execute(self, statement: str, *args: Any) -> str:
        async with self._connection() as conn:
            status: str = await conn.execute(statement, *args)
            return status

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._connection() as conn, conn.transaction():
            yield conn

    # --- fetcher: the shared claim loop over _claim (ClaimingBackend) ------------------------

    async def _claim(self, worker: str, limit: int) -> list[Task[Any]]:
        """Claim up to ``limit`` ready tasks for ``worker``, in claim order
        (priority desc, run_at, id), payloads still encoded.

        The fetcher's one store call; tests may call it to act as a worker. One
        statement; under :attr:`limits`, a transaction of two (see _CLAIM_LIMITED).
        """
        now = self.clock()
        try:
            async with self._connection() as conn:
                if self.limits is None:
                    rows = await conn.fetch(self._sql.claim, worker, now, self.queue, limit)
                else:
                    rows = await self._claim_limited(conn, self.limits, worker, now, limit)
        except BackendUnavailable:
            await self._unclaim(worker, now)
            raise
        tasks: list[Task[Any]] = []
        corrupt: list[tuple[str, str, int]] = []
        for row in rows:
            try:
                task = read_claimed(row)
            except (ValueError, TypeError) as exc:
                corrupt.append((row["id"], f"corrupt task row: {exc}", row["attempts"]))
                continue
            inputs = row[-1]  # the results of its dependencies, for those that had some
            if inputs is not None:  # a fresh Task, not yet shared: set it in place
                object.__setattr__(task, "args", encode_list(self.codec, inputs))
            tasks.append(task)
        if corrupt:
            await self._fetch(
                self._sql.acks,
                worker, [], [], [], [], [], [],
                [task_id for task_id, _, _ in corrupt],
                [error for _, error, _ in corrupt],
                now, self.channel, False, self.done_channel,
                [], [], [], [attempts for _, _, attempts in corrupt], [], [], [],
                [], [], [], [], self._released_channel,
            )  # fmt: skip
        if len(tasks) > 1:
            tasks.sort(key=claim_order)
        return tasks

    async def _claim_limited(
        self, conn: asyncpg.Connection, limits: Limits, worker: str, now: float, limit: int
    ) -> list[asyncpg.Record]:
        sql, queue = self._sql, self.queue
        async with conn.transaction():
            stored = await conn.fetchrow(sql.lock_limits, queue)
            if stored is None:  # the queue's first limited claim: add its row, then lock it
                full = float(limits.rate_limit[0]) if limits.rate_limit else 0.0
                await conn.execute(sql.add_limits, queue, full, now)
                stored = await conn.fetchrow(sql.lock_limits, queue)
            tokens, updated_at = limits.refill((stored[0], stored[1]), now)
            allowed = limits.allowance(limit, tokens, 0)  # max_running: counted in SQL
            if not allowed:
                return []
            cap = _NO_CAP if limits.max_running is None else limits.max_running
            rows: list[asyncpg.Record] = await conn.fetch(
                sql.claim_limited, worker, now, queue, allowed, cap, tokens, updated_at
            )
            return rows

    async def _unclaim(self, worker: str, claimed_at: float) -> None:
        """The connection was lost during a claim, which may have committed: hand
        back what it claimed, if anything, rather than hold it until a restart."""
        pool = self._server.pool
        if pool is None:
            return
        with contextlib.suppress(*_DRIVER_ERRORS):
            async with asyncio.timeout(self.connect_timeout):
                rows = await pool.fetch(
                    self._sql.unclaim,
                    self.queue, worker, claimed_at, self.channel, self.clock(), self.done_channel,
                )  # fmt: skip
                self._local().finished([row[0] for row in rows if row[0] is not None])

    # --- sink -------------------------------------------------------------------------------

    async def _store(
        self, tasks: Sequence[Task[Any]], payloads: Sequence[bytes], connection: Any = None
    ) -> list[TaskId]:
        ids = [task.id for task in tasks]
        if any(task.depends_on for task in tasks):
            return await self._store_graph(tasks, payloads, connection)
        first = tasks[0]
        alike = first.unique_key is None and all(
            task.unique_key is None
            and task.attempts == first.attempts
            and task.max_attempts == first.max_attempts
            and task.priority == first.priority
            and task.run_at == first.run_at
            and task.created_at == first.created_at
            and task.last_error == first.last_error
            and task.metadata == first.metadata
            for task in tasks
        )
        statement = self._sql.insert
        if alike:  # push_many: one value for every shared column
            statement = self._sql.insert_alike
            args: tuple[Any, ...] = (
                self.queue, ids, list(payloads), first.attempts, first.max_attempts,
                first.priority, first.run_at, first.created_at, first.last_error,
                metadata_json(first), self.channel,
            )  # fmt: skip
        else:
            args = (
                self.queue,
                ids,
                list(payloads),
                [task.attempts for task in tasks],
                [task.max_attempts for task in tasks],
                [task.priority for task in tasks],
                [task.run_at for task in tasks],
                [task.created_at for task in tasks],
                [task.last_error for task in tasks],
                [metadata_json(task) for task in tasks],
                self.channel,
            )
            if any(task.unique_key is not None for task in tasks):
                return await self._store_unique(tasks, ids, args, connection)
        if connection is not None:
            _check_connection(connection)
            await self._insert(connection, ids, args, theirs=True, statement=statement)
            return ids  # fetchers wake by the NOTIFY, when (if) the caller commits
        async with self._connection() as conn:
            await self._insert(conn, ids, args, theirs=False, statement=statement)
        self._local().doorbell.notify()
        return ids

    async def _store_graph(
        self, tasks: Sequence[Task[Any]], payloads: Sequence[bytes], connection: Any
    ) -> list[TaskId]:
        """``_store`` for tasks of which some depend on others (see _LOCK_PARENTS)."""
        if any(task.unique_key is not None for task in tasks):
            raise UnsupportedOperation(
                f"{self.where}: a push with depends_on cannot also use unique keys; push "
                "the unique tasks in a call of their own"
            )
        ids = [task.id for task in tasks]
        if connection is not None:
            _check_connection(connection)
            with self._translated():
                async with connection.transaction():  # a savepoint in the caller's
                    await self._insert_graph(connection, tasks, payloads, self.clock())
            return ids  # fetchers wake by the NOTIFY, when (if) the caller commits
        async with self._transaction() as conn:
            await self._insert_graph(conn, tasks, payloads, self.clock())
        self._local().doorbell.notify()
        return ids

    async def _insert_graph(
        self,
        conn: asyncpg.Connection,
        tasks: Sequence[Task[Any]],
        payloads: Sequence[bytes],
        now: float,
        joined: frozenset[TaskId] = frozenset(),
    ) -> None:
        """Insert ``tasks`` in the caller's transaction: those with dependencies wait
        for the unfinished ones, are released at once if all are Done, or killed if
        one failed. Every dependency must be stored already or among ``tasks``;
        ``joined`` are ids some other task will wait for (their trigger must fire)."""
        sql = self._sql
        batch = {task.id for task in tasks}
        parents = sorted({p for task in tasks for p in task.depends_on} - batch)
        found: dict[TaskId, tuple[str, str | None]] = {}
        if parents:
            rows = await conn.fetch(sql.lock_parents, parents)
            found = {row[0]: (row[1], row[2]) for row in rows}
        for task in tasks:
            unknown = [p for p in task.depends_on if p not in found and p not in batch]
            if unknown:
                raise InvalidOption(
                    f"task {task.id!r} depends on {unknown[0]!r}, which is not stored: push "
                    "the tasks it depends on first, or in the same call"
                )
        flagged = joined | {p for task in tasks for p in task.depends_on}
        try:
            await conn.execute(
                sql.insert_graph,
                [task.id for task in tasks],
                [task.queue for task in tasks],
                list(payloads),
                [task.attempts for task in tasks],
                [task.max_attempts for task in tasks],
                [task.priority for task in tasks],
                [task.run_at for task in tasks],
                [task.created_at for task in tasks],
                [task.last_error for task in tasks],
                [metadata_json(task) for task in tasks],
                [len(task.depends_on) for task in tasks],
                [task.id in flagged for task in tasks],
            )
        except asyncpg.UniqueViolationError as exc:
            match = _DUPLICATE_KEY.search(getattr(exc, "detail", None) or str(exc))
            raise TaskExists(match.group(1) if match else "?") from None
        dependants = [task for task in tasks if task.depends_on]
        await conn.execute(
            sql.insert_edges,
            [task.id for task in dependants for _ in task.depends_on],
            [position for task in dependants for position in range(len(task.depends_on))],
            [parent for task in dependants for parent in task.depends_on],
        )
        killed: dict[TaskId, str] = {}
        done: dict[TaskId, int] = {}
        for task in dependants:
            stored = [found[p] + (p,) for p in task.depends_on if p in found]
            failed = next((each for each in stored if each[0] in ("Killed", "Cancelled")), None)
            if failed is not None:
                status, error, parent = failed
                killed[task.id] = dependency_failed(parent, status, error)
            elif count := sum(1 for each in stored if each[0] == "Done"):
                done[task.id] = count
        if killed:  # first: their own dependants among ``tasks`` end Killed too
            await conn.execute(sql.kill_waiting, list(killed), list(killed.values()), now)
        if done:
            await conn.execute(sql.count_down, list(done), list(done.values()), now)
        channels = sorted({_channel_name(self.schema, task.queue) for task in tasks})
        await conn.execute(sql.notify_all, channels)

    async def _store_unique(
        self,
        tasks: Sequence[Task[Any]],
        ids: list[TaskId],
        args: tuple[Any, ...],
        connection: Any,
    ) -> list[TaskId]:
        """``_store`` for tasks with unique keys: release, insert, read the holders.

        Pushers racing for the same keys may deadlock on the keys' index entries
        (PostgreSQL then rolls one back) or find a holder gone by the time they read
        it (vacuumed): the whole transaction runs again, a few times at most.
        """
        keys = sorted({task.unique_key for task in tasks if task.unique_key is not None})
        args = (*args, [task.unique_key for task in tasks], [task.unique_until for task in tasks])
        sql = self._sql

        async def attempt(conn: asyncpg.Connection, *, theirs: bool) -> dict[str, TaskId]:
            await conn.execute(sql.release_keys, self.queue, keys, self.clock())
            await self._insert(conn, ids, args, theirs=theirs, statement=sql.insert_unique)
            rows = await conn.fetch(sql.key_holders, self.queue, keys)
            holders: dict[str, TaskId] = {row[0]: row[1] for row in rows}
            if len(holders) < len(keys):
                raise _HolderGone  # rolls back this try's inserts
            return holders

        if connection is not None:  # the caller's transaction: one try, theirs to redo
            _check_connection(connection)
            try:
                with self._translated():
                    holders = await attempt(connection, theirs=True)
            except _HolderGone:
                raise BackendUnavailable(
                    f"{self.where}: a unique key's holder was deleted while pushing; roll "
                    "back your transaction and try again"
                ) from None
            return answer_ids(tasks, holders)
        for tries_left in reversed(range(_UNIQUE_TRIES)):
            async with self._connection() as conn:
                try:
                    async with conn.transaction():
                        holders = await attempt(conn, theirs=False)
                    break
                except (asyncpg.TransactionRollbackError, _HolderGone):
                    if not tries_left:
                        raise BackendUnavailable(
                            f"{self.where}: pushers kept racing for the same unique keys "
                            f"({_UNIQUE_TRIES} tries); try again"
                        ) from None
        stored = answer_ids(tasks, holders)
        if any(a == b for a, b in zip(stored, ids, strict=True)):
            self._local().doorbell.notify()
        return stored

    async def _copy_alike(self, conn: asyncpg.Connection, args: tuple[Any, ...]) -> None:
        """A large push_many as COPY (twice the rows a second of the INSERT), and its
        NOTIFY, in one transaction (a savepoint inside the caller's)."""
        queue, ids, payloads, *shared, channel = args
        rows = [(i, queue, a, *shared) for i, a in zip(ids, payloads, strict=True)]
        async with conn.transaction():
            await conn.copy_records_to_table(
                "tasks", schema_name=self.schema, columns=_COPY_COLUMNS, records=rows
            )
            await conn.execute("SELECT pg_notify($1, '')", channel)

    async def _insert(
        self,
        conn: asyncpg.Connection,
        ids: list[TaskId],
        args: tuple[Any, ...],
        *,
        theirs: bool,
        statement: str | None = None,
    ) -> None:
        try:
            if statement == self._sql.insert_alike and len(ids) >= _COPY_FROM:
                await self._copy_alike(conn, args)
            else:
                await conn.execute(statement or self._sql.insert, *args)
        except asyncpg.UniqueViolationError as exc:
            match = _DUPLICATE_KEY.search(getattr(exc, "detail", None) or str(exc))
            taken = match.group(1) if match else None
            if taken is None and not theirs:
                taken = await conn.fetchval(self._sql.existing, ids)
            raise TaskExists(taken or "?") from None
        except asyncpg.UndefinedTableError as exc:
            if not theirs:
                raise
            raise BackendError(
                f"{self.where}: your connection sees no {self.schema}.tasks table: it is "
                f"connected to another database than this backend, or the schema "
                f"{self.schema!r} was dropped ({type(exc).__name__}: {exc})"
            ) from exc
        except _DRIVER_ERRORS as exc:
            if not theirs:
                raise
            raise schema_module.translate(exc, where=self.where) from exc

    # --- acker ------------------------------------------------------------------------------

    async def report(self, batch: AckBatch) -> list[TaskId]:
        if not len(batch):
            return []
        now = self.clock()
        outcome_ids = {task.id for task, _ in batch.done}
        outcome_ids.update(task.id for task, _ in batch.retried)
        outcome_ids.update(task.id for task, _ in batch.killed)
        outcome_ids.update(task.id for task, _ in batch.cancelled)
        # A task started and finished in one batch ends finished: one update is enough.
        started = [task.id for task in batch.started if task.id not in outcome_ids]
        ready_now = any(retry.at <= now for _, retry in batch.retried)
        args = (
            batch.worker,
            started,
            [task.id for task, _ in batch.done],
            [result for _, result in batch.done],
            [task.id for task, _ in batch.retried],
            [retry.at for _, retry in batch.retried],
            [retry.error for _, retry in batch.retried],
            [task.id for task, _ in batch.killed],
            [killed.error for _, killed in batch.killed],
            now,
            self.channel,
            ready_now,
            self.done_channel,
            [task.attempts for task in batch.started if task.id not in outcome_ids],
            [task.attempts for task, _ in batch.done],
            [task.attempts for task, _ in batch.retried],
            [task.attempts for task, _ in batch.killed],
            [task.id for task, _ in batch.cancelled],
            [cancelled.error for _, cancelled in batch.cancelled],
            [task.attempts for task, _ in batch.cancelled],
            [task.id for task, _ in batch.progress],
            [progress.fraction for _, progress in batch.progress],
            [progress.note for _, progress in batch.progress],
            [task.attempts for task, _ in batch.progress],
            self._released_channel,
        )
        if batch.spawned:  # stored in the acks' transaction, before the Dones
            async with self._transaction() as conn:
                await self._spawn(conn, batch, now)
                rows = await conn.fetch(self._sql.acks, *args)
        else:
            rows = await self._fetch(self._sql.acks, *args)
        # An update applies to its own claim only: (id, attempts) is the claim token.
        applied = {(row[0], row[1]) for row in rows if row[0] is not None}
        # In apply order (started, done, retried, killed, cancelled; batch order within a kind),
        # each claim once: a task started and finished here is refused if its outcome was.
        order = [(task.id, task.attempts) for task in batch.started]
        order += [(task.id, task.attempts) for task, _ in batch.done]
        order += [(task.id, task.attempts) for task, _ in batch.retried]
        order += [(task.id, task.attempts) for task, _ in batch.killed]
        order += [(task.id, task.attempts) for task, _ in batch.cancelled]
        refused = [claim[0] for claim in dict.fromkeys(order) if claim not in applied]
        local = self._local()
        if ready_now or batch.spawned or frees_room(self.limits, batch):
            local.doorbell.notify()
        if local.waiters:
            local.finished(batch.finished)
        return refused

    async def _spawn(self, conn: asyncpg.Connection, batch: AckBatch, now: float) -> None:
        """Store what each Done of ``batch`` spawns, if its task is still held by this
        claim (locked, so that its Done, next in this transaction, is recorded too)."""
        parents = [parent for parent, _, _ in batch.spawned]
        rows = await conn.fetch(
            self._sql.holds,
            [task.id for task in parents], [task.attempts for task in parents], batch.worker,
        )  # fmt: skip
        held = {row[0] for row in rows}
        spawned: list[Task[Any]] = []
        joins: list[tuple[TaskId, list[TaskId]]] = []
        for parent, tasks, join in batch.spawned:
            if parent.id in held and tasks:
                spawned += tasks
                if join is not None:
                    joins.append((join, [task.id for task in tasks]))
        if not spawned:
            return
        joined = frozenset(task_id for _, ids in joins for task_id in ids)
        await self._insert_graph(conn, spawned, [task.args for task in spawned], now, joined)
        for join, ids in joins:
            await conn.execute(self._sql.join_more, join, ids)

    async def release(self, tasks: Sequence[Task[Any]], worker: str) -> None:
        ids = [task.id for task in tasks]
        local = self._local()
        if ids:
            rows = await self._fetch(
                self._sql.release, ids, worker, self.channel, self.clock(), self.done_channel
            )
            cancelled = [row[0] for row in rows if row[0] is not None]
            if cancelled:
                local.finished(cancelled)
        local.doorbell.notify()

    # --- workers and leases -------------------------------------------------------------------

    async def register_worker(self, worker: str) -> None:
        """Record the worker; refuse a name whose heartbeat is still fresh.

        Tasks still held under this name belong to a dead predecessor (this worker
        has claimed nothing yet): they are taken back as by :meth:`reclaim`.
        """
        queue, now, lease = self.queue, self.clock(), self.lease_timeout
        pid, host = os.getpid(), socket.gethostname()
        async with self._transaction() as conn:
            registered = await conn.fetchval(
                self._sql.register, queue, worker, now, lease, pid, host
            )
            if registered is None:
                seen = await conn.fetchrow(self._sql.worker_seen, queue, worker)
                ago = f"{now - seen[0]:.1f}s ago" if seen is not None else "just now"
                where = f"pid {seen[1]} on {seen[2]}, " if seen is not None else ""
                raise WorkerError(
                    f"a worker named {worker!r} is alive on queue {queue!r} of {self.where} "
                    f"({where}heartbeat {ago}); give this worker another name, or stop "
                    "the other one first"
                )
            orphans = await conn.fetch(
                self._sql.expire_name, queue, now, worker, self.channel, self.done_channel
            )
        self._expired([row for row in orphans if row[0] is not None])

    async def heartbeat(self, worker: str) -> list[tuple[TaskId, str]]:
        """Record the beat and read the cancel requests for ``worker``'s tasks: one statement."""
        rows = await self._fetch(
            self._sql.heartbeat,
            self.queue, worker, self.clock(), os.getpid(), socket.gethostname(),
        )  # fmt: skip
        return [(row[0], row[1]) for row in rows]

    async def unregister_worker(self, worker: str) -> None:
        """Forget the worker (only this process's registration of the name)."""
        await self._execute(
            self._sql.unregister, self.queue, worker, os.getpid(), socket.gethostname()
        )

    async def reclaim(self) -> int:
        """Take back tasks whose worker's lease expired: Pending with one more
        attempt, or Killed once attempts reach max_attempts (Cancelled if asked to
        cancel). Safe to run from several workers at once (rows are locked with
        SKIP LOCKED)."""
        rows = await self._fetch(
            self._sql.reclaim,
            self.queue, self.clock(), self.lease_timeout, self.channel, self.done_channel,
        )  # fmt: skip
        changed = [row for row in rows if row[0] is not None]
        self._expired(changed)
        return len(changed)

    # --- inspection ---------------------------------------------------------------------------

    async def _get(self, task_id: TaskId) -> Task[Any] | None:
        rows = await self._fetch(self._sql.get, task_id, self.queue)
        return read_shown(rows[0]) if rows else None

    async def _stats(self) -> dict[Status, int]:
        rows = await self._fetch(self._sql.stats, self.queue)
        return {Status(status): count for status, count in rows}

    async def _list(self, status: Status | None, limit: int, offset: int) -> list[Task[Any]]:
        if status is None:
            rows = await self._fetch(self._sql.list, self.queue, limit, offset)
        else:
            rows = await self._fetch(self._sql.list_status, self.queue, limit, offset, status.value)
        return [read_shown(row) for row in rows]

    async def _status_of(self, task_id: TaskId) -> Status:
        rows = await self._fetch(self._sql.status, task_id, self.queue)
        if not rows:
            raise TaskNotFound(f"no task {task_id!r} in queue {self.queue!r}")
        return Status(rows[0][0])

    async def _retry(self, task_id: TaskId) -> None:
        rows = await self._fetch(self._sql.retry, task_id, self.queue, self.clock(), self.channel)
        if not rows:
            status = await self._status_of(task_id)
            raise InvalidTransition(
                f"only Failed or Killed tasks can be retried; {task_id} is {status}"
            )

    async def _kill(self, task_id: TaskId, reason: str) -> bool:
        rows = await self._fetch(
            self._sql.kill, task_id, self.queue, reason, self.clock(), self.done_channel
        )
        if any(row[0] is not None for row in rows):
            return True
        await self._status_of(task_id)  # TaskNotFound for an unknown id
        return False

    async def _cancel(self, task_id: TaskId, reason: str) -> Status:
        sql = self._sql
        async with self._transaction() as conn:
            found = await conn.fetchval(sql.cancel_status, task_id, self.queue)
            if found is None:
                raise TaskNotFound(f"no task {task_id!r} in queue {self.queue!r}")
            status = Status(found)
            if status in READY or status is Status.WAITING:
                error = f"cancelled: {reason}"
                await conn.execute(sql.cancel_now, task_id, error, self.clock(), self.done_channel)
                return Status.CANCELLED
            if status in ACTIVE:  # its worker cancels it: at once here, or at a heartbeat
                await conn.execute(sql.cancel_later, task_id, reason)
            return status

    async def _vacuum(self, older_than: float) -> int:
        cutoff = self.clock() - older_than
        async with self._transaction() as conn:
            deleted: int = await conn.fetchval(self._sql.vacuum, self.queue, cutoff, timeout=None)
            await conn.execute(self._sql.vacuum_waiters, timeout=None)
        return deleted

    async def _family(self, run_id: TaskId) -> list[Task[Any]]:
        # "0" follows "/": the ids "<run_id>/..." are those in [run_id/, run_id0).
        rows = await self._fetch(self._sql.family, run_id, f"{run_id}/", f"{run_id}0")
        return [read_shown(row) for row in rows]

    async def has_work(self, horizon: float) -> bool:
        rows = await self._fetch(self._sql.has_work, self.queue, self.clock() + horizon)
        return bool(rows[0][0])

    async def wait_for(
        self, task_id: TaskId, *, timeout: float | None = None, poll_interval: float = 0.05
    ) -> Task[Any]:
        """Wait until the task is finished (Done, Killed or Cancelled) and return it.

        A worker in any process that finishes it sends a NOTIFY (this call
        registers as a waiter, so only awaited tasks cost one), which wakes
        the wait at once; polling with backoff stays as the fallback.
        """
        self._require(Capability.GET)
        await self.open()
        bell = self._bell()
        if bell is not None:
            await bell.listen(self.done_channel, self._on_finished)
            await bell.until_listening(min(self.connect_timeout, 1.0))
        token = uuid.uuid4().hex
        await self._execute(self._sql.wait_on, task_id, token, self.clock())
        try:
            return await super().wait_for(task_id, timeout=timeout, poll_interval=poll_interval)
        finally:
            pool = self._server.pool
            if pool is not None:
                with contextlib.suppress(*_DRIVER_ERRORS):
                    await asyncio.shield(pool.execute(self._sql.wait_off, task_id, token))

    def _on_finished(self, payload: str) -> None:
        local = self._local()
        if payload:
            local.finished(payload.split(","))
        else:  # too many ids for one payload: every waiter checks again
            local.finished(list(local.waiters))


def _check_connection(connection: Any) -> None:
    if not isinstance(connection, asyncpg.Connection | asyncpg.pool.PoolConnectionProxy):
        raise InvalidOption(
            "connection= must be an asyncpg connection (asyncpg.connect(...) or "
            f"pool.acquire()), got {type(connection).__name__}"
        )


class _Statements:
    """Every statement of one schema, formatted once."""

    def __init__(self, schema: str) -> None:
        s = schema_module.quote(schema)

        def sql(template: str) -> str:
            return template.replace("{s}", s)

        self.claim = sql(_CLAIM)
        self.lock_limits = sql(_LOCK_LIMITS)
        self.add_limits = sql(_ADD_LIMITS)
        self.claim_limited = sql(_CLAIM_LIMITED)
        self.unclaim = sql(_UNCLAIM)
        self.insert = sql(_INSERT)
        self.release_keys = sql(_RELEASE_KEYS)
        self.insert_unique = sql(_INSERT_UNIQUE)
        self.insert_alike = sql(_INSERT_ALIKE)
        self.key_holders = sql(_KEY_HOLDERS)
        self.acks = sql(_ACKS)
        self.release = sql(_RELEASE)
        self.reclaim = sql(_RECLAIM)
        self.expire_name = sql(_EXPIRE_NAME)
        self.register = sql(_REGISTER)
        self.worker_seen = sql(_WORKER_SEEN)
        self.heartbeat = sql(_HEARTBEAT)
        self.unregister = sql(_UNREGISTER)
        self.get = sql(_GET)
        self.status = sql(_STATUS)
        self.existing = sql(_EXISTING)
        self.stats = sql(_STATS)
        self.list = sql(_LIST)
        self.list_status = sql(_LIST_STATUS)
        self.retry = sql(_RETRY_NOW)
        self.kill = sql(_KILL)
        self.cancel_status = sql(_CANCEL_STATUS)
        self.cancel_now = sql(_CANCEL_NOW)
        self.cancel_later = sql(_CANCEL_LATER)
        self.vacuum = sql(_VACUUM)
        self.vacuum_waiters = sql(_VACUUM_WAITERS)
        self.notify_all = _NOTIFY_ALL
        self.has_work = sql(_HAS_WORK)
        self.wait_on = sql(_WAIT_ON)
        self.wait_off = sql(_WAIT_OFF)
        self.lock_parents = sql(_LOCK_PARENTS)
        self.insert_graph = sql(_INSERT_GRAPH)
        self.insert_edges = sql(_INSERT_EDGES)
        self.kill_waiting = sql(_KILL_WAITING)
        self.count_down = sql(_COUNT_DOWN)
        self.holds = sql(_HOLDS)
        self.join_more = sql(_JOIN_MORE)
        self.family = sql(_FAMILY)
