"""One run at a time per warehouse, whatever its engine: an OS lock on a file beside it.

Engine-neutral (no DuckDB, no Spark): each engine's ``run_lock`` names the path it guards.
"""
from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path

from ..clock import utc_now
from . import WarehouseBusy

_held_run_locks: set[str] = set()


@contextmanager
def run_lock(path: Path, timeout: float):
    """One run at a time on the warehouse at ``path``: an OS lock on ``.<name>.run-lock`` beside it.

    DuckDB's own lock guards one connection, not a run (dbt, the fits and the write open
    and close the file many times). The OS releases this lock when the holder exits,
    however it exits. Waits up to ``timeout`` s, polling each second; then WarehouseBusy
    naming the holder's pid and start. Reentrant within a process.
    """
    key = str(path.resolve())
    if key in _held_run_locks:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(f".{path.name}.run-lock")
    handle = open(lock_path, "a+")
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "a process that gave no details"
                    raise WarehouseBusy(f"another run holds this warehouse ({path}): {holder}; waited {timeout:.0f} s "
                                        "(GLMM_AB_RUN_LOCK_TIMEOUT); try again when it has finished") from None
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        handle.seek(0)
        handle.truncate()
        handle.write(f"glmm-ab run, pid {os.getpid()}, since {utc_now():%Y-%m-%d %H:%M:%S} UTC\n")
        handle.flush()
        _held_run_locks.add(key)
        try:
            yield
        finally:
            _held_run_locks.discard(key)
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()
