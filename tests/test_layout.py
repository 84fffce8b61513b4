"""The floor plan holds: the engine imports no warehouse, dbt or Prefect; one module per engine speaks
DuckDB; importing the engine changes nothing process-wide; every timestamp the job writes is UTC."""
import ast
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
SOURCE_FOLDERS = ("glmm_model", "flows", "dashboard")
DUCKDB_SPEAKERS = {"flows/warehouse/duckdb_warehouse.py", "flows/warehouse/duckdb_publish.py", "dashboard/data.py"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def sources():
    for folder in SOURCE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), imported_modules(path)


def test_the_engine_imports_no_warehouse_dbt_prefect_or_pipeline():
    for name, modules in sources():
        if name.startswith("glmm_model/"):
            assert not modules & {"duckdb", "dbt", "prefect", "flows", "dashboard", "pyspark"}, name


def test_only_the_duckdb_warehouse_its_publisher_and_the_dashboard_reader_import_duckdb():
    speakers = {name for name, modules in sources() if "duckdb" in modules}
    assert speakers == DUCKDB_SPEAKERS


def test_only_the_spark_warehouse_imports_pyspark():
    assert {name for name, modules in sources() if "pyspark" in modules} == {"flows/warehouse/spark_warehouse.py"}


def test_importing_the_engine_sets_nothing_up_until_configure_is_called(tmp_path):
    probe = (
        "import json, os, jax, glmm_model\n"
        "before = [jax.config.jax_enable_x64, jax.config.jax_compilation_cache_dir]\n"
        f"path = glmm_model.configure({str(tmp_path / 'cache')!r})\n"
        "print(json.dumps([before, [jax.config.jax_enable_x64, jax.config.jax_compilation_cache_dir,"
        " os.environ['GLMM_AB_JAX_CACHE'] == path]]))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    before, after = json.loads(out.stdout)
    assert before == [False, None]
    assert after == [True, str(tmp_path / "cache"), True]


def test_a_run_row_is_written_in_utc_whatever_the_machine_time_zone(tmp_path):
    from flows.warehouse import RunRecord, open_warehouse
    from flows.warehouse.duckdb_warehouse import connect

    warehouse = open_warehouse(tmp_path / "wh.duckdb")
    warehouse.ensure_result_tables()
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Kolkata"  # UTC+05:30: a local-time clock would be hours off
    time.tzset()
    try:
        utc_before = datetime.now(timezone.utc).replace(tzinfo=None)
        run = RunRecord("tz-run", utc_before, utc_before, "test", {})
        empty = pl.DataFrame(schema={"experiment_id": pl.String, "metric_id": pl.String, "error": pl.String})
        warehouse.write_run(run, {}, empty, None)
        warehouse.record_failed_run(RunRecord("tz-failed", utc_before, utc_before, "test", {}), "boom")
    finally:
        if saved is None:
            os.environ.pop("TZ")
        else:
            os.environ["TZ"] = saved
        time.tzset()
    with connect(tmp_path / "wh.duckdb", read_only=True) as con:
        finished = [row[0] for row in con.execute("SELECT finished_at FROM glmm.runs ORDER BY run_id").fetchall()]
    for value in finished:
        assert abs(value - utc_before) < timedelta(minutes=2), (value, utc_before)
