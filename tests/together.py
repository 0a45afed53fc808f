"""Start several child processes at the same instant, for races across processes."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence


def release_together(procs: Sequence[subprocess.Popen[str]]) -> list[tuple[str, str]]:
    """Wait until every child printed ``ready``, then send them all ``go`` at once.

    Returns each child's (stdout, stderr) once they exit; a child still running
    when this fails is killed. Asserts that every child exited with 0.
    """
    outputs: list[tuple[str, str]] = []
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready", proc.stderr and proc.stderr.read()
        for proc in procs:  # all at once
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [proc.returncode for proc in procs] == [0] * len(procs), [e for _, e in outputs]
    return outputs
