"""The night always ends: a wide experiment fits under the nightly job, a fit past its time limit is
recorded and the others go on, and SIGTERM stops a run within seconds with its failure recorded,
whether it comes while the run fits or while dbt (in the job's process) builds the models."""
import os
import signal
import subprocess
import time
from datetime import datetime, timedelta

import duckdb
import polars as pl

from flows.options import RunOptions
from flows.warehouse import open_warehouse
from pipeline_helpers import EXE, sql, without_configured_api

CLI_ENV = {**os.environ, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
T0 = datetime(2026, 10, 1)
AS_OF = "2026-10-20T00:00:00"


def wide_warehouse(path, wide_arms: int = 70):
    """'ab': 2 arms x 40 users; 'wide': ``wide_arms`` arms x 3 users (a 71-dimensional mass matrix at 70,
    past the size at which two chain groups used to deadlock); one metric."""
    assignments, events = [], []
    for experiment, arms, users in (("ab", 2, 40), ("wide", wide_arms, 3)):
        for a in range(arms):
            for u in range(users):
                user = f"{experiment}-{a}-{u}"
                assignments.append((experiment, user, f"v{a:03d}", T0 + timedelta(hours=u)))
                for k in range((a + u) % 4):
                    events.append((f"{user}-{k}", user, "purchase", T0 + timedelta(days=1, hours=k)))
    open_warehouse(path).load_raw({
        "experiments": pl.DataFrame([("ab", "v000", T0 - timedelta(days=1), None), ("wide", "v000", T0 - timedelta(days=1), None)],
                                    orient="row", schema={"experiment_id": pl.String, "control_variant": pl.String,
                                                          "start_at": pl.Datetime("us"), "end_at": pl.Datetime("us")}),
        "metrics": pl.DataFrame({"metric_id": ["purchases"], "event_name": ["purchase"]}),
        "assignments": pl.DataFrame(assignments, orient="row", schema=["experiment_id", "user_id", "variant", "assigned_at"]),
        "events": pl.DataFrame(events, orient="row", schema=["event_id", "user_id", "event_name", "event_at"]),
    })
    return path


def sigterm_run(tmp_path, path, args: list[str], after: str, wait: float, env=CLI_ENV) -> tuple[int, float, str]:
    """``glmm-ab run`` on ``path``, sent SIGTERM ``wait`` s after its log shows ``after``: its exit code,
    the seconds it took to stop, and its log."""
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([EXE, "run", "--warehouse", str(path), "--as-of", AS_OF, "--no-publish", *args],
                                stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 600
        while after not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(wait)
        assert proc.poll() is None, log.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        code = proc.wait(timeout=120)
        took = time.monotonic() - stopped_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    return code, took, log.read_text()


def test_a_wide_experiment_fits_under_the_nightly_job_and_a_slow_fit_stops_at_its_limit(nightly, tmp_path):
    path = wide_warehouse(tmp_path / "wide.duckdb")
    as_of = datetime.fromisoformat(AS_OF)
    # 4 chains: two chain groups at once, which used to hang the night at 0% CPU
    done = nightly(warehouse=str(path), as_of=as_of, options=RunOptions(
        num_chains=4, num_warmup=20, num_samples=20, refits=0, publish_results=False))
    assert done.status == "succeeded" and done.failures.height == 0, done.failures
    lift = sql(path, "SELECT experiment_id, count(*) AS n FROM glmm.lift GROUP BY ALL ORDER BY ALL")
    assert lift.rows() == [("ab", 1), ("wide", 69)]

    # the same compiled program (neither warmup nor the number of draws is part of it), 100x the draws
    limited = nightly(warehouse=str(path), as_of=as_of, options=RunOptions(
        num_chains=4, num_warmup=20, num_samples=2000, fit_timeout=20, refits=0, publish_results=False))
    assert limited.status == "succeeded"
    failures = sql(path, "SELECT experiment_id, error FROM glmm.fit_failures WHERE run_id = ?", [limited.run_id])
    assert failures["experiment_id"].to_list() == ["wide"]
    assert "FitTimeout: sampling did not finish within its time limit of 20 s (70 variants" in failures["error"][0]
    fitted = sql(path, "SELECT DISTINCT experiment_id FROM glmm.lift WHERE run_id = ?", [limited.run_id])
    assert fitted["experiment_id"].to_list() == ["ab"]  # the night went on


def test_sigterm_stops_a_run_while_it_fits_and_records_why(tmp_path):
    path = wide_warehouse(tmp_path / "stop.duckdb", wide_arms=30)
    # long sampling and no time limit: only the signal can end it early
    code, took, output = sigterm_run(tmp_path, path, ["--chains", "4", "--warmup", "5000", "--samples", "50000",
                                                      "--fit-timeout", "0"], "dbt built the pipeline models", 8,
                                   env=without_configured_api(CLI_ENV))  # its own temporary API goes down with it
    assert code == 128 + signal.SIGTERM, output[-3000:]
    assert took < 60, f"took {took:.0f} s to stop"
    assert "stopped by SIGTERM" in output
    runs = sql(path, "SELECT run_id, status, message FROM glmm.runs")
    assert runs["status"].to_list() == ["failed"]
    assert runs["message"][0] == "while fitting: RunStopped: stopped by SIGTERM"
    for table in ("lift", "diagnostics", "fit_failures"):  # nothing of the stopped run
        assert sql(path, f"SELECT count(*) AS n FROM glmm.{table}")["n"][0] == 0
    status = subprocess.run([EXE, "status", "--warehouse", str(path)], capture_output=True, text=True, timeout=120)
    assert status.returncode == 1 and "stopped by SIGTERM" in status.stdout  # the run lock is free again


def test_sigterm_while_dbt_builds_cancels_its_queries_and_records_why(tmp_path):
    """dbt runs in the job's process: a stop cancels its queries (the build would take ~15 s more here)."""
    path = tmp_path / "big.duckdb"
    with duckdb.connect(str(path)) as con:  # 2 experiments x 1,000,000 users, ~4M events
        con.execute("""
            CREATE SCHEMA raw;
            CREATE TABLE raw.experiments AS SELECT 'e' || i AS experiment_id, 'control' AS control_variant,
                TIMESTAMP '2026-10-01' AS start_at, CAST(NULL AS TIMESTAMP) AS end_at FROM range(2) t(i);
            CREATE TABLE raw.metrics AS SELECT 'purchases' AS metric_id, 'purchase' AS event_name;
            CREATE TABLE raw.assignments AS SELECT 'e' || e AS experiment_id, 'u' || e || '_' || u AS user_id,
                CASE WHEN u % 2 = 0 THEN 'control' ELSE 'treatment' END AS variant,
                TIMESTAMP '2026-10-01' + to_seconds(u % 86400) AS assigned_at FROM range(2) a(e), range(1000000) b(u);
            CREATE TABLE raw.events AS SELECT 'ev' || row_number() OVER () AS event_id, user_id,
                'purchase' AS event_name, assigned_at + to_seconds(3600 * (k + 1)) AS event_at
                FROM raw.assignments, range(2) c(k);
        """)
    # the run holds the warehouse once it logs its as-of, and dbt comes next: 6 s later dbt is building
    code, took, output = sigterm_run(tmp_path, path, [], "as of 2026-10-20", 6)
    assert code == 128 + signal.SIGTERM, output[-3000:]
    assert "dbt built the pipeline models" not in output  # the signal came while dbt ran
    # dbt's queries were cancelled (DuckDB's INTERRUPT), not run to their end
    assert "INTERRUPT" in output, output[-3000:]
    # The build had ~15 s left on an idle machine. On 2026-12-01 this test's stop took 11-17 s in 4 of 8
    # runs here (the other 4 under 10 s), and 29 s once in CI with both workers and other jobs busy
    # (dbt's INTERRUPT came 24 s after the signal): the stop waits for DuckDB to take the cancel
    # inside its running query. Not understood yet; the bound only catches a stop that hangs.
    assert took < 60, f"took {took:.0f} s to stop"
    runs = sql(path, "SELECT status, message FROM glmm.runs")
    assert runs.rows() == [("failed", "before fitting: RunStopped: stopped by SIGTERM")]
    assert sql(path, "SELECT count(*) AS n FROM raw.events")["n"][0] == 4_000_000  # the raw logs untouched
