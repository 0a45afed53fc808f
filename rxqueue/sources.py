"""Periodic and cron sources: Observables of tasks, one per tick.

::

    digest = sources.cron("*/5 * * * *", payload={"kind": "digest"}, name="digest", tz="UTC")
    digest.subscribe(backend.sink())            # or WorkerBuilder(...).cron(digest)

    beat = sources.every(30, payload=ping, name="beat")  # payload may be (tick) -> payload

A source is a cold reactivex Observable of :class:`~rxqueue.task.Task` records,
so it composes with the same operators as any other stream. Each subscription
emits one task per tick, with ``run_at`` at the tick.

**One task per tick, however many processes run the source.** A tick's task id
is built from the source's name and the tick's UTC time, ``"digest@2024-05-01T12:05:00Z"``,
and its metadata says so (``{"source": "digest", "tick": "2024-05-01T12:05:00Z"}``).
The first process to store it wins; the others' pushes of the same id raise
:class:`~rxqueue.errors.TaskExists` in the store, which a backend's sink counts
as already stored (``sink.existing``), not as an error. Give different schedules
different names: the name is the identity.

**Tick times.** ``every(p)`` ticks at whole multiples of ``p`` seconds since the
Unix epoch, so every process agrees on them without talking to each other.
``cron`` ticks where its expression matches in its time zone (``tz``, default
UTC), parsed by :mod:`croniter`: five fields, or six with the seconds **last**
(croniter's convention: ``"*/5 * * * * 30"`` is second 30 of every fifth minute),
or a keyword such as ``"@hourly"``.

**Missed ticks** (``catch_up=``). A source keeps no state across restarts, so
"missed" means the ticks in ``[start, now)`` when it is subscribed: ``start`` is
an optional datetime or epoch timestamp, by default the moment of subscription
(so by default nothing is missed). ``catch_up="latest"`` (default) enqueues only
the most recent missed tick, ``"none"`` none of them, ``"all"`` every one, in
order. A source that falls behind while running (a blocked event loop, a
suspended machine) coalesces the ticks that came due meanwhile into the latest
one, unless ``catch_up="all"``. A ``start`` in the future delays the first tick.

Time comes from the scheduler: ``scheduler=`` (a reactivex scheduler, e.g. a
:class:`~reactivex.scheduler.VirtualTimeScheduler` whose clock is epoch seconds,
for tests), else the scheduler given to ``subscribe``, else an
``AsyncIOScheduler`` on the running event loop. Ticks are read from the
scheduler's ``now`` (wall-clock UTC for real schedulers), and a timer that fires
early waits again, so a tick is never emitted before its time.

If a payload callable raises, the source ends with that error (``on_error``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import reactivex
from croniter import CroniterError, croniter
from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, Disposable, SerialDisposable

from rxqueue.clock import to_timestamp
from rxqueue.errors import InvalidOption
from rxqueue.ops import _resolve_scheduler
from rxqueue.task import DEFAULT_MAX_ATTEMPTS, Task, check_int

__all__ = ["CatchUp", "cron", "every", "is_tick_task", "tick_task_id"]

CatchUp = Literal["latest", "none", "all"]
_CATCH_UP: Final = ("latest", "none", "all")

SOURCE_KEY: Final = "source"  # task.metadata keys of a tick's task
TICK_KEY: Final = "tick"

MIN_PERIOD: Final = 0.001  # tick ids have microseconds; shorter periods are not a schedule
_MAX_NAME: Final = 200  # the id (name + "@" + 27 characters of time) stays within 255
_EPSILON: Final = 1e-6  # a timer this close to its tick counts as on time
_ONE_US: Final = timedelta(microseconds=1)


def tick_task_id(name: str, tick: float) -> str:
    """The id of source ``name``'s task for the tick at epoch ``tick``: ``name@<UTC ISO>``."""
    return f"{name}@{_tick_text(tick)}"


def is_tick_task(task: Task[Any]) -> bool:
    """True for a task a source built: its id is the one its metadata's name and tick give.

    Storing such a task twice is idempotent: a sink counts the second store's
    :class:`~rxqueue.errors.TaskExists` as "already stored".
    """
    metadata = task.metadata
    source, tick = metadata.get(SOURCE_KEY), metadata.get(TICK_KEY)
    return isinstance(source, str) and isinstance(tick, str) and task.id == f"{source}@{tick}"


def every(
    seconds: float,
    *,
    payload: Any = None,
    name: str,
    catch_up: CatchUp = "latest",
    start: float | datetime | None = None,
    priority: int = 0,
    max_attempts: int | None = None,
    scheduler: abc.SchedulerBase | None = None,
) -> Observable[Task[Any]]:
    """A task every ``seconds``, at whole multiples of ``seconds`` since the Unix epoch.

    ``payload`` is the task's payload, or a callable ``(tick: datetime) -> payload``
    called per tick with the tick's aware UTC datetime. ``name`` makes the task
    ids (one task per tick across processes); ``catch_up`` and ``start`` decide
    what happens to ticks missed before subscription (see :mod:`rxqueue.sources`).

    Bad arguments raise :class:`~rxqueue.errors.InvalidOption` here, not at subscribe.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise InvalidOption(f"sources.every() needs seconds as a number, got {seconds!r}")
    if not (MIN_PERIOD <= seconds < math.inf):  # NaN fails this too
        raise InvalidOption(
            f"sources.every() needs a finite period >= {MIN_PERIOD} seconds, got {seconds!r}"
        )
    return _source(
        _Every(float(seconds)),
        "every",
        name,
        payload,
        catch_up,
        start,
        priority,
        max_attempts,
        scheduler,
    )


def cron(
    expression: str,
    *,
    payload: Any = None,
    name: str,
    tz: str | tzinfo = "UTC",
    catch_up: CatchUp = "latest",
    start: float | datetime | None = None,
    priority: int = 0,
    max_attempts: int | None = None,
    scheduler: abc.SchedulerBase | None = None,
) -> Observable[Task[Any]]:
    """A task at every time ``expression`` matches in time zone ``tz``.

    ``expression`` has five fields (minute hour day month weekday), or six with
    seconds last, or is a keyword such as ``"@daily"``; :mod:`croniter` parses it.
    ``tz`` is an IANA name (``"Europe/Berlin"``) or a ``tzinfo``; across a
    daylight-saving change croniter decides which wall-clock times exist.
    ``payload`` is a value or a callable ``(tick: datetime) -> payload`` (the
    tick in ``tz``). Other arguments as for :func:`every`.

    Bad arguments raise :class:`~rxqueue.errors.InvalidOption` here, not at subscribe.
    """
    if not isinstance(expression, str) or not expression.strip():
        raise InvalidOption(f"sources.cron() needs a cron expression, got {expression!r}")
    fields = expression.split()
    if not expression.strip().startswith("@") and len(fields) not in (5, 6):
        raise InvalidOption(
            f"cron expression {expression!r} has {len(fields)} fields; give 5 "
            "(minute hour day month weekday) or 6 (the same, then seconds)"
        )
    zone = _zone(tz)
    try:  # one step finds impossible dates too ("0 0 31 2 *")
        croniter(expression, datetime.now(zone)).get_next(float)
    except (CroniterError, ValueError, KeyError) as exc:
        raise InvalidOption(f"bad cron expression {expression!r}: {exc}") from None
    return _source(
        _Cron(expression, zone),
        "cron",
        name,
        payload,
        catch_up,
        start,
        priority,
        max_attempts,
        scheduler,
    )


# --- schedules: tick times as epoch seconds -------------------------------------------


class _Every:
    __slots__ = ("period",)

    def __init__(self, period: float) -> None:
        self.period = period

    def _index_from(self, t: float) -> int:
        """The smallest k with k * period >= t (float-safe)."""
        p = self.period
        k = math.ceil(t / p)
        while k * p < t:
            k += 1
        while (k - 1) * p >= t:
            k -= 1
        return k

    def first_from(self, t: float) -> float:
        return self._index_from(t) * self.period

    def after(self, tick: float) -> float:
        k = self._index_from(tick)
        if k * self.period <= tick:
            k += 1
        return k * self.period

    def last_before(self, t: float) -> float:
        return (self._index_from(t) - 1) * self.period

    def as_datetime(self, tick: float) -> datetime:
        return datetime.fromtimestamp(tick, UTC)


class _Cron:
    __slots__ = ("expression", "zone")

    def __init__(self, expression: str, zone: tzinfo) -> None:
        self.expression = expression
        self.zone = zone

    def _next(self, start: datetime) -> float:
        return float(croniter(self.expression, start).get_next(float))

    def first_from(self, t: float) -> float:
        return self._next(self.as_datetime(t) - _ONE_US)

    def after(self, tick: float) -> float:
        return self._next(self.as_datetime(tick))

    def last_before(self, t: float) -> float:
        return float(croniter(self.expression, self.as_datetime(t)).get_prev(float))

    def as_datetime(self, tick: float) -> datetime:
        return datetime.fromtimestamp(tick, self.zone)


_Schedule = _Every | _Cron


# --- the Observable --------------------------------------------------------------------


def _source(
    schedule: _Schedule,
    kind: str,
    name: str,
    payload: Any,
    catch_up: str,
    start: float | datetime | None,
    priority: int,
    max_attempts: int | None,
    scheduler: abc.SchedulerBase | None,
) -> Observable[Task[Any]]:
    if not isinstance(name, str) or not name.strip():
        raise InvalidOption(f"sources.{kind}() needs a non-empty name=, got {name!r}")
    if len(name) > _MAX_NAME:
        raise InvalidOption(f"sources.{kind}() name= is longer than {_MAX_NAME} characters")
    if catch_up not in _CATCH_UP:
        raise InvalidOption(
            f"sources.{kind}() catch_up= must be one of {', '.join(_CATCH_UP)}; got {catch_up!r}"
        )
    begin: float | None = None
    if start is not None:
        if not isinstance(start, datetime | int | float) or isinstance(start, bool):
            raise InvalidOption(f"start= must be a datetime or an epoch timestamp, got {start!r}")
        begin = to_timestamp(start)
        if not math.isfinite(begin):
            raise InvalidOption(f"start= must be finite, got {start!r}")
    check_int("priority", priority)
    attempts = (
        DEFAULT_MAX_ATTEMPTS
        if max_attempts is None
        else check_int("max_attempts", max_attempts, low=1)
    )
    make_payload: Callable[[datetime], Any] | None = payload if callable(payload) else None

    def subscribe(
        observer: abc.ObserverBase[Task[Any]], at_subscribe: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        try:
            sched = _resolve_scheduler(scheduler, at_subscribe, kind)
        except RuntimeError:
            raise RuntimeError(
                f"sources.{kind}() needs a scheduler: pass scheduler=... to it or to "
                "subscribe(), or subscribe inside a running asyncio event loop"
            ) from None
        ticker = _Ticker(
            observer,
            sched,
            schedule,
            name,
            begin,
            catch_up,
            priority,
            attempts,
            payload,
            make_payload,
        )
        return CompositeDisposable(ticker.timer, Disposable(ticker.stop))

    return reactivex.create(subscribe)


class _Ticker:
    """One subscription: a timer armed for the next tick; catch-up on the first action."""

    def __init__(
        self,
        observer: abc.ObserverBase[Task[Any]],
        scheduler: abc.SchedulerBase,
        schedule: _Schedule,
        name: str,
        begin: float | None,
        catch_up: str,
        priority: int,
        max_attempts: int,
        payload: Any,
        make_payload: Callable[[datetime], Any] | None,
    ) -> None:
        self.observer = observer
        self.scheduler = scheduler
        self.schedule = schedule
        self.name = name
        self.begin = begin
        self.catch_up = catch_up
        self.priority = priority
        self.max_attempts = max_attempts
        self.payload = payload
        self.make_payload = make_payload
        self.due = 0.0
        self.stopped = False
        self.timer = SerialDisposable()
        self.timer.disposable = scheduler.schedule(self._first)

    def stop(self) -> None:
        self.stopped = True

    def _now(self) -> float:
        scheduler = self.scheduler
        return scheduler.to_seconds(scheduler.now)

    def _first(self, _scheduler: abc.SchedulerBase, _state: Any = None) -> None:
        now = self._now()
        begin = now if self.begin is None else self.begin
        schedule = self.schedule
        if begin < now and self.catch_up != "none":  # ticks in [begin, now) were missed
            if self.catch_up == "all":
                tick = schedule.first_from(begin)
                while tick < now and self._emit(tick, now):
                    tick = schedule.after(tick)
            else:
                latest = schedule.last_before(now)
                if latest >= begin and not self._emit(latest, now):
                    return
        self.due = schedule.first_from(max(begin, now))
        self._arm(now)

    def _arm(self, now: float) -> None:
        if not self.stopped:
            delay = max(0.0, self.due - now)
            self.timer.disposable = self.scheduler.schedule_relative(delay, self._fire)

    def _fire(self, _scheduler: abc.SchedulerBase, _state: Any = None) -> None:
        if self.stopped:
            return
        now = self._now()
        due, schedule = self.due, self.schedule
        if now + _EPSILON < due:  # the timer fired early (or the wall clock was set back)
            self._arm(now)
            return
        if self.catch_up == "all":
            tick = due
            while tick <= now + _EPSILON:
                if not self._emit(tick, now):
                    return
                tick = schedule.after(tick)
            self.due = tick
        else:  # ticks that came due meanwhile coalesce into the latest one
            tick = max(due, schedule.last_before(now + _EPSILON))
            if not self._emit(tick, now):
                return
            self.due = schedule.after(tick)
        self._arm(now)

    def _emit(self, tick: float, now: float) -> bool:
        """Send tick's task on; False (and the source ends) if the payload callable raised."""
        if self.stopped:
            return False
        text = _tick_text(tick)
        args = self.payload
        if self.make_payload is not None:
            try:
                args = self.make_payload(self.schedule.as_datetime(tick))
            except Exception as exc:
                self.stopped = True
                self.observer.on_error(exc)
                return False
        task: Task[Any] = Task(
            id=f"{self.name}@{text}",
            args=args,
            priority=self.priority,
            max_attempts=self.max_attempts,
            run_at=tick,
            created_at=now,
            metadata={SOURCE_KEY: self.name, TICK_KEY: text},
        )
        self.observer.on_next(task)
        return not self.stopped


def _tick_text(tick: float) -> str:
    moment = datetime.fromtimestamp(tick, UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}"
    return text + "Z"


def _zone(tz: str | tzinfo) -> tzinfo:
    if isinstance(tz, tzinfo):
        return tz
    if not isinstance(tz, str) or not tz:
        raise InvalidOption(f"tz= must be an IANA time zone name or a tzinfo, got {tz!r}")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidOption(
            f"unknown time zone {tz!r} (give an IANA name like 'Europe/Berlin')"
        ) from None
