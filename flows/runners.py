"""Where the fits run: the task runner of the fit stage, chosen per run (``--task-runner``).

* ``sequential`` (default): one pair at a time in the run's own process; each fit
  already runs its chains on two threads.
* ``dask``: a ``distributed.LocalCluster`` started for the run, one single-threaded
  worker process per two cores (each fit runs two chain groups), torn down after.
* ``dask://HOST:PORT``: an existing Dask scheduler (what a team at scale runs); the
  workers need this package installed and, to share compiled programs, the same
  ``$GLMM_AB_JAX_CACHE`` folder (a shared disk) or each compiles once per shape.

Each pair is shipped as its histogram and the frozen run options and comes back as
result tables (:func:`flows.nightly.fit_pair`), so the same seeds give the same draws
wherever it runs. Dask comes with the ``dask`` extra: ``pip install "glmm-ab[dask]"``.
"""
from __future__ import annotations

import os
import re

SEQUENTIAL = "sequential"
_ADDRESS = re.compile(r"^dask://(?P<host>[A-Za-z0-9.\-\[\]:]+):(?P<port>\d{1,5})$")


def check_spec(spec: str) -> str:
    """``spec`` if it names a runner, else ValueError saying what is accepted."""
    if spec in (SEQUENTIAL, "dask") or _ADDRESS.match(spec or ""):
        return spec
    raise ValueError(f"task runner must be 'sequential', 'dask' or 'dask://HOST:PORT', got {spec!r}")


def local_workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // 2)


def task_runner(spec: str, workers: int | None = None):
    """The Prefect task runner ``spec`` names (see the module docstring); ``workers`` overrides the
    local cluster's size."""
    from prefect.task_runners import ThreadPoolTaskRunner

    check_spec(spec)
    if spec == SEQUENTIAL:
        return ThreadPoolTaskRunner(max_workers=1)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise RuntimeError(f"--task-runner {spec} needs Dask: pip install \"glmm-ab[dask]\"") from None
    if spec == "dask":
        return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                              cluster_kwargs={"n_workers": workers or local_workers(), "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    match = _ADDRESS.match(spec)
    return DaskTaskRunner(address=f"tcp://{match['host']}:{match['port']}")
