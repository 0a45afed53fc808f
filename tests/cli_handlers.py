"""Handlers the CLI tests load by name (``tests.cli_handlers:greet``)."""

from __future__ import annotations

from rxqueue import Workflow

NOT_CALLABLE = 42  # for the "handler is not callable" error


async def greet(payload: dict[str, str]) -> str:
    return f"hello {payload['name']}"


async def shout(text: str) -> str:
    return text.upper()


async def exclaim(text: str) -> str:
    return f"{text}!"


# A workflow the CLI serves by name (``tests.cli_handlers:GREETING``).
GREETING = Workflow("greeting").then(shout).then(exclaim)
