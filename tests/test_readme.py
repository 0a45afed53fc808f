"""Every Python block of README.md runs, top to bottom, in one namespace."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_python_blocks_and_the_quick_start() -> None:
    text = README.read_text()
    assert len(python_blocks()) >= 5
    assert "make demo" in text and "make test" in text


async def test_readme_blocks_run_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # the SQLite example writes tasks.db here
    namespace: dict[str, Any] = {"__name__": "readme"}
    for number, block in enumerate(python_blocks(), start=1):
        code = compile(
            block,
            f"README.md block {number}",
            "exec",
            flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
            dont_inherit=True,  # run as a user would: no `from __future__` of ours
        )
        result = eval(code, namespace)
        if result is not None:
            await result
    for backend_name in ("backend", "custom", "news", "billing"):
        await namespace[backend_name].close()
    printed = capsys.readouterr().out
    assert "Sending to ada@example.com (attempt 1)" in printed
    assert "Sending to grace@example.com (attempt 1)" in printed
    assert "one SMTP session for" in printed
    assert "Stopped" in printed
    assert "Abort: nothing to charge" in printed  # from the aiostream pipeline
