"""Running dbt as the analytics engineer does: the ``dbt`` CLI in a subprocess.

A subprocess (rather than dbt's in-process runner) guarantees that dbt's
connection is closed when it returns, so the flow can open the warehouse next.
The project and profile are the ones the package carries (:mod:`.resources`);
the warehouse names the profile's target and the environment that points it at
itself. dbt's target and log folders go to a temporary folder, so an installed,
read-only package works. Results are read from ``run_results.json``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
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


def run_dbt(command: str, warehouse: Warehouse, selector: str | None = None, as_of: str | None = None,
            extra: list[str] | None = None) -> DbtResult:
    """Run ``dbt <command>`` against ``warehouse``; raise DbtError naming what failed."""
    project_dir = dbt_project_dir()
    with tempfile.TemporaryDirectory(prefix="glmm-ab-dbt-") as tmp:
        args = [dbt_executable(), command, "--project-dir", str(project_dir), "--profiles-dir", str(dbt_profiles_dir()),
                "--target", warehouse.dbt_target,
                "--target-path", str(Path(tmp) / "target"), "--log-path", str(Path(tmp) / "logs")]
        if selector:
            args += ["--select", selector]
        if as_of:
            args += ["--vars", json.dumps({"as_of": as_of})]
        args += extra or []
        env = {**os.environ, **warehouse.dbt_env(), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
        # a stop (SIGTERM) terminates it: dbt then ends its open transaction and exits
        with stopping.child_process(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                                     env=env, cwd=tmp)) as proc:
            stdout, stderr = proc.communicate()
        output = stdout + stderr
        results_path = Path(tmp) / "target" / "run_results.json"
        results = json.loads(results_path.read_text())["results"] if results_path.exists() else []
    failed = [f"{r['unique_id']}: {r['status']} - {(r.get('message') or '').strip()}" for r in results
              if r["status"] in ("error", "fail", "runtime error")]
    warned = [f"{r['unique_id']}: {(r.get('message') or '').strip()}" for r in results if r["status"] == "warn"]
    if proc.returncode != 0 or failed:
        detail = "; ".join(failed) if failed else output.strip().splitlines()[-1:] or ["no output"]
        raise DbtError(f"dbt {command} failed: {detail if isinstance(detail, str) else detail[0]}")
    return DbtResult(passed=sum(r["status"] in ("success", "pass") for r in results), warned=warned, output=output)
