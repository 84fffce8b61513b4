"""Running dbt with the arguments an analytics engineer types, through dbt's programmatic runner.

dbt runs in this process (``dbtRunner``), not as a ``dbt`` subprocess: a night
pays dbt's import (~3 s) once, not once per invocation, and an engine whose
adapter must share this process's connection (Spark through dbt-spark's
``session`` method: one JVM, one local metastore) works the same way. After each
call the warehouse releases what dbt's adapter holds (:meth:`release_dbt`: for
DuckDB the file, so the flow can open it next), and a stop cancels dbt's queries
(:mod:`.stopping`), as terminating the subprocess did.
The project and profile are the ones the package carries (:mod:`.resources`);
the warehouse names the profile's target and the environment that points it at
itself. dbt's target and log folders go to a temporary folder, so an installed,
read-only package works. Results are read from ``run_results.json``.

dbt's parse state (``partial_parse.msgpack``) is kept between invocations in
``$GLMM_AB_DBT_STATE`` (default ``~/.cache/glmm-ab/dbt``), one file per project, dbt
version, target and connection: each call starts from the last one's state and
dbt re-parses only what changed (it checks itself, and parses everything when
the project, profile or vars differ). The run's as-of goes to dbt in the
environment (``GLMM_AB_AS_OF``), not in ``--vars``, which would change every
night and force a full parse.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import sys
import tempfile
import threading
from importlib.metadata import version
from dataclasses import dataclass
from pathlib import Path

from . import stopping
from .resources import dbt_profiles_dir, dbt_project_dir
from .warehouse import Warehouse

# What each dbt step builds.
PIPELINE_SELECTOR = "path:models/staging path:models/intermediate path:models/marts"
REPORTS_SELECTOR = "path:models/reports"


class DbtError(RuntimeError):
    """dbt failed; the message lists the failing nodes and why."""


@dataclass(frozen=True)
class DbtResult:
    passed: int
    warned: list[str]
    output: str


def dbt_executable() -> str:
    local = Path(sys.executable).with_name("dbt")
    return str(local) if local.exists() else (shutil.which("dbt") or "dbt")


PARSE_STATE = "partial_parse.msgpack"


def parse_state_path(project_dir: Path, warehouse: Warehouse) -> Path:
    """Where dbt's parse state for this project, dbt version, target and warehouse is kept."""
    key = json.dumps([str(project_dir.resolve()), version("dbt-core"), warehouse.dbt_target,
                      sorted(warehouse.dbt_env().items())])
    folder = Path(os.environ.get("GLMM_AB_DBT_STATE") or os.path.expanduser("~/.cache/glmm-ab/dbt"))
    return folder / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.msgpack"


def _keep_parse_state(produced: Path, kept: Path) -> None:
    """Replace the kept state with the one dbt just wrote, atomically (runs may overlap); a cache
    that cannot be written (a read-only home) costs only the next parse."""
    tmp = None
    try:
        kept.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=kept.parent, prefix=kept.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as out:
            out.write(produced.read_bytes())
        os.replace(tmp, kept)
    except OSError:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


_ENV_LOCK = threading.Lock()


def _cancel_dbt_queries_until(done: threading.Event) -> None:
    """On a stop: cancel the open queries of the in-process dbt (each adapter's own cancel, as dbt does on
    Ctrl-C) now and every 0.2 s until it returns, so the nodes still queued fail at once too."""
    from dbt.adapters.factory import FACTORY

    def cancel_all():
        for adapter in list(FACTORY.adapters.values()):
            try:
                adapter.cancel_open_connections()
            except Exception:  # an adapter without cancel, or a connection closing under us
                pass

    def keep_cancelling():
        while True:
            cancel_all()
            if done.wait(0.2):
                return

    threading.Thread(target=keep_cancelling, name="dbt-cancel", daemon=True).start()


def import_dbt() -> None:
    """Import dbt's runner and the installed adapters now (~2.5 s), e.g. while waiting for something else;
    the first call of :func:`run_dbt` then starts at once."""
    from dbt.cli.main import dbtRunner  # noqa: F401

    for adapter in ("duckdb", "spark"):
        try:
            importlib.import_module(f"dbt.adapters.{adapter}")
        except ImportError:  # an adapter that is not installed is not needed
            pass


def _run_in_process(args: list[str], env: dict[str, str], warehouse: Warehouse) -> tuple[int, str]:
    """dbt's own programmatic runner (``dbtRunner``), in this process: no interpreter and dbt import per
    call. Only the variables that differ from this process's are set (or removed) for the call, and
    restored after it; the warehouse then releases what dbt's adapter holds (DuckDB: the file). dbt runs in
    a thread of its own so that this thread can take a stop (SIGTERM), which cancels dbt's queries.
    Its log lines are collected, not printed (the flow logs what matters)."""
    from dbt.cli.main import dbtRunner

    lines: list[str] = []
    changed = {k: v for k, v in env.items() if os.environ.get(k) != v}
    removed = [k for k in os.environ if k not in env]
    outcome: list = []
    done = threading.Event()

    def invoke():
        try:
            outcome.append(dbtRunner(callbacks=[lambda event: lines.append(event.info.msg)]).invoke(
                [*args, "--log-level", "none"]))
        except BaseException as exc:  # noqa: BLE001 - reported below as dbt's failure
            outcome.append(exc)
        finally:
            warehouse.release_dbt()

    with _ENV_LOCK:
        saved = {k: os.environ.get(k) for k in [*changed, *removed]}
        os.environ.update(changed)
        for k in removed:
            del os.environ[k]
        try:
            worker = threading.Thread(target=invoke, name="dbt")
            with stopping.on_stop(lambda: _cancel_dbt_queries_until(done)):
                worker.start()
                while worker.is_alive():  # a join with a timeout lets this thread take a signal
                    worker.join(0.2)
        finally:
            done.set()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    result = outcome[0] if outcome else RuntimeError("dbt did not return")
    if isinstance(result, BaseException):
        return 1, "\n".join([*lines, f"{type(result).__name__}: {result}"])
    if result.exception is not None:
        lines.append(f"{type(result.exception).__name__}: {result.exception}")
    return (0 if result.success else 1), "\n".join(lines)


def run_dbt(command: str, warehouse: Warehouse, selector: str | None = None, as_of: str | None = None,
            extra: list[str] | None = None) -> DbtResult:
    """Run ``dbt <command>`` against ``warehouse``; raise DbtError naming what failed."""
    project_dir = dbt_project_dir()
    kept_state = parse_state_path(project_dir, warehouse)
    with tempfile.TemporaryDirectory(prefix="glmm-ab-dbt-") as tmp:
        target = Path(tmp) / "target"
        target.mkdir()
        if kept_state.is_file():
            shutil.copyfile(kept_state, target / PARSE_STATE)
        args = [command, "--project-dir", str(project_dir), "--profiles-dir", str(dbt_profiles_dir()),
                "--target", warehouse.dbt_target,
                "--target-path", str(target), "--log-path", str(Path(tmp) / "logs")]
        if selector:
            args += ["--select", selector]
        args += extra or []
        env = {**os.environ, **warehouse.dbt_env(), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
        env.pop("GLMM_AB_AS_OF", None)
        if as_of:
            env["GLMM_AB_AS_OF"] = as_of
        returncode, output = _run_in_process(args, env, warehouse)
        results_path = target / "run_results.json"
        results = json.loads(results_path.read_text())["results"] if results_path.exists() else []
        if results and (target / PARSE_STATE).is_file():  # dbt parsed the project and ran
            _keep_parse_state(target / PARSE_STATE, kept_state)
    failed = [f"{r['unique_id']}: {r['status']} - {(r.get('message') or '').strip()}" for r in results
              if r["status"] in ("error", "fail", "runtime error")]
    warned = [f"{r['unique_id']}: {(r.get('message') or '').strip()}" for r in results if r["status"] == "warn"]
    if returncode != 0 or failed:
        detail = "; ".join(failed) if failed else output.strip().splitlines()[-1:] or ["no output"]
        raise DbtError(f"dbt {command} failed: {detail if isinstance(detail, str) else detail[0]}")
    return DbtResult(passed=sum(r["status"] in ("success", "pass") for r in results), warned=warned, output=output)
