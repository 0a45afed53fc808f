"""The public surface: every name in rxqueue.__all__ exists and is documented."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import rxqueue

README = Path(__file__).resolve().parent.parent / "README.md"


SUBMODULES = {"ops", "layers", "events", "backoff", "sources", "metrics"}


def test_all_names_exist_and_nothing_public_is_missing_from_all() -> None:
    for name in rxqueue.__all__:
        assert hasattr(rxqueue, name), name
    public = {
        name
        for name, value in vars(rxqueue).items()
        if not name.startswith("_") and (not inspect.ismodule(value) or name in SUBMODULES)
    }
    assert public - {"annotations"} == set(rxqueue.__all__)


def test_public_classes_and_functions_have_docstrings() -> None:
    undocumented = [
        name
        for name in rxqueue.__all__
        if (inspect.isclass(getattr(rxqueue, name)) or inspect.isfunction(getattr(rxqueue, name)))
        and not inspect.getdoc(getattr(rxqueue, name))
    ]
    assert undocumented == []


def test_readme_names_only_public_api() -> None:
    text = README.read_text()
    used = set(re.findall(r"\brxqueue\.([A-Za-z_]+)", text))
    assert used <= set(rxqueue.__all__) | SUBMODULES, used - set(rxqueue.__all__)
