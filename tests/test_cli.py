"""The rxqueue command, end to end on a SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest

from rxqueue.cli import main


def test_push_run_inspect_and_manage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert main(["push", url, '{"name": "ada"}', "--queue", "greetings"]) == 0
    task_id = capsys.readouterr().out.strip()
    assert main(["worker", url, "tests.cli_handlers:greet", "--queue", "greetings", "--burst"]) == 0
    assert "done 1, retried 0, killed 0" in capsys.readouterr().out
    assert main(["list", url, "--queue", "greetings", "--status", "Done"]) == 0
    assert task_id in capsys.readouterr().out
    assert main(["stats", url, "--queue", "greetings"]) == 0
    assert "Done     1" in capsys.readouterr().out
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
    assert main(["retry", url, "no-such-task"]) == 1
    assert capsys.readouterr().err.startswith("rxqueue: no task 'no-such-task'")
    assert main(["stats", "mongodb://x"]) == 1
    assert "unknown backend URL" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"package\.module:function"):
        main(["worker", url, "not-a-spec", "--burst"])
    with pytest.raises(SystemExit, match="must be JSON"):
        main(["push", url, "{nope"])
