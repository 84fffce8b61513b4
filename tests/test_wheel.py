"""The package as a user installs it: a wheel built from the project, installed into a fresh venv,
and `glmm-ab demo` run from an empty folder outside the repository.

The fresh venv holds the wheel alone; its dependencies are the test environment's (a path in a
.pth file, after the venv's own site-packages), because installing them again took two minutes
of every CI run. That they install is what CI's own `pip install` of the same list shows; the
test checks the wheel declares exactly the project's dependencies."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from pipeline_helpers import without_configured_api

ROOT = Path(__file__).resolve().parents[1]
# What a clean checkout holds: a developer's venv, build folders and warehouses must not reach the wheel.
TOP_LEVEL_LOCAL = {".venv", ".git", "build", "dist", "warehouse", "test-artifacts", "logs", ".pytest_cache", ".cache"}
DBT_LOCAL = {"target", "logs", "dbt_packages"}


def not_source(folder: str, names: list[str]) -> set[str]:
    here = Path(folder).resolve()
    local = TOP_LEVEL_LOCAL if here == ROOT else DBT_LOCAL if here == ROOT / "dbt_project" else set()
    return {n for n in names if n in local or n == "__pycache__" or n.endswith((".egg-info", ".duckdb", ".duckdb.wal"))}

def canonical(requirement: str) -> str:
    req = Requirement(requirement)
    return f"{req.name.lower()}{','.join(sorted(str(s) for s in req.specifier))}"


PROBE = """
import json, sys
import duckdb, flows, glmm_model
from flows.resources import dashboard_app, dbt_profiles_dir, dbt_project_dir
con = duckdb.connect(sys.argv[1], read_only=True)
latest = con.execute("SELECT experiment_id, metric_id, variant, relative_lift_mean, decision "
                     "FROM rpt_experiment_results_latest ORDER BY ALL").fetchall()
runs = con.execute("SELECT status FROM glmm.runs").fetchall()
print(json.dumps({"modules": [flows.__file__, glmm_model.__file__], "dbt_project": str(dbt_project_dir()),
                  "profiles": str(dbt_profiles_dir()), "dashboard": str(dashboard_app()),
                  "latest": latest, "runs": runs}))
"""


@pytest.fixture(scope="module")
def fresh_install(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=not_source)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp / "dist"), str(source)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("glmm_ab-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        (meta,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        requires = [line.split(": ", 1)[1] for line in archive.read(meta).decode().splitlines()
                    if line.startswith("Requires-Dist: ") and "extra ==" not in line]
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(map(canonical, requires)) == sorted(map(canonical, declared))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    installed = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", str(wheel)],
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-3000:]
    (site,) = (venv / "lib").glob("python3.*/site-packages")
    # the dependencies, from this environment; a plain path, so this environment's own .pth files
    # (the editable install of the repository) are not read
    (site / "test_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    shutil.rmtree(source)  # nothing of the project's files remains but what the wheel carries
    return venv


def test_the_wheel_runs_the_demo_from_a_folder_outside_the_repository(fresh_install, tmp_path):
    user_folder = tmp_path / "somewhere-else"
    user_folder.mkdir()
    # a new user has no Prefect API configured: the demo starts one
    env = without_configured_api({k: v for k, v in os.environ.items()
                                  if not k.startswith(("GLMM_AB_DBT_", "PYTHON", "VIRTUAL_ENV")) and k != "GLMM_AB_WAREHOUSE"})
    env.update(GLMM_AB_DBT_STATE=str(tmp_path / "dbt-state"))  # dbt's parse state, kept out of ~/.cache
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
               PATH=f"{fresh_install / 'bin'}:{env.get('PATH', '')}:{Path(sys.executable).parent}")  # dbt, last
    demo = subprocess.run([str(fresh_install / "bin" / "glmm-ab"), "demo", "--chains", "2", "--warmup", "200",
                           "--samples", "300"], cwd=user_folder, capture_output=True, text=True, env=env, timeout=1200)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "checkout_button" in demo.stdout and "published for BI" in demo.stdout

    warehouse = user_folder / "warehouse" / "demo.duckdb"
    assert warehouse.is_file() and (user_folder / "warehouse" / "demo_bi.duckdb").is_file()
    probe = subprocess.run([str(fresh_install / "bin" / "python"), "-c", PROBE, str(warehouse)], cwd=user_folder,
                           capture_output=True, text=True, env=env, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    found = json.loads(probe.stdout)
    site = str(fresh_install)
    # the code, the dbt project, the profile and the dashboard all come from the installed wheel
    for path in [*found["modules"], found["dbt_project"], found["profiles"], found["dashboard"]]:
        assert path.startswith(site) and not path.startswith(str(ROOT)), path
    assert found["runs"] == [["succeeded"]]
    assert len(found["latest"]) == 16  # 3 experiments (one with 3 arms) x 4 metrics: 16 treatment rows
    assert {row[4] for row in found["latest"]} <= {"ship", "keep_control", "inconclusive", "invalid"}
    # the pictures were drawn by the caller, from the result tables, beside the warehouse
    assert len(list((user_folder / "warehouse" / "plots").rglob("trace.png"))) == 12
