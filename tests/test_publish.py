"""Publishing for BI: a DuckDB-1.x-readable copy and Parquet files, replaced atomically after each run,
that a reader can hold open through a nightly run; and the dbt docs and exposure over the report models."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest

from flows.dbt import dbt_executable
from flows.resources import dbt_profiles_dir, dbt_project_dir
from flows.warehouse.duckdb_publish import PublishError, default_bi_path, publish
from glmm_model.schema import SCHEMAS
from pipeline_helpers import copy_one_experiment, copy_warehouse, small, sql

OLDEST_DUCKDB = "1.0.0"  # the oldest 1.x a BI tool may bundle


@pytest.fixture(scope="session")
def old_duckdb(tmp_path_factory) -> Path:
    """DuckDB 1.0.0 installed aside (pip --target), for a second process to read our files with."""
    target = tmp_path_factory.mktemp("duckdb-1.0")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                           f"duckdb=={OLDEST_DUCKDB}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"could not install duckdb {OLDEST_DUCKDB} from the package registry: {proc.stderr}"
    return target


def run_python(code: str, env_path: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(env_path)} if env_path else dict(os.environ)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=120, **kwargs)


def test_each_run_publishes_every_result_table_to_the_bi_copy(demo_run):
    path, first, second = demo_run
    bi = default_bi_path(path)
    assert second.publication.bi_path == bi and bi.is_file()
    assert sql(bi, "SELECT run_id FROM bi_publication")["run_id"].to_list() == [second.run_id]
    tables = sql(bi, "SELECT table_schema || '.' || table_name AS t, table_type FROM information_schema.tables")
    assert set(tables["table_type"]) == {"BASE TABLE"}  # no views: they would name the warehouse's catalog
    names = set(tables["t"])
    # the per-user table stays in the warehouse unless asked for (--publish-per-user)
    expected = {f"glmm.{t}" for t in SCHEMAS} | {"glmm.runs", "glmm.fit_failures", "glmm.fit_inputs",
                                                 "main.fct_cv_count_histogram", "main.dq_assignment_conflicts", "main.dq_data_issues",
                                                 "main.rpt_experiment_results_latest", "main.rpt_lift_history",
                                                 "main.rpt_experiment_decisions",
                                                 "main.rpt_experiment_health", "main.bi_publication",
                                                 "main.fct_segment_histogram", "main.rpt_segment_lift_latest"}
    assert names == expected  # raw logs and dbt's staging views stay in the warehouse
    for name, rows in second.publication.rows.items():
        assert sql(path, f"SELECT count(*) AS n FROM {name}")["n"][0] == rows, name
        assert sql(bi, f"SELECT count(*) AS n FROM {name}")["n"][0] == rows, name
    latest = "SELECT * FROM rpt_experiment_results_latest ORDER BY experiment_id, metric_id, variant"
    assert sql(bi, latest).equals(sql(path, latest))
    # Parquet: the same tables, one file each, and a manifest naming the run
    parquet = second.publication.parquet_dir
    manifest = json.loads((parquet / "_publication.json").read_text())
    assert manifest["run_id"] == second.run_id and manifest["rows"] == second.publication.rows
    lift = pl.read_parquet(parquet / "glmm" / "lift.parquet").sort("run_id", "experiment_id", "metric_id", "variant")
    assert lift.equals(sql(path, "SELECT * FROM glmm.lift ORDER BY run_id, experiment_id, metric_id, variant"))
    assert not list(path.parent.glob(".*tmp*"))  # nothing left aside


def test_the_per_user_table_is_published_only_when_asked_and_then_leaves_no_stale_file(demo_run, tmp_path):
    path = copy_warehouse(demo_run[0], tmp_path / "wh")
    bi, parquet = tmp_path / "bi.duckdb", tmp_path / "parquet"
    asked = publish(path, "with-users", bi, parquet, per_user=True)
    users = sql(path, "SELECT count(*) AS n FROM fct_user_cv_counts")["n"][0]
    assert users > 0 and asked.rows["main.fct_user_cv_counts"] == users
    assert sql(bi, "SELECT count(*) AS n FROM fct_user_cv_counts")["n"][0] == users
    assert (parquet / "main" / "fct_user_cv_counts.parquet").is_file()
    plain = publish(path, "without-users", bi, parquet)
    assert "main.fct_user_cv_counts" not in plain.rows
    assert "fct_user_cv_counts" not in set(sql(bi, "SELECT table_name FROM information_schema.tables")["table_name"])
    assert not (parquet / "main" / "fct_user_cv_counts.parquet").exists()  # no stale per-user rows for BI
    assert {p.stem for p in (parquet / "main").glob("*.parquet")} == {
        t.split(".")[1] for t in plain.rows if t.startswith("main.")} | {"bi_publication"}


def test_duckdb_1_0_opens_the_published_copy_and_its_parquet(demo_run, old_duckdb):
    path, _, second = demo_run
    bi = default_bi_path(path)
    proc = run_python(f"""
        import duckdb
        assert duckdb.__version__ == "{OLDEST_DUCKDB}", duckdb.__version__
        con = duckdb.connect({str(bi)!r}, read_only=True)
        print(con.execute("SELECT run_id FROM bi_publication").fetchone()[0])
        print(con.execute("SELECT count(*) FROM rpt_experiment_results_latest").fetchone()[0])
        print(con.execute("SELECT count(*) FROM glmm.posterior_draws").fetchone()[0])
        print(duckdb.sql("SELECT count(*) FROM read_parquet({str(second.publication.parquet_dir / 'main' / 'rpt_lift_history.parquet')!r})").fetchone()[0])
    """, old_duckdb)
    assert proc.returncode == 0, proc.stderr
    run_id, latest, draws, history = proc.stdout.split()
    assert run_id == second.run_id and int(latest) == 16 and int(history) == 32
    assert int(draws) == sql(path, "SELECT count(*) AS n FROM glmm.posterior_draws")["n"][0]


def test_a_reader_holding_the_published_file_never_fails_the_run(demo_run, nightly, tmp_path):
    """A BI client keeps the published file open (a real second process) while a nightly run publishes."""
    path = copy_one_experiment(demo_run[0], tmp_path / "wh")
    bi = tmp_path / "bi" / "results.duckdb"
    before = publish(path, "before", bi_path=bi)
    go = tmp_path / "go"
    reader = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import duckdb, os, time
        con = duckdb.connect({str(bi)!r}, read_only=True)
        print(con.execute("SELECT run_id FROM bi_publication").fetchone()[0], flush=True)
        while not os.path.exists({str(go)!r}):
            time.sleep(0.1)
        print(con.execute("SELECT (SELECT run_id FROM bi_publication), (SELECT count(*) FROM rpt_lift_history)").fetchone(), flush=True)
    """)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "before"  # the reader holds the file open now
        report = nightly(warehouse=str(path), options=small(publish_to=str(bi)))
        assert report.status == "succeeded" and report.publication.bi_path == bi
        go.touch()
        out, err = reader.communicate(timeout=60)
    finally:
        reader.kill()
    assert reader.returncode == 0, err
    assert out.strip() == "('before', 32)"  # its open connection still reads the old file, whole
    assert sql(bi, "SELECT run_id FROM bi_publication")["run_id"][0] == report.run_id  # a new one reads the new
    assert sql(bi, "SELECT count(*) AS n FROM rpt_lift_history")["n"][0] == 32 + 4  # one experiment's 4 rows more
    assert before.rows["main.rpt_lift_history"] == 32


def test_a_failed_publish_leaves_the_results_and_the_old_copy(demo_run, nightly, tmp_path):
    path = copy_one_experiment(demo_run[0], tmp_path / "wh")
    bi = tmp_path / "results.duckdb"
    publish(path, "good", bi_path=bi)
    not_a_folder = tmp_path / "parquet"
    not_a_folder.write_text("a file where the Parquet folder should go")
    with pytest.raises(PublishError, match="BI copy was not published"):
        nightly(warehouse=str(path), options=small(publish_to=str(bi), parquet_dir=str(not_a_folder)))
    runs = sql(path, "SELECT status FROM glmm.runs ORDER BY finished_at DESC")
    assert runs["status"].to_list()[0] == "succeeded" and runs.height == 3  # the results are committed
    assert sql(bi, "SELECT run_id FROM bi_publication")["run_id"][0] == "good"  # the old copy is intact
    assert sql(bi, "SELECT count(*) AS n FROM glmm.runs")["n"][0] == 2
    # the run stays 'succeeded' (its results are good), and says its BI copy was not published
    newest = sql(path, "SELECT run_id FROM glmm.runs ORDER BY finished_at DESC LIMIT 1")["run_id"][0]
    attempts = sql(path, "SELECT status, bi_path, message FROM glmm.publications WHERE run_id = ?", [newest])
    assert set(attempts["status"]) == {"failed"} and attempts["bi_path"][0] == str(bi)
    assert "PublishError" in attempts["message"][0]
    status = subprocess.run([str(Path(sys.executable).with_name("glmm-ab")), "status", "--warehouse", str(path)],
                            capture_output=True, text=True, timeout=120)
    newest_line = next(line for line in status.stdout.splitlines() if line.startswith(newest))
    assert status.returncode == 1 and "NOT published" in newest_line and "BI copy not published" in newest_line
    with pytest.raises(PublishError, match="cannot be the warehouse itself"):
        publish(path, "oops", bi_path=path)


def test_dbt_docs_generate_documents_the_reports_and_the_dashboard_exposure(demo_run, tmp_path):
    path = copy_warehouse(demo_run[0], tmp_path / "wh")
    target = tmp_path / "target"
    proc = subprocess.run(
        [dbt_executable(), "docs", "generate", "--project-dir", str(dbt_project_dir()), "--profiles-dir",
         str(dbt_profiles_dir()), "--target-path", str(target), "--log-path", str(tmp_path / "logs")],
        capture_output=True, text=True, cwd=str(dbt_project_dir()), timeout=300,
        env={**os.environ, "GLMM_AB_WAREHOUSE": str(path), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"},
    )
    assert proc.returncode == 0, proc.stdout[-2000:]
    manifest = json.loads((target / "manifest.json").read_text())
    catalog = json.loads((target / "catalog.json").read_text())
    exposure = manifest["exposures"]["exposure.glmm_ab.glmm_ab_dashboard"]
    assert exposure["type"] == "dashboard"
    reports = ["rpt_experiment_results_latest", "rpt_lift_history", "rpt_experiment_health"]
    assert {f"model.glmm_ab.{m}" for m in reports} <= set(exposure["depends_on"]["nodes"])
    for model in reports:
        node = manifest["nodes"][f"model.glmm_ab.{model}"]
        built = catalog["nodes"][f"model.glmm_ab.{model}"]["columns"]
        assert set(built) == set(node["columns"]), f"{model}: documented and built columns differ"
        assert all(c["description"] for c in node["columns"].values()), f"{model}: a column lacks a description"
