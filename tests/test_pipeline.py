"""The warehouse pipeline end to end, on real components: a DuckDB file, dbt, the Prefect flow."""
import json
import os
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest

from flows.warehouse import duckdb_warehouse as wh
from glmm_model.schema import SCHEMAS

from pipeline_helpers import EXE, small, copy_warehouse, expected_decision, sql  # noqa: E402


def test_demo_run_writes_every_result_table_with_its_types(demo_run):
    path, first, _ = demo_run
    assert first.status == "succeeded" and first.failures.height == 0
    pairs = sql(path, "SELECT DISTINCT experiment_id, metric_id FROM glmm.lift WHERE run_id = ?", [first.run_id])
    assert pairs.height == 12  # 3 experiments x 4 metrics
    lift = sql(path, "SELECT * FROM glmm.lift WHERE run_id = ?", [first.run_id])
    assert lift.height == 16  # one row per treatment arm: 1 + 2 + 1 arms, for 4 metrics
    assert set(lift["decision"]) <= {"ship", "keep_control", "inconclusive", "invalid"}
    for table, schema in SCHEMAS.items():
        types = dict(sql(path, "SELECT column_name, data_type FROM information_schema.columns "
                                "WHERE table_schema = 'glmm' AND table_name = ?", [table]).iter_rows())
        assert list(types)[:3] == ["run_id", "experiment_id", "metric_id"]
        expected = {pl.Float64: "DOUBLE", pl.Int64: "BIGINT", pl.String: "VARCHAR", pl.Boolean: "BOOLEAN"}
        assert {k: types[k] for k in schema} == {k: expected[v] for k, v in schema.items()}, table
        n = sql(path, f"SELECT count(*) AS n FROM glmm.{table} WHERE run_id = ?", [first.run_id])["n"][0]
        assert n > 0, table
    run = sql(path, "SELECT * FROM glmm.runs WHERE run_id = ?", [first.run_id]).row(0, named=True)
    assert run["status"] == "succeeded" and run["package_version"] and '"num_chains": 2' in run["config"]
    assert run["started_at"] <= run["finished_at"]
    # the three pictures of every pair
    assert len(first.plots) == 12
    assert all(Path(p).stat().st_size > 10_000 for paths in first.plots.values() for p in paths.values())


def test_each_run_leaves_its_prefect_artifacts(demo_run):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    _, first, second = demo_run

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["glmm-ab-lift"])))

    lift_tables = [a.data for a in asyncio.run(read())]
    for report in (first, second):
        table = next(t for t in lift_tables if report.run_id in t)
        assert "| checkout_button | purchases | treatment vs control |" in table and "P(beat control)" in table


def test_dirty_rows_are_handled_by_the_models(demo_run):
    path, first, _ = demo_run
    conflicts = sql(path, "SELECT * FROM dq_assignment_conflicts")
    assert conflicts.height == 6  # two per experiment, as the demo plants them
    excluded = sql(path, "SELECT count(*) AS n FROM fct_user_cv_counts f JOIN dq_assignment_conflicts c USING (experiment_id, user_id)")
    assert excluded["n"][0] == 0
    # every metric for every exposed, conflict-free user; zeros included
    counts = sql(path, "SELECT experiment_id, count(*) AS n, min(cv_count) AS lo FROM fct_user_cv_counts GROUP BY ALL ORDER BY 1")
    assert counts["n"].to_list() == [4 * 398, 4 * 598, 4 * 298]
    # the histogram holds exactly the users of fct_user_cv_counts, but a ratio metric's users without a
    # denominator event (a rate per cart says nothing about a user with no cart)
    no_denominator = sql(path, "SELECT count(*) AS n FROM fct_user_cv_counts WHERE denominator_count = 0")["n"][0]
    assert sql(path, "SELECT sum(n_users) AS n FROM fct_cv_count_histogram")["n"][0] == counts["n"].sum() - no_denominator


def test_conversion_and_ratio_metrics_run_and_a_guardrail_decides_at_the_experiment_level(demo_run):
    """The demo's metrics are of every type and role: each is fitted with its own model, and
    rpt_experiment_decisions applies the ship rule (every primary says ship, no guardrail may drop beyond
    its tolerance), recomputed here from the latest results and the roles."""
    path, _, second = demo_run
    types = dict(sql(path, "SELECT metric_id, metric_type FROM glmm.diagnostics WHERE run_id = ?",
                     [second.run_id]).unique().iter_rows())
    assert types == {"purchases": "count", "add_to_cart": "count", "converted": "conversion",
                     "purchases_per_cart": "ratio"}
    users = sql(path, "SELECT metric_id, max(cv_count) AS top, count(denominator_count) AS with_denominator, "
                      "count(*) AS n FROM fct_user_cv_counts GROUP BY 1")
    users = {r["metric_id"]: r for r in users.iter_rows(named=True)}
    assert users["converted"]["top"] == 1 and users["purchases"]["top"] > 1
    assert users["purchases_per_cart"]["with_denominator"] == users["purchases_per_cart"]["n"]
    assert users["purchases"]["with_denominator"] == 0
    # a conversion fit has no per-user spread; a ratio fit has its denominators as exposure
    summary = sql(path, "SELECT metric_id, parameter FROM glmm.posterior_summary WHERE run_id = ?", [second.run_id])
    assert "s" not in summary.filter(pl.col("metric_id") == "converted")["parameter"].to_list()
    exposure = sql(path, "SELECT max(exposure) AS top FROM glmm.user_estimates WHERE run_id = ? "
                         "AND metric_id = 'purchases_per_cart'", [second.run_id])["top"][0]
    assert exposure > 1

    # the pre-period covariate: the checkout button's shoppers have history, the other experiments' new
    # visitors none; conversion and ratio metrics are fitted without it
    covariate = sql(path, "SELECT experiment_id, metric_id, covariate, covariate_sd_ratio FROM glmm.diagnostics "
                          "WHERE run_id = ?", [second.run_id])
    adjusted = covariate.filter(pl.col("covariate") == "pre_period")
    assert sorted(adjusted.select("experiment_id", "metric_id").rows()) == [
        ("checkout_button", "add_to_cart"), ("checkout_button", "purchases")]
    assert adjusted["covariate_sd_ratio"].is_between(0.5, 1.5).all() and covariate.height == 12

    latest = sql(path, "SELECT * FROM rpt_experiment_results_latest")
    guardrail = latest.filter(pl.col("metric_id") == "add_to_cart")
    assert guardrail["tolerated_drop"].to_list() == [0.05] * 4
    assert latest.filter(pl.col("metric_id") != "add_to_cart")["prob_drop_beyond_tolerance"].null_count() == 12
    decisions = sql(path, "SELECT * FROM rpt_experiment_decisions ORDER BY experiment_id, variant")
    assert decisions.height == 4  # one per experiment x treatment
    for d in decisions.iter_rows(named=True):
        expected, guard_ok = expected_decision(latest, d["experiment_id"], d["variant"])
        primary = latest.filter((pl.col("experiment_id") == d["experiment_id"]) & (pl.col("variant") == d["variant"])
                                & (pl.col("metric_id") == "purchases")).row(0, named=True)
        assert d["decision"] == expected, d
        assert d["primary_metric_id"] == "purchases" and d["primary_relative_lift_mean"] == primary["relative_lift_mean"]
        assert d["guardrail_status"] in ({"ok"} if guard_ok else {"breached", "unchecked"}), d
    # the checkout button's planted 15% drop in carts: its guardrail cannot pass
    checkout = decisions.filter(pl.col("experiment_id") == "checkout_button").row(0, named=True)
    assert checkout["guardrail_status"] in {"breached", "unchecked"} and checkout["decision"] != "ship"
    assert checkout["days_running"] == 28.0  # an ended experiment: start to end


def test_the_primary_metric_is_broken_down_by_the_demos_platforms(demo_run):
    """raw.user_segments gives the checkout button's users a platform (5% have none): its primary metric
    (purchases) gets one partially pooled lift per platform, every user counted once, and the report model
    shows the latest run's breakdown beside the overall lift. Other metrics and experiments have none."""
    path, _, second = demo_run
    rows = sql(path, "SELECT * FROM glmm.segment_lift WHERE run_id = ? ORDER BY segment", [second.run_id])
    assert set(rows.select("experiment_id", "metric_id", "dimension", "variant").rows()) == {
        ("checkout_button", "purchases", "platform", "treatment")}
    assert rows["segment"].to_list() == ["(none)", "android", "ios", "web"]
    lift = sql(path, "SELECT * FROM glmm.lift WHERE run_id = ? AND experiment_id = 'checkout_button' "
                     "AND metric_id = 'purchases'", [second.run_id]).row(0, named=True)
    assert rows["n_users"].sum() == lift["n_users"] and rows["n_users_control"].sum() == lift["n_users_control"]
    assert (rows["n_segments"] == 4).all() and rows["valid"].n_unique() == 1
    # valid: the main fit's rules (R-hat <= 1.01, no divergences), which 2 x 300 draws may miss
    assert rows["valid"][0] == (rows["max_r_hat"][0] <= 1.01 and rows["divergences"][0] == 0)
    assert (rows["relative_lift_low"] < rows["relative_lift_mean"]).all()
    assert (rows["relative_lift_mean"] < rows["relative_lift_high"]).all()
    assert rows["srm_p_value"].is_between(0, 1).all() and rows["effect_spread_median"].n_unique() == 1
    report = sql(path, "SELECT * FROM rpt_segment_lift_latest ORDER BY segment")
    assert report["segment"].to_list() == rows["segment"].to_list() and (report["run_id"] == second.run_id).all()
    assert report["relative_lift_mean"].to_list() == rows["relative_lift_mean"].to_list()
    assert (report["overall_relative_lift_mean"] == lift["relative_lift_mean"]).all()


def test_health_report_flags_the_planted_assignment_conflicts(demo_run):
    path, _, second = demo_run
    health = sql(path, "SELECT * FROM rpt_experiment_health ORDER BY experiment_id, metric_id")
    assert health.height == 12 and health["run_id"].unique().to_list() == [second.run_id]
    assert health["n_assignment_conflicts"].to_list() == [2] * 12  # the demo plants two per experiment
    for row in health.iter_rows(named=True):  # short test chains may miss R-hat <= 1.01: then 'failed'
        assert row["health_status"] == ("warning" if row["converged"] else "failed"), row
    assert all("2 user(s) in more than one variant" in r for r in health["health_reasons"])
    assert (health["hours_since_last_event"] < 48).all() and health["srm_p_value"].is_not_null().all()


def test_second_run_adds_a_run_and_latest_picks_it(demo_run):
    path, first, second = demo_run
    assert first.run_id != second.run_id
    runs = sql(path, "SELECT run_id, status FROM glmm.runs ORDER BY finished_at")
    assert runs["run_id"].to_list()[-2:] == [first.run_id, second.run_id]
    latest = sql(path, "SELECT DISTINCT run_id FROM rpt_experiment_results_latest")
    assert latest["run_id"].to_list() == [second.run_id]
    history = sql(path, "SELECT run_id, count(*) AS n FROM rpt_lift_history GROUP BY run_id ORDER BY run_id")
    assert history["n"].to_list() == [16, 16]
    # each runs row says where its night went, stage by stage, up to its own writing
    stages = sql(path, "SELECT run_id, CAST(stage_seconds AS VARCHAR) AS s FROM glmm.runs WHERE run_id IN (?, ?)",
                 [first.run_id, second.run_id])
    for run_id, recorded in stages.rows():
        report = first if run_id == first.run_id else second
        recorded = json.loads(recorded)
        assert list(recorded) == ["dbt", "load", "fit"] and all(v > 0 for v in recorded.values())
        assert recorded["fit"] == round(report.stage_seconds["fit"], 3)
    # and its publication row the stages after the commit, up to the publish attempt
    after = sql(path, "SELECT run_id, CAST(stage_seconds AS VARCHAR) AS s FROM glmm.publications WHERE run_id IN (?, ?)",
                [first.run_id, second.run_id])
    assert after.height == 2
    for run_id, recorded in after.rows():
        report = first if run_id == first.run_id else second
        recorded = json.loads(recorded)
        assert list(recorded) == ["write", "reports", "publish"] and all(v > 0 for v in recorded.values())
        assert recorded["reports"] == round(report.stage_seconds["reports"], 3)
        assert recorded["publish"] <= report.stage_seconds["publish"]


def test_results_read_with_plain_sql_as_a_bi_tool_would(demo_run):
    path, _, second = demo_run
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = con.execute(
            """
            SELECT experiment_id, metric_id, variant, relative_lift_mean, relative_lift_low,
                   relative_lift_high, prob_beat_control, decision, experiment_start_at, srm_p_value
            FROM rpt_experiment_results_latest
            WHERE experiment_id = 'onboarding_flow' AND metric_id = 'purchases'
            ORDER BY variant
            """
        ).fetchall()
        assert [r[2] for r in rows] == ["short_form", "video_intro"]
        for r in rows:
            assert r[4] < r[3] < r[5] and 0 <= r[6] <= 1 and isinstance(r[8], datetime) and r[9] is not None
        trend = con.execute(
            "SELECT as_of, prob_beat_control FROM rpt_lift_history WHERE experiment_id = 'checkout_button' "
            "AND metric_id = 'purchases' ORDER BY as_of"
        ).fetchall()
        assert len(trend) == 2
    finally:
        con.close()


def test_failing_dbt_test_stops_the_run_before_any_write(demo_run, nightly, tmp_path):
    path = copy_warehouse(demo_run[0], tmp_path)
    before = {t: sql(path, f"SELECT count(*) AS n FROM glmm.{t}")["n"][0] for t in SCHEMAS}
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO raw.experiments SELECT * FROM raw.experiments LIMIT 1")  # duplicate experiment_id
    con.close()
    with pytest.raises(Exception, match="unique"):
        nightly(warehouse=str(path), options=small())
    after = {t: sql(path, f"SELECT count(*) AS n FROM glmm.{t}")["n"][0] for t in SCHEMAS}
    assert after == before
    failed = sql(path, "SELECT status, message, CAST(stage_seconds AS VARCHAR) AS stages FROM glmm.runs "
                       "ORDER BY finished_at DESC LIMIT 1").row(0, named=True)
    assert failed["status"] == "failed" and "unique" in failed["message"]
    assert list(json.loads(failed["stages"])) == ["dbt"]  # the stage it failed in
    # earlier results still there and the latest view still answers from them
    assert sql(path, "SELECT count(*) AS n FROM rpt_experiment_results_latest")["n"][0] == 16


def test_a_warehouse_filled_by_hand_per_the_raw_contract(nightly, tmp_path):
    """What a user does: create raw.* themselves and point the job at it. One experiment has a single arm."""
    path = tmp_path / "mine.duckdb"
    t0 = datetime(2026, 10, 1)
    con = duckdb.connect(str(path))
    wh.create_raw_tables(con)
    con.execute("INSERT INTO raw.experiments VALUES ('exp1', 'A', ?, NULL), ('lonely', 'A', ?, NULL)", [t0, t0])
    con.execute("INSERT INTO raw.metrics VALUES ('signups', 'signup')")
    assignments = [("exp1", f"u{i}", "AB"[i % 2], t0 + timedelta(hours=i)) for i in range(120)]
    assignments += [("lonely", f"v{i}", "A", t0 + timedelta(hours=i)) for i in range(10)]
    con.executemany("INSERT INTO raw.assignments VALUES (?, ?, ?, ?)", assignments)
    events = [(f"e{i}_{k}", f"u{i}", "signup", t0 + timedelta(days=1, hours=i, minutes=k)) for i in range(120) for k in range(i % 4 + (i % 2))]
    con.executemany("INSERT INTO raw.events VALUES (?, ?, ?, ?)", events)
    con.close()
    report = nightly(warehouse=str(path), as_of=datetime(2026, 11, 1), options=small())
    assert report.status == "succeeded"
    assert report.lift["experiment_id"].to_list() == ["exp1"]
    assert report.failures.row(0, named=True)["experiment_id"] == "lonely"
    assert "only one arm" in report.failures["error"][0]
    stored = sql(path, "SELECT * FROM glmm.fit_failures")
    assert stored.height == 1 and stored["run_id"][0] == report.run_id
    row = sql(path, "SELECT * FROM rpt_experiment_results_latest").row(0, named=True)
    assert row["n_users"] + row["n_users_control"] == 120
    # the health model names both problems: a pair that could not be fitted, and stale data
    health = {r["experiment_id"]: r for r in sql(path, "SELECT * FROM rpt_experiment_health").iter_rows(named=True)}
    assert health["lonely"]["health_status"] == "failed" and "only one arm" in health["lonely"]["health_reasons"]
    exp1 = health["exp1"]  # newest event ~Oct 6, run as of Nov 1: stale; short test chains may also miss R-hat
    assert exp1["health_status"] == ("warning" if exp1["converged"] else "failed"), exp1
    assert exp1["hours_since_last_event"] > 48 and "no new events" in exp1["health_reasons"]
    assert exp1["n_assignment_conflicts"] == 0
    # raw.metrics without the optional columns: a count metric, primary, so the experiment's decision is its own
    decision = sql(path, "SELECT * FROM rpt_experiment_decisions").row(0, named=True)
    assert decision["experiment_id"] == "exp1" and decision["primary_metric_id"] == "signups"
    assert decision["decision"] == row["decision"] and decision["guardrail_status"] == "none"


def test_a_bad_metric_definition_stops_the_run_before_fitting_and_names_it(demo_run, nightly, tmp_path):
    path = copy_warehouse(demo_run[0], tmp_path)
    con = duckdb.connect(str(path))
    con.execute("UPDATE raw.metrics SET denominator_event = NULL WHERE metric_type = 'ratio'")
    con.close()
    with pytest.raises(Exception, match="ratio_metric_names_its_denominator_event"):
        nightly(warehouse=str(path), options=small())
    failed = sql(path, "SELECT status, message FROM glmm.runs ORDER BY finished_at DESC LIMIT 1").row(0, named=True)
    assert failed["status"] == "failed" and "ratio_metric_names_its_denominator_event" in failed["message"]


def test_dbt_unit_and_structural_tests_of_the_models_pass(demo_run, tmp_path):
    """The models' unit tests (windowing, conflicts, dedup) and the structural tests of the intermediate
    views run here, in development and CI: the nightly build leaves them out (unit tests would depend on
    a warehouse's raw column types; structural ones re-run each view over the whole raw log)."""
    import yaml

    from flows.dbt import run_dbt
    from flows.nightly import NIGHTLY_DBT_FLAGS
    from flows.resources import dbt_project_dir
    from flows.warehouse import open_warehouse

    defined = sum(len((yaml.safe_load(p.read_text()) or {}).get("unit_tests", []))
                  for p in (dbt_project_dir() / "models").rglob("*.yml"))
    warehouse = open_warehouse(copy_warehouse(demo_run[0], tmp_path))
    result = run_dbt("test", warehouse, "test_type:unit")
    assert defined >= 4 and result.passed == defined
    structural = run_dbt("test", warehouse, "tag:structural")
    assert structural.passed >= 15 and not structural.warned
    assert "tag:structural" in NIGHTLY_DBT_FLAGS


def test_dbt_starts_from_the_last_calls_parse_state_and_takes_the_as_of_from_the_environment(demo_run, tmp_path):
    from flows.dbt import parse_state_path, run_dbt
    from flows.resources import dbt_project_dir
    from flows.warehouse import open_warehouse

    warehouse = open_warehouse(demo_run[0])
    kept = parse_state_path(dbt_project_dir(), warehouse)
    assert kept.is_file() and kept.parent == Path(os.environ["GLMM_AB_DBT_STATE"])  # the demo runs left it
    # the next call on a warehouse starts from the last one's parse state; the as-of reaches the SQL
    # through GLMM_AB_AS_OF and changes only what uses it
    copy = open_warehouse(copy_warehouse(demo_run[0], tmp_path))
    assert parse_state_path(dbt_project_dir(), copy) != kept  # one state per warehouse
    first = run_dbt("compile", copy, "int_experiment_windows", as_of="2026-01-02 03:04:05", extra=["--debug"])
    second = run_dbt("compile", copy, "int_experiment_windows", as_of="2026-02-03 00:00:00", extra=["--debug"])
    assert "2026-01-02 03:04:05" in first.output and "2026-02-03 00:00:00" in second.output
    assert "Partial parsing enabled" not in first.output and "Partial parsing enabled" in second.output


def test_cli_run_exit_codes(tmp_path):
    env = {**os.environ, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
    missing = subprocess.run([EXE, "run", "--warehouse", str(tmp_path / "none.duckdb")], capture_output=True, text=True, env=env)
    assert missing.returncode == 2 and "warehouse file not found" in missing.stderr
    bad_time = subprocess.run([EXE, "run", "--warehouse", str(tmp_path / "none.duckdb"), "--as-of", "yesterday"], capture_output=True, text=True, env=env)
    assert bad_time.returncode == 2
    empty = tmp_path / "empty.duckdb"
    duckdb.connect(str(empty)).close()
    broken = subprocess.run([EXE, "run", "--warehouse", str(empty), "--chains", "1", "--warmup", "50", "--samples", "50"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert broken.returncode == 1
    assert "raw contract" in broken.stderr and "raw.experiments is missing" in broken.stderr
    run = sql(empty, "SELECT status, message FROM glmm.runs").row(0, named=True)
    assert run["status"] == "failed" and "raw contract" in run["message"]


def test_any_warehouse_file_name_works(nightly, tmp_path):
    """DuckDB names a file's catalog after its stem: glmm.duckdb and raw.duckdb used to shadow the schemas."""
    from flows.warehouse import open_warehouse
    from pipeline_helpers import keep_one_experiment, make_demo

    raw_named = open_warehouse(make_demo(tmp_path / "raw" / "raw.duckdb"))
    raw_named.check_raw_contract()
    raw_named.ensure_result_tables()
    assert raw_named.recent_runs(5).height == 0

    path = keep_one_experiment(make_demo(tmp_path / "glmm" / "glmm.duckdb"))
    report = nightly(warehouse=str(path), options=small(publish_results=False))
    assert report.status == "succeeded" and report.lift.height == 4
    warehouse = open_warehouse(path)
    assert warehouse.has_run(report.run_id) and warehouse.recent_runs(5)["status"].to_list() == ["succeeded"]
    assert warehouse.experiment_health().height == 4
