"""The ``rxqueue`` command: inspect and manage a queue, or run a worker.

    rxqueue stats  sqlite:///tasks.db --queue emails [--json]
    rxqueue list   sqlite:///tasks.db --status Failed --limit 20 [--offset 0] [--json]
    rxqueue get    sqlite:///tasks.db TASK_ID [--json]
    rxqueue push   sqlite:///tasks.db '{"to": "a@b.c"}' --delay 60 [--priority 5]
    rxqueue retry  sqlite:///tasks.db TASK_ID
    rxqueue kill   sqlite:///tasks.db TASK_ID [--reason TEXT]
    rxqueue cancel sqlite:///tasks.db TASK_ID [--reason TEXT]   # running ones too
    rxqueue vacuum sqlite:///tasks.db --older-than 86400
    rxqueue worker sqlite:///tasks.db myapp.tasks:send_email --concurrency 8 [--burst]
    rxqueue schema --sql [--schema rxqueue]     # PostgreSQL DDL, for your migration tool
    rxqueue schema postgresql://user@host/db    # create or migrate that schema now

The worker imports its handler from the current folder first, as uvicorn and
celery do. Only ``push`` and ``worker`` create a missing SQLite file; the other
commands refuse to run on one, so a mistyped path is not silently a new, empty
queue.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import difflib
import importlib
import math
import os
import reprlib
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn
from urllib.parse import quote, unquote, urlsplit

import orjson

from rxqueue.backends import connect
from rxqueue.backends.base import Backend
from rxqueue.errors import RxQueueError
from rxqueue.task import Status, Task
from rxqueue.worker.builder import WorkerBuilder
from rxqueue.worker.worker import Worker
from rxqueue.workflow import cancel_workflow, workflow_status

# --- options --------------------------------------------------------------------------

_INT64 = 2**63  # SQLite binds integers as 64-bit; larger ones would fail deep in the driver
_STATUSES = ", ".join(status.value for status in Status)
_STATUS_WIDTH = max(len(status.value) for status in Status)


class _Parser(argparse.ArgumentParser):
    """Usage mistakes as one line, not argparse's usage block plus error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _integer(minimum: int, maximum: int = _INT64 - 1) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, got {text!r}")
    return value


def _status(text: str) -> Status:
    for status in Status:  # any case: 'failed' is as clear as 'Failed'
        if status.value.lower() == text.lower():
            return status
    raise argparse.ArgumentTypeError(f"unknown status {text!r}; choose from {_STATUSES}")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rxqueue", description="Inspect and run rxqueue queues.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, *, json: bool = False) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("url", help="backend URL, e.g. sqlite:///tasks.db")
        sub.add_argument("--queue", default="default")
        if json:
            sub.add_argument(
                "--json",
                action="store_true",
                help="print JSON (times as epoch seconds; payloads that are not JSON "
                "as base64 strings)",
            )
        return sub

    command("stats", "count tasks by status", json=True)
    listing = command("list", "list tasks, oldest first", json=True)
    listing.add_argument("--status", type=_status, metavar="STATUS", help=_STATUSES)
    listing.add_argument("--limit", type=_integer(1), default=50, help="default 50")
    listing.add_argument("--offset", type=_integer(0), default=0)
    command("get", "show one task", json=True).add_argument("task_id")
    push = command("push", "push one task with a JSON payload (creates the file)")
    push.add_argument("payload")
    push.add_argument("--delay", type=_seconds, help="seconds")
    push.add_argument("--priority", type=_integer(-_INT64), default=0)
    command("retry", "put a Failed or Killed task back").add_argument("task_id")
    kill = command("kill", "kill a task that has not finished")
    kill.add_argument("task_id")
    kill.add_argument("--reason", default="killed from the command line")
    cancel = command("cancel", "cancel a task: at once if waiting, in its worker if running")
    cancel.add_argument("task_id")
    cancel.add_argument("--reason", default="cancelled from the command line")
    flow = command(
        "workflow", "show a workflow run: every step's status, attempts and result", json=True
    )
    flow.add_argument("run_id")
    flow.add_argument(
        "--cancel", metavar="REASON", help="cancel the run's unfinished steps first"
    )
    vacuum = command("vacuum", "delete finished tasks")
    vacuum.add_argument("--older-than", type=_seconds, default=0.0, help="seconds")
    worker = command("worker", "run a worker (stop with Ctrl-C; creates the file)")
    worker.add_argument("handler", help="package.module:function, importable from here")
    worker.add_argument("--name")
    worker.add_argument("--concurrency", type=_integer(1), default=1)
    worker.add_argument("--burst", action="store_true", help="stop once the queue is idle")
    worker.add_argument(
        "--metrics-port",
        type=_integer(0, 65535),
        metavar="PORT",
        help="serve Prometheus metrics on http://HOST:PORT/ (needs rxqueue[metrics])",
    )
    worker.add_argument("--metrics-host", default="127.0.0.1", help="default 127.0.0.1")
    schema = commands.add_parser(
        "schema",
        help="print rxqueue's PostgreSQL DDL (--sql), or apply it to a database URL",
        description="With --sql, print the DDL of rxqueue's PostgreSQL schema, for "
        "migration tools; with a URL, create or migrate that database's schema now.",
    )
    schema.add_argument("url", nargs="?", help="postgresql://user@host:5432/db to migrate")
    schema.add_argument("--sql", action="store_true", help="print the DDL, touch nothing")
    schema.add_argument("--schema", default="rxqueue", help="PostgreSQL schema (default rxqueue)")
    return parser


def _schema(args: argparse.Namespace) -> int:
    """``rxqueue schema``: print the DDL, or open the backend (which migrates it)."""
    if args.sql:
        from rxqueue.backends._postgres_schema import schema_sql

        try:
            print(schema_sql(args.schema), end="")
        except ValueError as exc:
            raise SystemExit(f"rxqueue: {exc}") from exc
        return 0
    if not args.url:
        raise SystemExit("rxqueue: give a postgresql:// URL to migrate, or --sql to print the DDL")

    async def migrate() -> None:
        async with connect(args.url, schema=args.schema):
            pass

    asyncio.run(migrate())
    print(f"schema {args.schema!r} is up to date")
    return 0


# --- checks made before anything is opened ------------------------------------------------


def _cwd_on_path() -> None:
    """The installed ``rxqueue`` script's sys.path starts with its own bin folder, so the
    user's project is not importable; put the current folder first, as uvicorn does."""
    cwd = os.getcwd()
    if not any(isinstance(entry, str) and os.path.abspath(entry) == cwd for entry in sys.path):
        sys.path.insert(0, cwd)


def _load_handler(spec: str) -> Callable[..., Any]:
    module_name, _, attribute = spec.partition(":")
    names = [*module_name.split("."), *attribute.split(".")]
    is_name = all(name.isidentifier() for name in names)
    if not module_name or not attribute or not is_name or module_name.endswith(".py"):
        raise SystemExit(
            f"rxqueue: handler must look like 'package.module:function' (a module name, "
            f"not a file path), got {spec!r}"
        )
    _cwd_on_path()
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(f"{missing}."):
            raise SystemExit(
                f"rxqueue: cannot load handler {spec!r}: no module {missing!r} in "
                f"{os.getcwd()} or on sys.path; run rxqueue from the folder that contains "
                "it, or add that folder to PYTHONPATH"
            ) from exc
        raise SystemExit(  # the module exists but needs something that is not installed
            f"rxqueue: cannot load handler {spec!r}: importing {module_name!r} failed: {exc}; "
            "install it in this environment"
        ) from exc
    except ImportError as exc:
        raise SystemExit(
            f"rxqueue: cannot load handler {spec!r}: importing {module_name!r} failed: {exc}"
        ) from exc
    for name in attribute.split("."):
        try:
            target = getattr(target, name)
        except AttributeError as exc:
            close = difflib.get_close_matches(name, dir(target), n=1)
            hint = f"did you mean {close[0]!r}?" if close else "check the name after ':'"
            raise SystemExit(
                f"rxqueue: cannot load handler {spec!r}: {module_name!r} has no attribute "
                f"{attribute!r}; {hint}"
            ) from exc
    if not callable(target) and not hasattr(target, "__rxqueue_invoke__"):  # or a workflow
        raise SystemExit(
            f"rxqueue: handler {spec!r} is not callable (it is {type(target).__name__} "
            f"{reprlib.repr(target)}); point it at the function that handles one task"
        )
    return target  # type: ignore[no-any-return]


def _payload(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise SystemExit(f"rxqueue: the payload must be JSON: {exc}") from exc


def _sqlite_file(url: str) -> str | None:
    """The file a ``sqlite://`` URL opens, found as ``SqliteBackend.from_url`` finds it;
    None for other URLs and malformed ones (``connect`` then says what is wrong)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite" or parts.netloc or not parts.path.startswith("/"):
        return None
    if parts.path == "/":
        return None
    path = unquote(parts.path[1:])
    if parts.query:
        path = f"file:{quote(path)}?{parts.query}"
    if path.startswith("file:"):  # a file: URI: its path part names the file
        path = unquote(urlsplit(path).path)
    return os.path.abspath(path)


def _require_file(url: str) -> None:
    """Opening a missing SQLite file creates an empty queue; refuse instead, since for
    a command that only reads or manages tasks a new file means a mistyped path."""
    path = _sqlite_file(url)
    if path is not None and not os.path.exists(path):
        raise SystemExit(
            f"rxqueue: {path} does not exist; check the path (sqlite:///name.db is relative "
            "to the current folder, sqlite:////abs/name.db is absolute), or create it by "
            "pushing a task or running a worker"
        )


# --- output ---------------------------------------------------------------------------------


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _fallback(value: Any) -> Any:
    # Payloads and results that did not decode stay bytes: show them, do not crash.
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode("ascii")
    return repr(value)


def _json(value: Any) -> bytes:
    try:
        return orjson.dumps(value, default=_fallback, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:  # e.g. an int beyond 64 bits, which default= never sees
        return orjson.dumps(repr(value))


_TIMES = ("run_at", "created_at", "done_at")
_PAYLOADS = ("args", "result", "metadata")


def _fields(task: Task[Any]) -> dict[str, Any]:
    """What ``get`` and ``list --json`` show of a task, in this order."""
    return {
        "id": task.id,
        "queue": task.queue,
        "status": task.status.value,
        "attempts": task.attempts,
        "max_attempts": task.max_attempts,
        "priority": task.priority,
        "run_at": task.run_at,
        "created_at": task.created_at,
        "done_at": task.done_at,
        "last_error": task.last_error,
        "args": task.args,
        "result": task.result,
        "metadata": dict(task.metadata),
        "unique_key": task.unique_key,
        "progress": task.progress,
        "progress_note": task.progress_note,
    }


def _json_task(task: Task[Any]) -> dict[str, orjson.Fragment]:
    # Field by field, so one odd value degrades to a string without hiding the rest.
    return {name: orjson.Fragment(_json(value)) for name, value in _fields(task).items()}


def _print_json(value: Any) -> None:
    print(orjson.dumps(value).decode())


def _row(task: Task[Any]) -> str:
    error = f"  {task.last_error}" if task.last_error else ""
    return (
        f"{task.id}  {task.status.value:<8} attempts {task.attempts}/{task.max_attempts}"
        f"  run_at {_when(task.run_at)}{error}"
    )


def _text(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if name in _TIMES:
        return f"{_when(value)} UTC"
    if isinstance(value, bytes | bytearray | memoryview):
        encoded = base64.b64encode(value).decode("ascii")
        return f"{len(value)} bytes, not JSON (base64): {encoded}"
    if name in _PAYLOADS:
        return _json(value).decode()
    return str(value)


def _print_task(task: Task[Any]) -> None:
    fields = _fields(task)
    width = max(map(len, fields))
    for name, value in fields.items():
        print(f"{name:<{width}}  {_text(name, value)}")


# --- commands -------------------------------------------------------------------------------


async def _command(args: argparse.Namespace, handler: Callable[..., Any] | None) -> int:
    backend: Backend = connect(args.url, queue=args.queue)
    async with backend:
        if args.command == "stats":
            counts = await backend.stats()
            if args.json:
                _print_json({status.value: count for status, count in counts.items()})
            else:
                for status, count in counts.items():
                    print(f"{status.value:<{_STATUS_WIDTH}} {count}")
        elif args.command == "list":
            tasks = await backend.list(status=args.status, limit=args.limit, offset=args.offset)
            if args.json:
                _print_json([_json_task(task) for task in tasks])
            else:
                for task in tasks:
                    print(_row(task))
        elif args.command == "get":
            found = await backend.get(args.task_id)
            if found is None:
                print(
                    f"rxqueue: no task {args.task_id!r} in queue {args.queue!r} "
                    "(in another queue? pass --queue)",
                    file=sys.stderr,
                )
                return 1
            if args.json:
                _print_json(_json_task(found))
            else:
                _print_task(found)
        elif args.command == "push":
            print(await backend.push(args.payload, delay=args.delay, priority=args.priority))
        elif args.command == "retry":
            await backend.retry(args.task_id)
        elif args.command == "kill":
            await backend.kill(args.task_id, args.reason)
        elif args.command == "cancel":
            status = await backend.cancel(args.task_id, args.reason)
            if status is Status.CANCELLED:
                print(f"{args.task_id} is cancelled")
            elif status in (Status.QUEUED, Status.RUNNING):
                print(f"{args.task_id} is {status.value}: its worker cancels it at its next beat")
            else:
                print(f"{args.task_id} had already finished ({status.value}); left as it is")
        elif args.command == "workflow":
            if args.cancel is not None:
                asked = await cancel_workflow(backend, args.run_id, args.cancel)
                print(f"asked {asked} steps to cancel", file=sys.stderr)
            run = await workflow_status(backend, args.run_id)
            if args.json:
                _print_json(
                    {
                        "run_id": run.run_id,
                        "workflow": run.workflow,
                        "status": run.status.value,
                        "result": run.result,
                        "error": run.error,
                        "steps": [
                            {
                                "name": step.name,
                                "id": step.id,
                                "queue": step.queue,
                                "status": step.status.value,
                                "attempts": step.attempts,
                                "result": step.result,
                                "last_error": step.last_error,
                            }
                            for step in run.steps
                        ],
                    }
                )
            else:
                print(run)
        elif args.command == "vacuum":
            print(f"deleted {await backend.vacuum(older_than=args.older_than)} finished tasks")
        elif args.command == "worker":
            assert handler is not None
            builder = WorkerBuilder(args.name or f"{args.queue}-worker").backend(backend)
            worker = builder.concurrency(args.concurrency).build(handler)
            with contextlib.ExitStack() as cleanup:
                if args.metrics_port is not None:
                    _serve_metrics(worker, args.metrics_host, args.metrics_port, cleanup)
                summary = await (worker.run_until_idle() if args.burst else worker.run())
            print(
                f"done {summary.done}, retried {summary.retried}, killed {summary.killed}, "
                f"cancelled {summary.cancelled} in {summary.elapsed:.2f}s"
            )
    return 0


def _serve_metrics(worker: Worker, host: str, port: int, cleanup: contextlib.ExitStack) -> None:
    import prometheus_client

    from rxqueue.metrics import prometheus

    registry = prometheus_client.CollectorRegistry()
    cleanup.enter_context(prometheus(worker, registry))
    try:
        server, thread = prometheus_client.start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ValueError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
    cleanup.callback(thread.join, 5)
    cleanup.callback(server.server_close)
    cleanup.callback(server.shutdown)
    print(f"rxqueue: metrics on http://{host}:{server.server_port}/", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "schema":
        try:
            return _schema(args)
        except (RxQueueError, ValueError) as exc:
            print(f"rxqueue: {exc}", file=sys.stderr)
            return 1
    # Every check that can fail runs before the backend opens: a bad invocation
    # must leave no file behind.
    handler = _load_handler(args.handler) if args.command == "worker" else None
    if args.command == "worker" and args.metrics_port is not None:
        from rxqueue.metrics import _client

        try:
            _client()
        except ImportError as exc:
            print(f"rxqueue: {exc}", file=sys.stderr)
            return 1
    if args.command == "push":
        args.payload = _payload(args.payload)
    elif args.command != "worker":
        _require_file(args.url)
    try:
        return asyncio.run(_command(args, handler))
    except (RxQueueError, ValueError) as exc:
        print(f"rxqueue: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
