"""The nightly job on Apache Spark (local mode): the same histograms and, to the bit, the same lift as on
DuckDB from the same raw logs; results committed by the glmm.runs row, so a run killed between two
tables leaves nothing visible and a retried write does not double rows.

Needs the spark extra (pyspark, dbt-spark; part of the test extra) and a JDK, which the test setup
installs with apt-get when the machine lacks it. Without the extra the module is skipped, which is
reported, not counted as a pass.
"""
import json
import os
import subprocess
import sys
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from pipeline_helpers import EXE, SMALL_FLOW, debian_package, expected_decision, keep_one_experiment, make_demo, small, sql

pytest.importorskip("pyspark", reason="the spark extra is not installed (pip install -e '.[spark]')")
pytest.importorskip("dbt.adapters.spark", reason="the spark extra is not installed (pip install -e '.[spark]')")

PROBE = Path(__file__).with_name("spark_write_probe.py")
SMALL_ARGS = ["--chains", str(SMALL_FLOW["num_chains"]), "--warmup", str(SMALL_FLOW["num_warmup"]),
              "--samples", str(SMALL_FLOW["num_samples"])]


def cli(*args, timeout=1200):
    result = subprocess.run([EXE, *args], capture_output=True, text=True, timeout=timeout)
    return result


@pytest.fixture(scope="module")
def java() -> str:
    """Spark needs a JDK: Debian's, installed with apt-get by the test setup when the machine lacks it."""
    return debian_package("java", "openjdk-17-jre-headless")


@pytest.fixture(scope="module")
def spark_run(java, nightly, tmp_path_factory):
    """The demo's raw logs of its checkout button (pre-period counts, platforms, a guardrail: every
    model the night builds) landed in a Spark warehouse by load-raw, and one nightly run on each engine
    for the same as-of and seed (the DuckDB one in this process, the Spark one through the CLI). One
    experiment, not the demo's three: Spark's cost is per query, not per row, and the fits are the
    same code on both engines. The demo's raw logs alone (not the session's demo_run): this file then
    needs no worker's demo warehouse and runs beside the files that do."""
    folder = tmp_path_factory.mktemp("spark")
    (folder / "duckdb").mkdir()
    duck = keep_one_experiment(make_demo(folder / "duckdb" / "demo.duckdb"), "checkout_button")
    spark_dir = folder / "spark"
    loaded = cli("load-raw", str(duck), "--engine", "spark", "--warehouse", str(spark_dir))
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    as_of = datetime.combine(date.today() - timedelta(days=2), datetime.min.time())
    duck_report = nightly(warehouse=str(duck), as_of=as_of, options=small(publish_results=False, segments=True))
    bi = folder / "spark_bi.duckdb"
    run = cli("run", "--engine", "spark", "--warehouse", str(spark_dir), "--as-of", as_of.isoformat(),
              "--publish-to", str(bi), *SMALL_ARGS)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return duck, duck_report, spark_dir, bi, loaded.stdout + run.stdout


def test_the_nightly_job_on_spark_gives_duckdbs_histograms_and_lift(spark_run):
    duck, duck_report, spark_dir, bi, output = spark_run
    assert "raw.events" in output and "succeeded" in output
    assert duck_report.status == "succeeded" and duck_report.failures.height == 0
    order = "ORDER BY experiment_id, metric_id, variant, cv_count, exposure_days_cell, denominator_count, pre_cv_count"
    histogram = f"SELECT * FROM main.fct_cv_count_histogram {order}"
    on_duckdb, on_spark = sql(duck, histogram), sql(bi, histogram)
    assert on_duckdb.height > 0 and on_duckdb.equals(on_spark)
    lift = "SELECT * EXCLUDE (run_id) FROM glmm.lift ORDER BY experiment_id, metric_id, variant"
    duck_lift = sql(duck, lift.replace("FROM glmm.lift", "FROM glmm.lift WHERE run_id = ?"), [duck_report.run_id])
    spark_lift = sql(bi, lift)
    assert duck_lift.height == 4 and duck_lift.equals(spark_lift.select(duck_lift.columns))  # 4 metrics
    # the segment breakdown (raw.user_segments through Spark's int_user_segments and fct_segment_histogram)
    segments = "SELECT * EXCLUDE (run_id) FROM glmm.segment_lift {} ORDER BY experiment_id, metric_id, dimension, segment"
    duck_segments = sql(duck, segments.format("WHERE run_id = ?"), [duck_report.run_id])
    assert duck_segments.height == 4 and duck_segments.equals(sql(bi, segments.format("")).select(duck_segments.columns))
    # the experiment-level decisions, built on Spark (listagg, concat and datediff in its dialect), follow the rule
    latest = sql(bi, "SELECT * FROM main.rpt_experiment_results_latest")
    decisions = sql(bi, "SELECT * FROM main.rpt_experiment_decisions ORDER BY experiment_id, variant")
    assert decisions.height == 1
    for d in decisions.iter_rows(named=True):
        assert d["decision"] == expected_decision(latest, d["experiment_id"], d["variant"])[0], d
        assert d["decision_reason"] and (d["guardrails_failing"] is None) == (d["guardrail_status"] == "ok"), d
    # the report models ran on Spark too, and the BI copy names the Spark warehouse
    latest = sql(bi, "SELECT count(*) AS n FROM main.rpt_experiment_results_latest")
    assert latest["n"][0] == 4
    assert sql(bi, "SELECT source_warehouse FROM main.bi_publication")["source_warehouse"][0] == f"spark:{spark_dir}"
    stages = sql(bi, "SELECT stage_seconds FROM glmm.runs")["stage_seconds"]  # where the Spark night went
    assert stages.len() == 1 and list(json.loads(stages[0])) == ["dbt", "load", "fit"]
    # the stages after the commit: in glmm.publications, which stays in the warehouse (its Parquet files)
    after = sql(bi, f"SELECT stage_seconds FROM read_parquet('{spark_dir}/tables/glmm.db/publications/*.parquet')")
    assert after.height == 1 and list(json.loads(after["stage_seconds"][0])) == ["write", "reports", "publish"]


def test_status_reads_spark_a_killed_write_leaves_nothing_and_a_retry_does_not_double_rows(spark_run):
    _, _, spark_dir, _, _ = spark_run
    probe = subprocess.run([sys.executable, str(PROBE), str(spark_dir)], capture_output=True, text=True,
                           timeout=900, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    assert probe.returncode == 0, probe.stdout[-3000:] + probe.stderr[-3000:]
    status = probe.stdout.split("killed:")[0]  # glmm-ab status, before the probe's own writes
    assert "succeeded" in status and "checkout_button" in status, status
    assert "killed: lift written, no runs row, invisible to reports and BI" in probe.stdout
    assert "orphans dropped" in probe.stdout
    assert "retry: same rows once" in probe.stdout


def test_an_unknown_engine_or_a_mismatched_prefix_is_refused(tmp_path):
    bad = cli("status", "--engine", "spark", "--warehouse", f"duckdb:{tmp_path / 'x.duckdb'}", timeout=60)
    assert bad.returncode == 2 and "--engine spark does not match" in bad.stderr
    missing = cli("load-raw", str(tmp_path / "nowhere"), "--engine", "spark", "--warehouse", str(tmp_path / "s"),
                  timeout=60)
    assert missing.returncode == 2 and "raw source not found" in missing.stderr


def test_a_second_spark_night_on_the_same_rows_reuses_every_fit(spark_run, tmp_path):
    """Run last: it adds a run to the Spark warehouse the tests above read."""
    _, _, spark_dir, bi, _ = spark_run
    first = sql(bi, "SELECT * FROM glmm.fit_inputs ORDER BY experiment_id, metric_id")
    assert first.height == 4 and (first["fitted_in_run_id"] == first["run_id"]).all()
    again = tmp_path / "again_bi.duckdb"
    as_of = sql(bi, "SELECT as_of FROM glmm.runs")["as_of"][0]
    run = cli("run", "--engine", "spark", "--warehouse", str(spark_dir), "--as-of", as_of.isoformat(),
              "--publish-to", str(again), *SMALL_ARGS)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    second_id = sql(again, "SELECT run_id FROM glmm.runs ORDER BY finished_at DESC LIMIT 1")["run_id"][0]
    second = sql(again, "SELECT * FROM glmm.fit_inputs WHERE run_id = ? ORDER BY experiment_id, metric_id", [second_id])
    assert second.drop("run_id").equals(first.drop("run_id"))  # the same digests, sampled by the first run
    lift = "SELECT * EXCLUDE (run_id) FROM glmm.lift WHERE run_id = ? ORDER BY experiment_id, metric_id, variant"
    assert sql(again, lift, [second_id]).equals(sql(bi, lift, [first["run_id"][0]]))
