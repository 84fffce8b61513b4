"""Used by test_spark.py: reads and writes a Spark warehouse that holds one succeeded run.

    python spark_write_probe.py SPARK_DIR          # `glmm-ab status` on it, then the checks, printing a
                                                   # line for each that holds
    python spark_write_probe.py SPARK_DIR --kill   # (child) write a run and die by SIGKILL after its first table

Only one process may hold a local Spark metastore, so the killed writer runs (and dies) before
this process starts Spark; the status command runs in this process.
"""
import os
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import polars as pl

from flows.dbt import REPORTS_SELECTOR, run_dbt
from flows.warehouse import RunRecord
from flows.warehouse.spark_warehouse import SparkWarehouse


def results_of_last_run(wh: SparkWarehouse) -> tuple[str, dict[str, pl.DataFrame]]:
    run_id = wh.query("SELECT run_id FROM glmm.runs WHERE status = 'succeeded' ORDER BY finished_at DESC")["run_id"][0]
    tables = {t: wh.query(f"SELECT * FROM glmm.{t} WHERE run_id = '{run_id}'").drop("run_id")
              for t in ("lift", "posterior_summary")}
    return run_id, tables


def record(run_id: str) -> RunRecord:
    now = datetime(2026, 1, 1)
    return RunRecord(run_id=run_id, as_of=now, started_at=now, package_version="probe", config={})


def killed_writer(wh: SparkWarehouse) -> None:
    _, tables = results_of_last_run(wh)
    calls = []
    insert = SparkWarehouse._insert

    def insert_then_die(self, *args, **kwargs):
        if calls:  # the second table: the process dies before writing it
            os.kill(os.getpid(), signal.SIGKILL)
        calls.append(args[0])
        insert(self, *args, **kwargs)

    SparkWarehouse._insert = insert_then_die
    wh.write_run(record("killed-run"), tables, pl.DataFrame(), None)


def main() -> None:
    wh = SparkWarehouse(Path(sys.argv[1]).absolute())
    if "--kill" in sys.argv:
        killed_writer(wh)
        return
    child = subprocess.run([sys.executable, __file__, sys.argv[1], "--kill"], capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, (child.returncode, child.stderr[-2000:])

    from flows.cli import main as glmm_ab  # the status command, in this process: one Spark start, not two

    assert glmm_ab(["status", "--engine", "spark", "--warehouse", sys.argv[1]]) == 0
    lift_runs = lambda: set(wh.query("SELECT DISTINCT run_id FROM glmm.lift")["run_id"].to_list())  # noqa: E731
    assert "killed-run" in lift_runs(), "the killed writer did not get to its first table"
    assert wh.query("SELECT count(*) AS n FROM glmm.runs WHERE run_id = 'killed-run'")["n"][0] == 0
    run_dbt("build", wh, REPORTS_SELECTOR)
    in_reports = wh.query("SELECT count(*) AS n FROM main.rpt_lift_history WHERE run_id = 'killed-run'")["n"][0]
    bi = Path(sys.argv[1]).with_name("probe_bi.duckdb")
    wh.publish("probe", bi, bi.with_name("probe_bi_parquet"))
    import duckdb

    with duckdb.connect(str(bi), read_only=True) as con:
        in_bi = con.execute("SELECT count(*) FROM glmm.lift WHERE run_id = 'killed-run'").fetchone()[0]
    assert in_reports == 0 and in_bi == 0, (in_reports, in_bi)
    print("killed: lift written, no runs row, invisible to reports and BI")

    wh.ensure_result_tables()  # the next run's start: the orphaned partition goes
    assert "killed-run" not in lift_runs()
    print("orphans dropped")

    _, tables = results_of_last_run(wh)
    for _ in range(2):  # a write retried after it had completed
        wh.write_run(record("retry-run"), tables, pl.DataFrame(), None)
    n = wh.query("SELECT count(*) AS n FROM glmm.lift WHERE run_id = 'retry-run'")["n"][0]
    runs = wh.query("SELECT count(*) AS n FROM glmm.runs WHERE run_id = 'retry-run'")["n"][0]
    assert n == tables["lift"].height and runs == 1, (n, tables["lift"].height, runs)
    print("retry: same rows once")


if __name__ == "__main__":
    main()
