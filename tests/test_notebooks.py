"""Every notebook in notebooks/ runs from top to bottom in a real kernel, and
every cell of it may be run again.

Kernels start in the notebook's own folder, as Jupyter starts them, so a
notebook reads its neighbours by relative path (``../benchmarks/results``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
MISSING_DEV = "install the dev extra: pip install -e '.[dev]'"


def _client(path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An nbclient client for ``path``, whose kernel imports this checkout of rxqueue."""
    nbformat = pytest.importorskip("nbformat", reason=MISSING_DEV)
    nbclient = pytest.importorskip("nbclient", reason=MISSING_DEV)
    repo = str(path.parent.parent)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))
    )
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    return nbclient.NotebookClient(
        nbformat.read(path, as_version=4),
        timeout=60,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )


notebooks = pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # jupyter's own path migrations
@notebooks
def test_notebook_runs(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = _client(path, monkeypatch)
    client.execute()
    errors = [
        output
        for cell in client.nb.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert errors == [], errors


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@notebooks
def test_every_cell_may_run_again(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In one kernel: each code cell twice in a row, then the whole notebook once more.

    A cell that fails raises ``CellExecutionError`` (with the cell and its traceback).
    """
    client = _client(path, monkeypatch)
    cells = list(enumerate(client.nb.cells))
    with client.setup_kernel():
        for index, cell in cells:
            client.execute_cell(cell, index)
            client.execute_cell(cell, index)
        for index, cell in cells:
            client.execute_cell(cell, index)


def test_there_is_a_notebook() -> None:
    assert {path.name for path in NOTEBOOKS} >= {"01-quickstart.ipynb"}
