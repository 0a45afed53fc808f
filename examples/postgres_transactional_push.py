"""Transactional push on PostgreSQL: the task exists if and only if your transaction commits.

A signup row and its welcome email are written in one transaction: if the
signup rolls back, no email is ever sent. Run it against a server:
``python -m examples.postgres_transactional_push postgresql://postgres@127.0.0.1:5432/test``.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass

import asyncpg

import rxqueue
from rxqueue import WorkerBuilder


@dataclass
class WelcomeEmail:
    to: str


async def send_welcome(job: WelcomeEmail) -> None:
    print(f"welcome mail to {job.to}")


async def sign_up(conn: asyncpg.Connection, backend: rxqueue.Backend, email: str) -> None:
    async with conn.transaction():
        await conn.execute("INSERT INTO example_signups (email) VALUES ($1)", email)
        # Same connection, same transaction: committed together or not at all.
        await backend.push(WelcomeEmail(to=email), connection=conn)
        if email.endswith("@invalid"):
            raise ValueError(f"{email}: no such domain")  # rolls back both


async def main(url: str, schema: str = "rxqueue_example") -> None:
    async with rxqueue.connect(url, queue="welcome", schema=schema) as backend:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f"SET search_path TO {schema}")
            await conn.execute("CREATE TABLE IF NOT EXISTS example_signups (email text)")
            await sign_up(conn, backend, "ada@example.com")
            try:
                await sign_up(conn, backend, "bob@invalid")
            except ValueError as error:
                print(f"signup failed: {error}")
        finally:
            await conn.close()
        summary = (
            await WorkerBuilder("welcome").backend(backend).build(send_welcome).run_until_idle()
        )
        print(f"sent: {summary.done}")  # 1: only the committed signup has an email


if __name__ == "__main__":
    asyncio.run(
        main(sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1:5432/test")
    )
