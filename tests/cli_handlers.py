"""Handlers the CLI tests load by name (``tests.cli_handlers:greet``)."""

from __future__ import annotations

NOT_CALLABLE = 42  # for the "handler is not callable" error


async def greet(payload: dict[str, str]) -> str:
    return f"hello {payload['name']}"
