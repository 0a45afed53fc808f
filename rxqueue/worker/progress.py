"""A progress bar for a worker's run, fed by its events (``worker.run(progress=...)``).

The bar is a [tqdm](https://tqdm.github.io) bar (``pip install 'rxqueue[notebook]'``):
a widget in a Jupyter notebook when ipywidgets is installed, text elsewhere. It
counts tasks finished (done, killed or cancelled), shows the retried ones beside
them and tqdm's rate, and is redrawn from a timer at most ``1 / interval`` times a
second with the counts the worker keeps for its ``RunSummary`` anyway: nothing
runs per task. (An observer of ``worker.events`` would make the worker build an
event per outcome, which costs 15-30% of a no-op handler's throughput.)

``progress=None`` (the default) decides: a bar when the run is interactive
(stderr is a terminal, or the code runs in a Jupyter kernel) and tqdm is
installed, shown only once the run has lasted ``AUTO_DELAY`` seconds; no bar
otherwise (tests, services, CI, pipes).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import sys
from typing import IO, TYPE_CHECKING, Any, Final

from rxqueue.task import Status
from rxqueue.worker import events as ev

if TYPE_CHECKING:
    from rxqueue.worker.worker import Worker

AUTO_DELAY: Final = 0.5  # seconds a run lasts before an automatic bar appears


class ProgressBar:
    """How a run shows its progress: pass one as ``worker.run(progress=ProgressBar(...))``
    (``progress=True`` is ``ProgressBar()``).

    ``file``: where a text bar is written (default stderr; a notebook draws a widget
    instead unless ``file`` is given). ``interval``: seconds between redraws.
    ``delay``: seconds before the bar first appears (a shorter run shows none).
    ``total``: tasks expected; None counts the ready tasks (``backend.stats()``, when
    the backend can tell) for ``run_until_idle``, and none for ``run``. ``desc``:
    the label (default: the worker's name).
    """

    def __init__(
        self,
        *,
        file: IO[str] | None = None,
        interval: float = 0.1,
        delay: float = 0.0,
        total: int | None = None,
        desc: str | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"ProgressBar needs interval > 0, got {interval!r}")
        self.file = file
        self.interval = interval
        self.delay = delay
        self.total = total
        self.desc = desc

    async def watch(self, worker: Worker, *, until_idle: bool) -> Watch:
        """Start showing ``worker``'s next run; ``close()`` the result when it ends."""
        total = self.total
        if total is None and until_idle:
            total = await _ready_count(worker)
        return Watch(self._bar(worker, total), worker, self.interval)

    def _bar(self, worker: Worker, total: int | None) -> Any:
        tqdm = _tqdm_class(text_only=self.file is not None)
        return tqdm(
            total=total,
            desc=self.desc or worker.name,
            unit="task",
            file=self.file,
            delay=self.delay,
            mininterval=self.interval,
            dynamic_ncols=self.file is None,
            leave=True,
        )


class Watch:
    """A bar following one run, redrawn from a timer with the counts the worker keeps
    anyway (:meth:`Worker.statistics`): nothing is added per task."""

    def __init__(self, bar: Any, worker: Worker, interval: float) -> None:
        self.bar = bar
        self.worker = worker
        self.interval = interval
        self._shown: tuple[int, ...] = (0, 0, 0, 0)
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(interval, self._tick)

    def _tick(self) -> None:
        stats = self.worker.statistics()
        if stats.running:
            self._redraw(stats.done, stats.retried, stats.killed, stats.cancelled)
        self._timer = self._loop.call_later(self.interval, self._tick)

    def _redraw(self, done: int, retried: int, killed: int, cancelled: int) -> None:
        counts = (done, retried, killed, cancelled)
        if counts == self._shown:
            return
        self._shown = counts
        bar, finished = self.bar, done + killed + cancelled
        if bar.total is not None and finished > bar.total:
            bar.total = finished  # tasks pushed during the run
        parts = [f"done={done}", f"retried={retried}", f"killed={killed}"]
        if cancelled:
            parts.append(f"cancelled={cancelled}")
        bar.set_postfix_str(", ".join(parts), refresh=False)
        bar.update(finished - bar.n)

    def close(self, summary: ev.RunSummary | None = None) -> None:
        """Stop following the run; draw its final counts (if the bar was shown)."""
        if self._timer is None:
            return
        self._timer.cancel()
        self._timer = None
        if summary is not None:
            self._redraw(summary.done, summary.retried, summary.killed, summary.cancelled)
        self.bar.close()


async def watch_progress(
    worker: Worker, progress: bool | ProgressBar | None, *, until_idle: bool
) -> Watch | None:
    """What ``worker.run(progress=...)`` shows: None for no bar. See the module doc."""
    if progress is None:
        if not (interactive() and tqdm_installed()):
            return None
        progress = ProgressBar(delay=AUTO_DELAY)
    elif progress is False:
        return None
    elif progress is True:
        progress = ProgressBar()
    elif not isinstance(progress, ProgressBar):
        raise TypeError(
            f"progress must be True, False, None (automatic) or a ProgressBar, got {progress!r}"
        )
    return await progress.watch(worker, until_idle=until_idle)


def interactive() -> bool:
    """Does someone watch this process: stderr is a terminal, or a Jupyter kernel runs it?"""
    return in_jupyter() or _isatty(sys.stderr)


def in_jupyter() -> bool:
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def tqdm_installed() -> bool:
    return importlib.util.find_spec("tqdm") is not None


def _isatty(stream: Any) -> bool:
    try:
        return stream is not None and bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _tqdm_class(*, text_only: bool) -> Any:
    """tqdm.auto's choice, without its warning: a widget in a Jupyter kernel that has
    ipywidgets, a text bar everywhere else."""
    try:
        from tqdm import std
    except ImportError:
        raise ImportError(
            "a progress bar needs tqdm: pip install 'rxqueue[notebook]' (or pass progress=False)"
        ) from None
    if not text_only and in_jupyter() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm import notebook

        return notebook.tqdm
    return std.tqdm


async def _ready_count(worker: Worker) -> int | None:
    """Tasks ready or waiting for a retry, if the backend can count them cheaply."""
    from rxqueue.backends.base import Capability

    backend = worker.backend
    if Capability.LIST not in backend.capabilities:
        return None
    with contextlib.suppress(Exception):  # no count is no reason to fail the run
        stats = await backend.stats()
        # Waiting workflow steps run in this run too, once their parents are Done.
        return stats[Status.PENDING] + stats[Status.FAILED] + stats[Status.WAITING]
    return None
