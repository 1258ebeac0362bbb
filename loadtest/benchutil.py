"""Pieces shared by the benchmark scripts: py-spy recording of the server and the
shutdown of bot worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing.connection
import multiprocessing.process
import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["Worker", "start_py_spy", "stop_workers"]

Worker = tuple[multiprocessing.process.BaseProcess, multiprocessing.connection.Connection]


def start_py_spy(pid: int, duration: float, output: Path) -> subprocess.Popen[bytes]:
    """Record process ``pid`` with py-spy for ``duration`` seconds into ``output`` as
    collapsed stacks (one ``frame;frame;... count`` line per stack), 200 samples/s.

    Raises:
        RuntimeError: py-spy is not installed.
    """
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.path.exists(exe):
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    return subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--duration", str(math.ceil(duration)),
         "--rate", "200", "--nonblocking", "--format", "raw", "--output", str(output)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )


async def stop_workers(workers: list[Worker]) -> None:
    """Ask every worker to stop, wait up to 20 s each, then kill what is left."""
    for _, conn in workers:
        with contextlib.suppress(OSError):
            conn.send("stop")
    for proc, _ in workers:
        await asyncio.to_thread(proc.join, 20)
        if proc.is_alive():
            proc.kill()
            await asyncio.to_thread(proc.join, 5)
