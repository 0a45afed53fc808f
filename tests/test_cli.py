"""The rxqueue command, end to end on a SQLite file."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from rxqueue.backends.sqlite import SqliteBackend
from rxqueue.cli import _sqlite_file, main

FIELDS = [
    "id", "queue", "status", "attempts", "max_attempts", "priority", "run_at",
    "created_at", "done_at", "last_error", "args", "result", "metadata", "unique_key",
    "progress", "progress_note",
]  # fmt: skip
HANDLER_MODULE = "async def shout(payload):\n    return payload['word'].upper()\n"


def one_line(text: str) -> str:
    assert text.endswith("\n") and text.count("\n") == 1, text
    assert "Traceback" not in text
    return text


def test_push_run_inspect_and_manage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert main(["push", url, '{"name": "ada"}', "--queue", "greetings"]) == 0
    task_id = capsys.readouterr().out.strip()
    assert main(["worker", url, "tests.cli_handlers:greet", "--queue", "greetings", "--burst"]) == 0
    assert "done 1, retried 0, killed 0" in capsys.readouterr().out
    assert main(["list", url, "--queue", "greetings", "--status", "Done"]) == 0
    assert task_id in capsys.readouterr().out
    assert main(["stats", url, "--queue", "greetings"]) == 0
    assert "Done      1" in capsys.readouterr().out
    assert main(["push", url, '{"name": "bob"}', "--queue", "greetings", "--delay", "60"]) == 0
    later = capsys.readouterr().out.strip()
    assert main(["kill", url, later, "--queue", "greetings"]) == 0
    assert main(["retry", url, later, "--queue", "greetings"]) == 0
    assert main(["retry", url, task_id, "--queue", "greetings"]) == 1
    assert "only Failed or Killed tasks can be retried" in capsys.readouterr().err
    assert main(["vacuum", url, "--queue", "greetings"]) == 0
    assert "deleted 1 finished tasks" in capsys.readouterr().out  # the Done one


def test_errors_are_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert main(["push", url, "{}"]) == 0  # retry only opens a file that exists
    assert main(["retry", url, "no-such-task"]) == 1
    assert capsys.readouterr().err.startswith("rxqueue: no task 'no-such-task'")
    assert main(["stats", "mongodb://x"]) == 1
    assert "unknown backend URL" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"package\.module:function"):
        main(["worker", url, "not-a-spec", "--burst"])
    with pytest.raises(SystemExit, match="must be JSON"):
        main(["push", url, "{nope"])


# --- the worker imports from the current folder ----------------------------------------------


def test_worker_command_imports_from_the_folder_it_runs_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "jobs_in_cwd.py").write_text(HANDLER_MODULE)
    monkeypatch.chdir(tmp_path)
    assert main(["push", "sqlite:///q.db", '{"word": "hi"}']) == 0
    task_id = capsys.readouterr().out.strip()
    # -P: no implicit cwd on sys.path, as for the installed `rxqueue` script.
    command = [sys.executable, "-P", "-m", "rxqueue.cli", "worker", "sqlite:///q.db"]
    done = subprocess.run(
        [*command, "jobs_in_cwd:shout", "--burst"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "done 1, retried 0, killed 0" in done.stdout
    assert main(["get", "sqlite:///q.db", task_id, "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["result"] == "HI"


def test_current_folder_goes_first_on_sys_path_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "jobs_first.py").write_text(HANDLER_MODULE)
    monkeypatch.chdir(tmp_path)
    cwd = os.getcwd()
    monkeypatch.setattr(sys, "path", [p for p in sys.path if os.path.abspath(p) != cwd])
    monkeypatch.delitem(sys.modules, "jobs_first", raising=False)
    try:
        for _ in range(2):
            assert main(["worker", "sqlite:///q.db", "jobs_first:shout", "--burst"]) == 0
    finally:
        sys.modules.pop("jobs_first", None)
    assert sys.path[0] == cwd
    assert sys.path.count(cwd) == 1
    assert (tmp_path / "q.db").exists()  # worker, like push, creates the file


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("no_such_module_here:run", "no module 'no_such_module_here'.*PYTHONPATH"),
        ("tests.no_such:run", "no module 'tests.no_such'"),
        ("needs_missing_dep:run", "needs_missing_dep.*no_such_dependency.*install it"),
        ("tests.cli_handlers:gret", "no attribute 'gret'; did you mean 'greet'"),
        ("tests.cli_handlers:nothing_like_it", "no attribute .*check the name after ':'"),
        ("tests.cli_handlers:NOT_CALLABLE", "is not callable .*int 42"),
        ("tests/cli_handlers.py:greet", r"package\.module:function.*not a file path"),
        ("tests.cli_handlers.py:greet", r"package\.module:function"),
        ("tests.cli_handlers:", r"package\.module:function"),
    ],
)
def test_bad_handler_is_one_line_naming_spec_and_fix(
    spec: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "needs_missing_dep.py").write_text("import no_such_dependency\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(SystemExit, match=expected) as raised:
        main(["worker", f"sqlite:///{tmp_path / 'cli.db'}", spec, "--burst"])
    message = str(raised.value.code)
    assert message.startswith("rxqueue: ") and "\n" not in message
    assert spec.partition(":")[0] in message
    assert not (tmp_path / "cli.db").exists()


# --- inspecting never creates a database -------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [["stats"], ["list"], ["get", "some-id"], ["retry", "some-id"], ["kill", "some-id"],
     ["vacuum"], ["stats", "--json"], ["list", "--json"]],
)  # fmt: skip
def test_inspecting_a_missing_file_fails_and_creates_nothing(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    command, *rest = argv
    with pytest.raises(SystemExit) as raised:
        main([command, "sqlite:///typo.db", *rest])
    message = str(raised.value.code)
    assert message.startswith(f"rxqueue: {tmp_path / 'typo.db'} does not exist; check the path")
    assert "push" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///tasks.db",
        "sqlite:///sub/dir/tasks.db",
        "sqlite:////tmp/abs/tasks.db",
        "sqlite:///with%20space.db",
        "sqlite:///tasks.db?mode=ro",
        "sqlite:////tmp/abs/tasks.db?mode=rw&cache=shared",
        "sqlite:///file:uri.db",
        "SQLITE:///upper.db",
    ],
)
def test_the_file_checked_is_the_file_the_backend_opens(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert _sqlite_file(url) == SqliteBackend.from_url(url).path


@pytest.mark.parametrize("url", ["memory://", "mongodb://x", "sqlite://host/x.db", "sqlite:///"])
def test_only_well_formed_sqlite_urls_are_checked(url: str) -> None:
    assert _sqlite_file(url) is None  # connect() reports the rest


# --- --json and get ------------------------------------------------------------------------------


def test_stats_list_and_get_print_json_and_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    url = "sqlite:///cli.db"
    assert main(["push", url, '{"name": "ada"}']) == 0
    done_id = capsys.readouterr().out.strip()
    assert main(["worker", url, "tests.cli_handlers:greet", "--burst"]) == 0
    assert main(["push", url, "[1, 2]", "--delay", "60", "--priority", "3"]) == 0
    later_id = capsys.readouterr().out.strip().splitlines()[-1]

    assert main(["stats", url, "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out) == {
        "Pending": 1, "Queued": 0, "Running": 0, "Done": 1, "Failed": 0, "Killed": 0,
        "Cancelled": 0,
        "Waiting": 0,
    }  # fmt: skip

    assert main(["list", url, "--json"]) == 0
    tasks = orjson.loads(capsys.readouterr().out)
    assert [task["id"] for task in tasks] == [done_id, later_id]
    assert all(list(task) == FIELDS for task in tasks)
    done, later = tasks
    assert done["status"] == "Done" and done["attempts"] == 1
    assert done["args"] == {"name": "ada"} and done["result"] == "hello ada"
    assert isinstance(done["done_at"], float) and done["done_at"] >= done["created_at"]
    assert later["args"] == [1, 2] and later["priority"] == 3 and later["done_at"] is None
    assert later["run_at"] >= later["created_at"] + 59

    assert main(["list", url, "--status", "done", "--json"]) == 0  # any case
    assert [task["id"] for task in orjson.loads(capsys.readouterr().out)] == [done_id]
    assert main(["list", url, "--json", "--limit", "1", "--offset", "1"]) == 0
    assert [task["id"] for task in orjson.loads(capsys.readouterr().out)] == [later_id]

    assert main(["get", url, done_id, "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out) == done
    assert main(["get", url, done_id]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == FIELDS
    shown = dict(line.split(maxsplit=1) for line in lines)
    assert shown["status"] == "Done" and shown["last_error"] == "-"
    assert shown["args"] == '{"name":"ada"}' and shown["result"] == '"hello ada"'
    assert shown["done_at"].endswith(" UTC")

    assert main(["get", url, "no-such-task"]) == 1
    assert "no task 'no-such-task' in queue 'default'" in one_line(capsys.readouterr().err)
    assert main(["get", url, done_id, "--queue", "other"]) == 1
    assert "pass --queue" in one_line(capsys.readouterr().err)


class RawBytes:
    """A codec that stores bytes as they are: payloads the JSON codec cannot decode."""

    def encode(self, value: Any) -> bytes:
        return bytes(value)

    def decode(self, data: bytes) -> Any:
        return data


def test_payloads_that_do_not_decode_are_shown_not_fatal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = b"\xff\x00 not json"

    async def store() -> str:
        async with SqliteBackend(tmp_path / "raw.db", codec=RawBytes()) as backend:
            return await backend.push(raw)

    task_id = asyncio.run(store())
    url = f"sqlite:///{tmp_path / 'raw.db'}"
    assert main(["get", url, task_id, "--json"]) == 0
    assert base64.b64decode(orjson.loads(capsys.readouterr().out)["args"]) == raw
    assert main(["list", url, "--json"]) == 0
    assert base64.b64decode(orjson.loads(capsys.readouterr().out)[0]["args"]) == raw
    assert main(["get", url, task_id]) == 0
    assert f"{len(raw)} bytes, not JSON (base64)" in capsys.readouterr().out


# --- bad options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["list", "URL", "--limit", "-1"], "argument --limit: must be at least 1, got -1"),
        (["list", "URL", "--limit", "ten"], "argument --limit: expected a whole number"),
        (["list", "URL", "--offset", "-5"], "argument --offset: must be at least 0"),
        (["list", "URL", "--limit", str(2**64)], "argument --limit: must be at most"),
        (
            ["list", "URL", "--status", "Bogus"],
            "unknown status 'Bogus'; choose from Pending, Queued, Running, Done, Failed, Killed",
        ),
        (["push", "URL", "{}", "--delay", "nan"], "argument --delay: must be a finite number"),
        (["push", "URL", "{}", "--delay", "-1"], "argument --delay: must be a finite number"),
        (["push", "URL", "{}", "--delay", "soon"], "argument --delay: expected a number"),
        (["push", "URL", "{}", "--priority", "1.5"], "argument --priority: expected a whole"),
        (["vacuum", "URL", "--older-than", "inf"], "argument --older-than: must be a finite"),
        (["worker", "URL", "m:f", "--concurrency", "0"], "argument --concurrency: must be at"),
        (["get", "URL"], "required: task_id"),
        (["stats", "URL", "--bogus"], "unrecognized arguments: --bogus"),
        ([], "required: COMMAND"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(
    argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    with pytest.raises(SystemExit) as raised:
        main([url if arg == "URL" else arg for arg in argv])
    assert raised.value.code == 2
    error = one_line(capsys.readouterr().err)
    assert expected in error and error.startswith("rxqueue")
    assert not (tmp_path / "cli.db").exists()


@pytest.mark.parametrize(
    "argv",
    [["stats", "--json"], ["list", "--json"], ["get", "x"], ["push", "{}"],
     ["worker", "tests.cli_handlers:greet", "--burst"]],
)  # fmt: skip
def test_unknown_url_scheme_is_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    command, *rest = argv
    assert main([command, "mongodb://x", *rest]) == 1
    assert "rxqueue: unknown backend URL 'mongodb://x'" in one_line(capsys.readouterr().err)


def test_schema_sql_prints_the_postgresql_ddl_and_touches_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["schema", "--sql", "--schema", "billing"]) == 0
    ddl = capsys.readouterr().out
    assert ddl.startswith("-- rxqueue schema version") and 'CREATE TABLE "billing".tasks' in ddl
    with pytest.raises(SystemExit, match="SQL identifier"):
        main(["schema", "--sql", "--schema", "no spaces; drop"])
    with pytest.raises(SystemExit, match="postgresql:// URL to migrate, or --sql"):
        main(["schema"])


def test_cancel_ends_a_waiting_task_and_says_what_happened(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert main(["push", url, '{"n": 1}']) == 0
    task_id = capsys.readouterr().out.strip()
    assert main(["cancel", url, task_id, "--reason", "no longer wanted"]) == 0
    assert f"{task_id} is cancelled" in capsys.readouterr().out
    assert main(["push", url, '{"name": "ada"}']) == 0
    done_id = capsys.readouterr().out.strip()
    assert main(["worker", url, "tests.cli_handlers:greet", "--burst"]) == 0
    capsys.readouterr()
    assert main(["cancel", url, done_id]) == 0
    assert "already finished (Done); left as it is" in capsys.readouterr().out
    assert main(["get", url, task_id, "--json"]) == 0
    shown = orjson.loads(capsys.readouterr().out)
    assert (shown["status"], shown["last_error"]) == ("Cancelled", "cancelled: no longer wanted")


def test_a_workflow_is_served_by_name_and_its_run_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    from rxqueue.backends.sqlite import SqliteBackend
    from tests.cli_handlers import GREETING

    url = f"sqlite:///{tmp_path / 'flows.db'}"

    async def push() -> str:
        async with SqliteBackend(tmp_path / "flows.db") as backend:
            return await GREETING.push(backend, "hi")

    run_id = asyncio.run(push())
    assert main(["worker", url, "tests.cli_handlers:GREETING", "--burst"]) == 0
    assert "done 3, retried 0, killed 0" in capsys.readouterr().out
    assert main(["workflow", url, run_id, "--json"]) == 0
    shown = orjson.loads(capsys.readouterr().out)
    assert (shown["workflow"], shown["status"], shown["result"]) == ("greeting", "Done", "HI!")
    assert [(s["name"], s["status"], s["result"]) for s in shown["steps"]] == [
        ("1-shout", "Done", "HI"),
        ("2-exclaim", "Done", "HI!"),
    ]
    assert main(["workflow", url, run_id]) == 0
    text = capsys.readouterr().out
    assert f"workflow greeting run {run_id}: Done" in text and "2-exclaim" in text
    assert main(["workflow", url, "no-such-run"]) == 1
    assert "no workflow run 'no-such-run'" in capsys.readouterr().err

    other = asyncio.run(push())
    assert main(["workflow", url, other, "--cancel", "not today"]) == 0
    out, err = capsys.readouterr()
    assert "asked 2 steps to cancel" in err
    assert "1-shout    Cancelled" in out and f"workflow greeting run {other}: Killed" in out
