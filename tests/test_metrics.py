"""Prometheus metrics: scraped over HTTP from a real endpoint, checked against known runs."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from rxqueue import MemoryBackend, Monitor, Status, TaskContext, WorkerBuilder, layers, metrics
from rxqueue.backoff import constant
from rxqueue.cli import main

FAST = {"poll_interval": 0.002, "max_poll_interval": 0.01}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return parse(response.read().decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def serve() -> Iterator[tuple[CollectorRegistry, int]]:
    """A registry served over HTTP on 127.0.0.1, on a port the OS picks."""
    registry = CollectorRegistry()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield registry, server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_a_known_run_scraped_over_http(serve: tuple[CollectorRegistry, int]) -> None:
    registry, port = serve
    backend = MemoryBackend(**FAST)
    # 0-2 succeed; 3 and 4 fail once, then succeed; 5 fails twice and is killed;
    # 6 is cancelled while it runs; 7 waits an hour.
    await backend.push_many(list(range(7)), max_attempts=2)
    await backend.push(7, delay=3600)

    async def handle(n: int, ctx: TaskContext) -> None:
        if n == 5 or (n in (3, 4) and ctx.attempt == 1):
            raise ValueError(f"task {n} failed")
        if n == 6:
            assert worker.cancel(ctx.task_id)
            await asyncio.sleep(30)

    builder = WorkerBuilder("w1").backend(backend).layer(layers.retry(backoff=constant(0)))
    worker = builder.build(handle)
    with metrics.prometheus(worker, registry) as exported:
        async with asyncio.timeout(20):
            summary = await worker.run_until_idle()
            await exported.refresh()
        assert (summary.done, summary.retried, summary.killed, summary.cancelled) == (5, 3, 1, 1)
        samples = await asyncio.to_thread(scrape, port)

    of = {"queue": "default", "worker": "w1"}
    counts = {
        name: value(samples, f"rxqueue_tasks_{name}_total", **of)
        for name in ("started", "succeeded", "failed", "retried", "killed", "cancelled")
    }
    assert counts == {
        "started": 9,  # 3 + 2 * 2 + 2 attempts ran to success or failure
        "succeeded": 5,
        "failed": 4,
        "retried": 3,
        "killed": 1,
        "cancelled": 1,
    }
    assert value(samples, "rxqueue_task_duration_seconds_count", **of) == 5
    assert value(samples, "rxqueue_task_queue_wait_seconds_count", **of) == 5
    assert value(samples, "rxqueue_task_duration_seconds_sum", **of) >= 0
    assert value(samples, "rxqueue_tasks_in_flight", **of) == 0
    assert value(samples, "rxqueue_tasks_buffered", **of) == 0
    depth = {
        status: value(samples, "rxqueue_queue_depth", queue="default", status=status.value)
        for status in Status
    }
    assert depth == {
        Status.PENDING: 1,
        Status.QUEUED: 0,
        Status.RUNNING: 0,
        Status.DONE: 5,
        Status.FAILED: 0,
        Status.KILLED: 1,
        Status.CANCELLED: 1,
        Status.WAITING: 0,
    }
    # Closed: unregistered, so the endpoint no longer shows them.
    after = await asyncio.to_thread(scrape, port)
    assert not any(name.startswith("rxqueue_") for name, _ in after)


async def test_gauges_and_depth_while_a_handler_runs(serve: tuple[CollectorRegistry, int]) -> None:
    registry, port = serve
    backend = MemoryBackend(**FAST)
    await backend.push("a")
    entered, release = asyncio.Event(), asyncio.Event()

    async def handle(payload: str) -> None:
        entered.set()
        await release.wait()

    worker = WorkerBuilder("w2").backend(backend).build(handle)
    with metrics.prometheus(worker, registry, interval=0.01) as exported:
        run = asyncio.create_task(worker.run_until_idle())
        async with asyncio.timeout(20):
            await entered.wait()
            await exported.refresh()
            during = await asyncio.to_thread(scrape, port)
            release.set()
            await run
    of = {"queue": "default", "worker": "w2"}
    assert value(during, "rxqueue_tasks_in_flight", **of) == 1
    assert value(during, "rxqueue_tasks_buffered", **of) == 0
    # Claimed, and Running once the worker's batched start reaches the store.
    active = [
        value(during, "rxqueue_queue_depth", queue="default", status=status)
        for status in ("Queued", "Running", "Pending")
    ]
    assert sum(active[:2]) == 1 and active[2] == 0
    assert value(during, "rxqueue_tasks_succeeded_total", **of) == 0


async def test_a_monitor_exports_each_worker_and_each_queue_once() -> None:
    registry = CollectorRegistry()
    queues = {name: MemoryBackend(queue=name, **FAST) for name in ("mail", "bills")}
    for backend in queues.values():
        await backend.push_many([1, 2])

    async def handle(n: int) -> None: ...

    one = WorkerBuilder("m1").backend(queues["mail"]).build(handle)
    two = WorkerBuilder("m2").backend(queues["mail"]).build(handle)
    three = WorkerBuilder("b1").backend(queues["bills"]).build(handle)
    monitor = Monitor().register(one, two, three)
    with metrics.prometheus(monitor, registry) as exported:
        async with asyncio.timeout(20):
            await asyncio.gather(*(w.run_until_idle() for w in (one, two, three)))
            await exported.refresh()
        from prometheus_client import generate_latest

        samples = parse(generate_latest(registry).decode())
    done = {
        (worker, queue): value(samples, "rxqueue_tasks_succeeded_total", queue=queue, worker=worker)
        for worker, queue in (("m1", "mail"), ("m2", "mail"), ("b1", "bills"))
    }
    assert done[("m1", "mail")] + done[("m2", "mail")] == 2 and done[("b1", "bills")] == 2
    for queue in ("mail", "bills"):
        assert value(samples, "rxqueue_queue_depth", queue=queue, status="Done") == 2


def test_without_prometheus_client_the_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    worker = WorkerBuilder("w").backend(MemoryBackend()).build(lambda n: None)
    with pytest.raises(ImportError, match=r"pip install 'rxqueue\[metrics\]'"):
        metrics.prometheus(worker)
    with pytest.raises(TypeError, match="a Worker or a Monitor"):
        metrics.prometheus(object())  # type: ignore[arg-type]


# --- the CLI flag, end to end -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.slow
def test_worker_command_serves_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "jobs_metrics.py").write_text("async def shout(p):\n    return p.upper()\n")
    monkeypatch.chdir(tmp_path)
    for word in ("a", "b", "c"):
        assert main(["push", "sqlite:///q.db", f'"{word}"']) == 0
    capsys.readouterr()
    port = free_port()
    url, handler = "sqlite:///q.db", "jobs_metrics:shout"
    command = [sys.executable, "-m", "rxqueue.cli", "worker", url, handler]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [*command, "--metrics-port", str(port), "--name", "cli-w"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        of = {"queue": "default", "worker": "cli-w"}
        samples: Samples = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                samples = scrape(port)
            except (urllib.error.URLError, ConnectionError):
                samples = {}
            done = samples.get(("rxqueue_tasks_succeeded_total", frozenset(of.items())))
            polled = ("rxqueue_queue_depth", frozenset({("queue", "default"), ("status", "Done")}))
            if done == 3 and polled in samples:
                break
            time.sleep(0.05)  # a bounded poll: the subprocess is starting or working
        assert value(samples, "rxqueue_tasks_succeeded_total", **of) == 3
        assert value(samples, "rxqueue_tasks_started_total", **of) == 3
        assert value(samples, "rxqueue_task_queue_wait_seconds_count", **of) == 3
        assert value(samples, "rxqueue_tasks_in_flight", **of) == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "done 3, retried 0, killed 0" in out
    assert f"metrics on http://127.0.0.1:{port}/" in err


def test_metrics_port_is_checked_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["worker", "sqlite:///q.db", "tests.cli_handlers:greet", "--metrics-port", "70000"])
    assert "must be at most 65535" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    url = "sqlite:///q.db"
    assert main(["worker", url, "tests.cli_handlers:greet", "--metrics-port", "0"]) == 1
    assert "pip install 'rxqueue[metrics]'" in capsys.readouterr().err
    assert not (tmp_path / "q.db").exists()


def test_a_port_in_use_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        argv = ["worker", "sqlite:///q.db", "tests.cli_handlers:greet", "--metrics-port", port]
        assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"rxqueue: cannot serve metrics on 127.0.0.1:{port}: ")
    assert err.count("\n") == 1 and "Traceback" not in err

