"""Prefect's API for one command: the server configured, or a temporary one started while the job imports.

A flow run needs a Prefect API. With none configured (no ``PREFECT_API_URL`` in the
environment or the active Prefect profile), Prefect starts a temporary server at the
flow's first call: it imports its server package in the job's process (~4 s here)
and then waits for a uvicorn process it starts (~6 s), after the job has spent ~5 s
importing the flow. :func:`temporary_api` starts the same server, the same way
(``uvicorn --factory prefect.server.api.server:create_app``, UI off, the same
``PREFECT_HOME`` database, Prefect's ephemeral flags), first thing: the server comes
up on the other core while this process imports the flow and dbt, and the flow's
client reaches it through ``PREFECT_API_URL`` for the command's duration. The
server is stopped when the command ends (a backfill keeps one for all its nights). A
configured API, or one a surrounding block started, is used as it is.
"""
from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from contextlib import closing, contextmanager
from pathlib import Path

STARTUP_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _configured_api() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


class TemporaryApi:
    """A Prefect API server process on a free local port; :meth:`wait` until it answers."""

    def __init__(self) -> None:
        # where Prefect is installed, without importing it (1.5 s): the server starts before that
        package = Path(importlib.util.find_spec("prefect").origin).parent
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(package.parent), "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "error", "--lifespan", "on"],
            env=env,  # its output goes where the job's goes, as with Prefect's own temporary server
        )

    def wait(self, timeout: float) -> None:
        """Return once ``/health`` answers; RuntimeError with the server's own words if it exits or times out."""
        import httpx

        deadline = time.monotonic() + timeout
        with httpx.Client() as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the temporary Prefect API exited with code {self.process.returncode} "
                                       "(its own error is printed above)")
                try:
                    if client.get(f"{self.url}/health", timeout=2).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"the temporary Prefect API did not answer within {timeout:g} s "
                           f"(${STARTUP_TIMEOUT_ENV} sets the wait)")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def temporary_api(while_starting=None):
    """Within the block, flows reach a Prefect API: the configured one, else a temporary server.

    ``while_starting``: work to do while the server starts (imports); it runs before the wait.
    The server is started before Prefect's settings are read (importing them takes 1.5 s) and
    stopped at once if they name an API after all (a Prefect profile).
    """
    api = None if os.environ.get("PREFECT_API_URL") else TemporaryApi()
    try:
        if api is not None and _configured_api():
            api.stop()
            api = None
        if while_starting is not None:
            while_starting()
        if api is None:
            yield None
            return
        from prefect.settings import PREFECT_API_URL, temporary_settings

        api.wait(float(os.environ.get(STARTUP_TIMEOUT_ENV) or 180))
        # the settings for this process's flows and tasks; the environment for processes it starts
        # (Dask workers), which read their settings from it
        os.environ["PREFECT_API_URL"] = api.url
        try:
            with temporary_settings(updates={PREFECT_API_URL: api.url}):
                try:
                    yield api.url
                finally:
                    drain_prefect_workers()
        finally:
            os.environ.pop("PREFECT_API_URL", None)
    finally:
        if api is not None:
            api.stop()


def drain_prefect_workers(timeout: float = 10.0) -> None:
    """Send the logs and events Prefect still holds before the server goes (as Prefect's own test
    harness does); undrained, its workers retry a stopped server for a minute at exit."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=timeout)
        except Exception:  # noqa: BLE001 - a worker that never started, or a server already gone
            pass
