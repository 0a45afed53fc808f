"""The ``rxqueue`` command: inspect and manage a queue, or run a worker.

    rxqueue stats  sqlite:///tasks.db --queue emails
    rxqueue list   sqlite:///tasks.db --status Failed --limit 20
    rxqueue push   sqlite:///tasks.db '{"to": "a@b.c"}' --delay 60
    rxqueue retry  sqlite:///tasks.db TASK_ID
    rxqueue kill   sqlite:///tasks.db TASK_ID
    rxqueue vacuum sqlite:///tasks.db --older-than 86400
    rxqueue worker sqlite:///tasks.db myapp.tasks:send_email --concurrency 8 [--burst]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from rxqueue.backends import connect
from rxqueue.backends.base import Backend
from rxqueue.errors import RxQueueError
from rxqueue.task import Status, Task
from rxqueue.worker.builder import WorkerBuilder


def _load_handler(spec: str) -> Callable[..., Any]:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"handler must look like 'package.module:function', got {spec!r}")
    try:
        handler = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise SystemExit(f"cannot load handler {spec!r}: {exc}") from exc
    if not callable(handler):
        raise SystemExit(f"{spec!r} is not callable")
    return handler  # type: ignore[no-any-return]


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _row(task: Task[Any]) -> str:
    error = f"  {task.last_error}" if task.last_error else ""
    return (
        f"{task.id}  {task.status.value:<8} attempts {task.attempts}/{task.max_attempts}"
        f"  run_at {_when(task.run_at)}{error}"
    )


async def _command(args: argparse.Namespace) -> int:
    backend: Backend = connect(args.url, queue=args.queue)
    async with backend:
        if args.command == "stats":
            for status, count in (await backend.stats()).items():
                print(f"{status.value:<8} {count}")
        elif args.command == "list":
            wanted = Status(args.status) if args.status else None
            for task in await backend.list(status=wanted, limit=args.limit, offset=args.offset):
                print(_row(task))
        elif args.command == "push":
            try:
                payload = orjson.loads(args.payload)
            except orjson.JSONDecodeError as exc:
                raise SystemExit(f"the payload must be JSON: {exc}") from exc
            print(await backend.push(payload, delay=args.delay, priority=args.priority))
        elif args.command == "retry":
            await backend.retry(args.task_id)
        elif args.command == "kill":
            await backend.kill(args.task_id, args.reason)
        elif args.command == "vacuum":
            print(f"deleted {await backend.vacuum(older_than=args.older_than)} finished tasks")
        elif args.command == "worker":
            handler = _load_handler(args.handler)
            builder = WorkerBuilder(args.name or f"{args.queue}-worker").backend(backend)
            worker = builder.concurrency(args.concurrency).build(handler)
            summary = await (worker.run_until_idle() if args.burst else worker.run())
            print(
                f"done {summary.done}, retried {summary.retried}, killed {summary.killed} "
                f"in {summary.elapsed:.2f}s"
            )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rxqueue", description="Inspect and run rxqueue queues.")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.add_argument("url", help="backend URL, e.g. sqlite:///tasks.db")
        sub.add_argument("--queue", default="default")
        return sub

    command("stats", "count tasks by status")
    listing = command("list", "list tasks, oldest first")
    listing.add_argument("--status", choices=[status.value for status in Status])
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--offset", type=int, default=0)
    push = command("push", "push one task with a JSON payload")
    push.add_argument("payload")
    push.add_argument("--delay", type=float)
    push.add_argument("--priority", type=int, default=0)
    command("retry", "put a Failed or Killed task back").add_argument("task_id")
    kill = command("kill", "kill a task that has not finished")
    kill.add_argument("task_id")
    kill.add_argument("--reason", default="killed from the command line")
    vacuum = command("vacuum", "delete finished tasks")
    vacuum.add_argument("--older-than", type=float, default=0.0, help="seconds")
    worker = command("worker", "run a worker (stop with Ctrl-C)")
    worker.add_argument("handler", help="package.module:function")
    worker.add_argument("--name")
    worker.add_argument("--concurrency", type=int, default=1)
    worker.add_argument("--burst", action="store_true", help="stop once the queue is idle")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_command(args))
    except (RxQueueError, ValueError) as exc:
        print(f"rxqueue: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
