"""Operations: idempotent reruns, backfill, status, a locked warehouse, and the served cron deployment
on a real `prefect server start`."""
import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from datetime import date, datetime, timedelta

import pytest

from flows.warehouse import duckdb_warehouse as wh
from flows.warehouse import open_warehouse
from glmm_model.schema import SCHEMAS
from pipeline_helpers import (EXE, ONE_EXPERIMENT, small, copy_one_experiment, copy_warehouse, free_port, sql,
                              without_configured_api)

SMALL_ARGS = ["--chains", "2", "--warmup", "200", "--samples", "300", "--no-segments"]  # breakdowns: test_pipeline
CLI_ENV = {**os.environ, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}


def hold_lock(path, seconds: float) -> subprocess.Popen:
    """A second process holding the warehouse's write lock for ``seconds``; returns once it holds it."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import duckdb, time
        con = duckdb.connect({str(path)!r})
        print("holding", flush=True)
        time.sleep({seconds})
        con.close()
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    return holder


def test_a_rerun_of_an_old_night_gives_the_same_answer_once_and_latest_stays_newest(demo_run, nightly, tmp_path):
    path = copy_one_experiment(demo_run[0], tmp_path)
    as_of = datetime.combine(date.today() - timedelta(days=2), datetime.min.time())
    first = nightly(warehouse=str(path), as_of=as_of, options=small(publish_results=False))
    again = nightly(warehouse=str(path), as_of=as_of, options=small(publish_results=False))
    lift = "SELECT * EXCLUDE (run_id) FROM glmm.lift WHERE run_id = ? ORDER BY experiment_id, metric_id, variant"
    assert sql(path, lift, [first.run_id]).equals(sql(path, lift, [again.run_id]))  # fixed seeds: same numbers
    breakdowns = "SELECT count(*) AS n FROM glmm.segment_lift WHERE run_id = ?"  # small(): segments=False
    assert sql(path, breakdowns, [first.run_id])["n"][0] == 0 and sql(path, breakdowns, [newest := demo_run[2].run_id])["n"][0] > 0
    history = sql(path, "SELECT run_id FROM rpt_lift_history WHERE as_of = ?", [as_of])
    assert history.height == 4 and set(history["run_id"]) == {again.run_id}  # one answer for that night (4 metrics)
    # the old night finished last, but the latest answer stays at the newest as-of (the demo's second run)
    latest = sql(path, "SELECT DISTINCT run_id FROM rpt_experiment_results_latest")
    assert latest["run_id"].to_list() == [newest]
    health = sql(path, "SELECT DISTINCT run_id FROM rpt_experiment_health")
    assert health["run_id"].to_list() == [newest]


def test_backfill_runs_each_date_in_order_and_status_lists_them(demo_run, tmp_path):
    path = copy_one_experiment(demo_run[0], tmp_path)
    d1 = date.today() - timedelta(days=3)
    d2 = d1 + timedelta(days=1)
    proc = subprocess.run([EXE, "backfill", "--warehouse", str(path), "--from", str(d1), "--to", str(d2),
                           "--no-publish", *SMALL_ARGS], capture_output=True, text=True, env=CLI_ENV, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 of 2 runs succeeded" in proc.stdout
    logs = proc.stdout + proc.stderr
    runs = sql(path, "SELECT run_id, as_of, status FROM glmm.runs ORDER BY finished_at DESC LIMIT 2")
    assert runs["as_of"].to_list() == [datetime.combine(d2, datetime.min.time()), datetime.combine(d1, datetime.min.time())]
    assert runs["status"].to_list() == ["succeeded", "succeeded"]
    for run_id in runs["run_id"]:  # the logs carry the run id
        assert f"run {run_id}: dbt built the pipeline models" in logs and f"run {run_id} succeeded" in logs
    # backfilled nights are history, not the latest answer: that stays at the newest as-of
    latest = sql(path, "SELECT DISTINCT run_id FROM rpt_experiment_results_latest")
    assert latest["run_id"].to_list() == [demo_run[2].run_id]
    status = subprocess.run([EXE, "status", "--warehouse", str(path), "--limit", "3"], capture_output=True, text=True)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert runs["run_id"][0] in lines[2] and runs["run_id"][1] in lines[3]  # newest first
    assert "Health of the latest results" in status.stdout and "checkout_button" in status.stdout
    bad = subprocess.run([EXE, "backfill", "--warehouse", str(path), "--from", str(d2), "--to", str(d1)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "is before --from" in bad.stderr


def test_a_locked_warehouse_is_retried_with_backoff_then_fails_clearly(demo_run, tmp_path):
    path = copy_warehouse(demo_run[0], tmp_path)
    holder = hold_lock(path, 3)
    started = time.monotonic()
    with wh.connect(path, lock_wait=60) as con:  # waits for the holder to let go
        assert con.execute("SELECT count(*) FROM glmm.runs").fetchone()[0] == 2
    assert time.monotonic() - started > 1.0
    holder.wait(timeout=30)

    holder = hold_lock(path, 120)
    try:
        with pytest.raises(wh.WarehouseError, match="locked by another process; gave up after 1 s"):
            with wh.connect(path, lock_wait=1):
                pass
        proc = subprocess.run([EXE, "run", "--warehouse", str(path), "--no-publish", *SMALL_ARGS],
                              capture_output=True, text=True, env={**CLI_ENV, "GLMM_AB_LOCK_TIMEOUT": "2"}, timeout=600)
        assert proc.returncode == 1 and "locked by another process" in proc.stderr, proc.stderr[-2000:]
        status = subprocess.run([EXE, "status", "--warehouse", str(path)], capture_output=True, text=True, timeout=120)
        assert status.returncode == 1 and "locked" in status.stderr
    finally:
        holder.kill()
        holder.wait(timeout=30)  # the lock goes with the process, not with the kill signal
    # nothing was lost, and the next run goes through
    assert sql(path, "SELECT count(*) AS n FROM glmm.runs WHERE status = 'succeeded'")["n"][0] == 2


def test_only_a_lock_error_counts_as_a_busy_warehouse(tmp_path):
    warehouse = open_warehouse(tmp_path / "w.duckdb")
    assert warehouse.is_busy(RuntimeError('IO Error: Could not set lock on file "w.duckdb": Conflicting lock is held'))
    # a dbt compilation error is not retried as if another run held the file
    assert not warehouse.is_busy(RuntimeError("This typically happens when ref() is placed within a conditional block."))


def wait_for(check, timeout: float, what: str, *processes):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in processes:
            assert p.poll() is None, f"{p.args[:3]} exited while waiting for {what}: {p.stdout.read()[-3000:]}"
        result = check()
        if result:
            return result
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


CLIENT_SCRIPT = """
import asyncio, json, sys
from prefect.client.orchestration import get_client

async def main(action, arg):
    async with get_client() as client:
        if action == "deployment":
            d = await client.read_deployment_by_name("glmm-ab-nightly/nightly")
            print(json.dumps({"id": str(d.id), "schedules": [{"cron": s.schedule.cron, "timezone": s.schedule.timezone}
                                                             for s in d.schedules]}))
        elif action == "trigger":
            run = await client.create_flow_run_from_deployment(arg)
            print(json.dumps({"id": str(run.id)}))
        else:
            run = await client.read_flow_run(arg)
            print(json.dumps({"state": run.state.type.value if run.state else None}))

asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
"""


def test_served_deployment_runs_when_triggered_through_the_api(demo_run, tmp_path):
    """A real `prefect server start` on loopback; `glmm-ab serve` registers the cron deployment; a run
    triggered through the API completes and leaves its results in the warehouse."""
    path = copy_one_experiment(demo_run[0], tmp_path / "wh")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**CLI_ENV, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false"}
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    serve = None
    try:
        def healthy():
            try:
                return urllib.request.urlopen(f"{api}/health", timeout=2).status == 200
            except OSError:
                return False
        wait_for(healthy, 180, "the Prefect server", server)
        serve = subprocess.Popen([EXE, "serve", "--warehouse", str(path), "--timezone", "Europe/Berlin",
                                  "--no-publish", *SMALL_ARGS],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)

        def client(*args):
            proc = subprocess.run([sys.executable, "-c", CLIENT_SCRIPT, *args], capture_output=True, text=True,
                                  env=env, timeout=120)
            return json.loads(proc.stdout) if proc.returncode == 0 else None

        deployment = wait_for(lambda: client("deployment"), 180, "the deployment to be registered", server, serve)
        assert deployment["schedules"] == [{"cron": "0 3 * * *", "timezone": "Europe/Berlin"}]
        run_id = client("trigger", deployment["id"])["id"]
        state = wait_for(lambda: (s := client("state", run_id)) and s["state"] in ("COMPLETED", "FAILED", "CRASHED")
                         and s["state"], 600, "the triggered flow run to finish", server, serve)
        if state != "COMPLETED":
            serve.terminate()
            raise AssertionError(f"flow run {state}: {serve.communicate(timeout=30)[0][-4000:]}")
    finally:
        for p in (serve, server):
            if p is not None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
    runs = sql(path, "SELECT status FROM glmm.runs ORDER BY finished_at DESC")
    assert runs.height == 3 and runs["status"][0] == "succeeded"


SLOW_WRITE = """
import sys
from datetime import datetime
import polars as pl
from flows.warehouse import duckdb_warehouse as wh
from flows.warehouse import open_warehouse
from flows.warehouse import RunRecord
from glmm_model.schema import SCHEMAS

def table(name, rows):  # a result table of `rows` rows in the engine's schema
    cols = {"experiment_id": pl.Series(["x"] * rows), "metric_id": pl.Series(["m"] * rows)}
    for column, dtype in SCHEMAS[name].items():
        cols[column] = pl.repeat("v" if dtype == pl.String else 1, rows, eager=True).cast(dtype)
    return pl.DataFrame(cols)

results = {name: table(name, 4_000_000 if name == "user_estimates" else 1) for name in SCHEMAS}
failures = pl.DataFrame(schema={"experiment_id": pl.String, "metric_id": pl.String, "error": pl.String})
with wh.connect(sys.argv[1]) as con:
    print("writing", flush=True)
    wh.write_run(con, RunRecord("killed-run", datetime.now(), datetime.now(), "test", {}), results, failures, None)
    print("committed", flush=True)
"""


def snapshot(path, bi):
    """What a BI user sees: the latest results and the published copy."""
    latest = "SELECT * FROM rpt_experiment_results_latest ORDER BY experiment_id, metric_id, variant"
    return sql(path, latest), sql(bi, latest), sql(path, "SELECT run_id, status FROM glmm.runs ORDER BY run_id")


def test_sigkill_during_the_fit_or_the_write_loses_nothing_and_the_next_run_succeeds(demo_run, nightly, tmp_path):
    path = copy_one_experiment(demo_run[0], tmp_path / "wh")
    bi = copy_warehouse(demo_run[0].with_name("demo_bi.duckdb"), tmp_path / "wh")
    before = snapshot(path, bi)

    # 1. killed while fitting: a real `glmm-ab run`, SIGKILLed (with dbt and all) once fitting has begun
    run = subprocess.Popen([EXE, "run", "--warehouse", str(path), "--chains", "4", "--warmup", "3000",
                            "--samples", "30000"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env=CLI_ENV, start_new_session=True)
    try:
        for line in run.stdout:
            if "dbt built the pipeline models" in line:
                break
        else:
            raise AssertionError("the run ended before fitting")
        time.sleep(3)
        assert run.poll() is None, "the run finished before it could be killed"
    finally:
        os.killpg(run.pid, 9)
        run.wait(timeout=30)
    after = snapshot(path, bi)
    for a, b in zip(before, after):
        assert a.equals(b)  # nothing of the killed run, everything of the earlier ones

    # 2. killed inside the write transaction (4 million rows take seconds to insert)
    writer = subprocess.Popen([sys.executable, "-c", SLOW_WRITE, str(path)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    time.sleep(1.0)
    writer.kill()
    rest = writer.communicate(timeout=30)[0]
    assert "committed" not in rest, "the write finished before the kill: make it slower"
    for table in list(SCHEMAS) + ["runs", "fit_failures"]:
        n = sql(path, f"SELECT count(*) AS n FROM glmm.{table} WHERE run_id = 'killed-run'")["n"][0]
        assert n == 0, f"glmm.{table} kept {n} rows of the killed write"
    for a, b in zip(before, snapshot(path, bi)):
        assert a.equals(b)

    # 3. the next run goes through and becomes the latest answer
    report = nightly(warehouse=str(path), options=small())
    assert report.status == "succeeded"
    fitted = "SELECT DISTINCT run_id FROM rpt_experiment_results_latest WHERE experiment_id = ?"  # the one fitted
    assert sql(bi, fitted, [ONE_EXPERIMENT])["run_id"].to_list() == [report.run_id]


def test_two_runs_at_once_with_one_prefect_home_take_turns(demo_run, tmp_path):
    """Started together on one warehouse and one PREFECT_HOME: both end by themselves, one after the other."""
    path = copy_one_experiment(demo_run[0], tmp_path / "wh")
    # no API configured: each run starts its own temporary server on the one home's database
    env = without_configured_api({**CLI_ENV, "PREFECT_HOME": str(tmp_path / "one-prefect-home")})
    command = [EXE, "run", "--warehouse", str(path), "--no-publish", *SMALL_ARGS]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
            for _ in range(2)]
    outputs = [p.communicate(timeout=900)[0] for p in runs]
    assert [p.returncode for p in runs] == [0, 0], "\n\n".join(o[-3000:] for o in outputs)
    newest = sql(path, "SELECT run_id, status, started_at, finished_at FROM glmm.runs ORDER BY started_at DESC LIMIT 2")
    assert newest["status"].to_list() == ["succeeded", "succeeded"]
    later, earlier = newest.row(0, named=True), newest.row(1, named=True)
    assert later["started_at"] >= earlier["finished_at"]  # the second waited for the first


def test_a_run_that_cannot_wait_longer_says_another_run_holds_the_warehouse(demo_run, tmp_path):
    path = copy_one_experiment(demo_run[0], tmp_path / "wh")
    lock = path.with_name(f".{path.name}.run-lock")
    first = subprocess.Popen([EXE, "run", "--warehouse", str(path), "--no-publish", *SMALL_ARGS],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=CLI_ENV)
    try:
        wait_for(lambda: lock.exists() and f"pid {first.pid}," in lock.read_text(), 120, "the first run's lock", first)
        second = subprocess.run([EXE, "run", "--warehouse", str(path), "--no-publish", *SMALL_ARGS], capture_output=True,
                                text=True, env={**CLI_ENV, "GLMM_AB_RUN_LOCK_TIMEOUT": "2"}, timeout=300)
        assert second.returncode == 1
        assert "another run holds this warehouse" in second.stderr and f"pid {first.pid}" in second.stderr, second.stderr
        output = first.communicate(timeout=900)[0]
        assert first.returncode == 0, output[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=30)
    assert sql(path, "SELECT count(*) AS n FROM glmm.runs WHERE status = 'failed'")["n"][0] == 0


def test_a_run_whose_prefect_api_cannot_start_is_recorded_as_failed(demo_run, tmp_path):
    path = copy_warehouse(demo_run[0], tmp_path / "wh")
    unreachable = {**CLI_ENV, "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api"}  # nothing listens there
    proc = subprocess.run([EXE, "run", "--warehouse", str(path), "--no-publish", *SMALL_ARGS], capture_output=True,
                          text=True, env=unreachable, timeout=300)
    assert proc.returncode == 1 and "run failed" in proc.stderr
    newest = sql(path, "SELECT status, message FROM glmm.runs ORDER BY finished_at DESC, run_id DESC LIMIT 1").row(0, named=True)
    assert newest["status"] == "failed" and newest["message"].startswith("the run did not start:")
    status = subprocess.run([EXE, "status", "--warehouse", str(path)], capture_output=True, text=True, timeout=120)
    assert status.returncode == 1 and "the run did not start" in status.stdout
