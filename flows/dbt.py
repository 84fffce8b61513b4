"""Running dbt as the analytics engineer does: the ``dbt`` CLI in a subprocess.

A subprocess (rather than dbt's in-process runner) guarantees that dbt's DuckDB
connection is closed when it returns, so the flow can open the same file next.
Results are read from ``run_results.json``.
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

REPO_ROOT = Path(__file__).resolve().parents[1]
DBT_PROJECT_DIR = Path(os.environ.get("GLMM_AB_DBT_PROJECT_DIR", REPO_ROOT / "dbt_project"))
DBT_PROFILES_DIR = Path(os.environ.get("GLMM_AB_DBT_PROFILES_DIR", REPO_ROOT))

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


def run_dbt(command: str, warehouse: str | Path, selector: str | None = None, as_of: str | None = None,
            extra: list[str] | None = None) -> DbtResult:
    """Run ``dbt <command>`` against ``warehouse``; raise DbtError naming what failed."""
    with tempfile.TemporaryDirectory(prefix="glmm-ab-dbt-") as tmp:
        args = [dbt_executable(), command, "--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROFILES_DIR),
                "--target-path", str(Path(tmp) / "target"), "--log-path", str(Path(tmp) / "logs")]
        if selector:
            args += ["--select", selector]
        if as_of:
            args += ["--vars", json.dumps({"as_of": as_of})]
        args += extra or []
        env = {**os.environ, "GLMM_AB_WAREHOUSE": str(Path(warehouse).resolve()), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
        proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=str(DBT_PROJECT_DIR))
        output = proc.stdout + proc.stderr
        results_path = Path(tmp) / "target" / "run_results.json"
        results = json.loads(results_path.read_text())["results"] if results_path.exists() else []
    failed = [f"{r['unique_id']}: {r['status']} - {(r.get('message') or '').strip()}" for r in results
              if r["status"] in ("error", "fail", "runtime error")]
    warned = [f"{r['unique_id']}: {(r.get('message') or '').strip()}" for r in results if r["status"] == "warn"]
    if proc.returncode != 0 or failed:
        detail = "; ".join(failed) if failed else output.strip().splitlines()[-1:] or ["no output"]
        raise DbtError(f"dbt {command} failed: {detail if isinstance(detail, str) else detail[0]}")
    return DbtResult(passed=sum(r["status"] in ("success", "pass") for r in results), warned=warned, output=output)
