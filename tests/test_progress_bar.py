"""Progress bars: on when asked for or when someone watches, off otherwise."""

from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path

import pytest

from rxqueue import (
    Abort,
    MemoryBackend,
    ProgressBar,
    TaskContext,
    WorkerBuilder,
    events,
    layers,
)
from rxqueue.backoff import constant
from rxqueue.cli import main
from rxqueue.worker import progress


async def handler(job: dict[str, str], ctx: TaskContext) -> None:
    if job["kind"] == "abort":
        raise Abort("no")
    if job["kind"] == "flaky" and ctx.attempt == 1:
        raise RuntimeError("once")


async def test_a_forced_bar_shows_the_final_counts() -> None:
    backend = MemoryBackend(queue="jobs")
    await backend.push_many([{"kind": "ok"}] * 4 + [{"kind": "flaky"}, {"kind": "abort"}])
    shown = io.StringIO()
    retrying = WorkerBuilder("bar-worker").backend(backend).layer(layers.retry(backoff=constant(0)))
    summary = await retrying.build(handler).run_until_idle(progress=ProgressBar(file=shown))
    assert (summary.done, summary.retried, summary.killed) == (5, 1, 1)
    last = shown.getvalue().rsplit("\r", 1)[-1]
    assert "bar-worker" in last
    assert "6/6" in last  # finished of the tasks that were ready
    assert "done=5, retried=1, killed=1" in last


async def test_progress_true_draws_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    backend = MemoryBackend(queue="jobs")
    await backend.push_many([{"kind": "ok"}] * 3)
    built = WorkerBuilder("w").backend(backend).build(handler)
    await built.run_until_idle(progress=True)
    assert "3/3" in capsys.readouterr().err


async def test_a_run_that_is_not_until_idle_counts_without_a_total() -> None:
    backend = MemoryBackend(queue="jobs")
    await backend.push_many([{"kind": "ok"}] * 3)
    shown = io.StringIO()
    built = WorkerBuilder("w").backend(backend).build(handler)
    stream = built.iter_events()
    running = asyncio.ensure_future(
        built.run(handle_signals=False, progress=ProgressBar(file=shown))
    )
    succeeded = 0
    async for event in stream:
        succeeded += isinstance(event, events.Succeeded)
        if succeeded == 3:
            built.stop()
            break
    await running
    last = shown.getvalue().rsplit("\r", 1)[-1]
    assert last.startswith("w: 3task [")  # a count and a rate, no total
    assert "done=3" in last


async def test_automatic_is_off_when_nobody_watches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal, as in CI
    assert not progress.interactive()
    backend = MemoryBackend(queue="jobs")
    built = WorkerBuilder("w").backend(backend).build(handler)
    assert await progress.watch_progress(built, None, until_idle=True) is None
    await backend.push({"kind": "ok"})
    await built.run_until_idle()
    assert sys.stderr.getvalue() == ""


async def test_automatic_waits_before_showing_a_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs shorter than the delay show nothing, even where someone watches."""
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setattr(progress, "interactive", lambda: True)
    monkeypatch.setattr(progress, "AUTO_DELAY", 3600.0)
    backend = MemoryBackend(queue="jobs")
    await backend.push({"kind": "ok"})
    built = WorkerBuilder("w").backend(backend).build(handler)
    watch = await progress.watch_progress(built, None, until_idle=True)
    assert watch is not None
    watch.close()
    await built.run_until_idle()
    assert stderr.getvalue() == ""


async def test_without_tqdm_automatic_is_off_and_asking_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setattr(progress, "interactive", lambda: True)
    built = WorkerBuilder("w").backend(MemoryBackend()).build(handler)
    assert await progress.watch_progress(built, None, until_idle=True) is None
    with pytest.raises(ImportError, match=r"pip install 'rxqueue\[notebook\]'"):
        await built.run_until_idle(progress=True)
    with pytest.raises(TypeError, match="progress must be"):
        await built.run_until_idle(progress="yes")  # type: ignore[arg-type]


def test_the_burst_worker_of_the_cli_shows_the_bar_in_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(progress, "interactive", lambda: True)  # as in a terminal
    monkeypatch.setattr(progress, "AUTO_DELAY", 0.0)
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    for name in ("ada", "bob"):
        assert main(["push", url, f'{{"name": "{name}"}}', "--queue", "greetings"]) == 0
    capsys.readouterr()
    assert main(["worker", url, "tests.cli_handlers:greet", "--queue", "greetings", "--burst"]) == 0
    captured = capsys.readouterr()
    assert "done 2" in captured.out
    assert "greetings-worker" in captured.err and "2/2" in captured.err
