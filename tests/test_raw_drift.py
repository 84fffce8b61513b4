"""Raw data that drifts from what the job expects: zoned timestamps under a non-UTC machine, numeric
ids, text timestamps, renamed event names, an experiment with no events, an inverted window. Each is
either handled exactly or named, never silently wrong."""
from datetime import datetime, timedelta

import duckdb
import polars as pl
import pytest

from flows.dbt import PIPELINE_SELECTOR, run_dbt
from flows.warehouse import WarehouseError, open_warehouse
from pipeline_helpers import sql, small

T0 = datetime(2026, 10, 1, 22, 30)  # late evening UTC: +05:30 moves it to the next day
AS_OF = datetime(2026, 10, 20)


def raw_rows(n_users: int = 80) -> dict[str, pl.DataFrame]:
    """One A/B experiment; users convert 0-3 times, B a little more."""
    assignments, events = [], []
    for i in range(n_users):
        exposed = T0 + timedelta(hours=i)
        assignments.append(("exp", 1000 + i, "AB"[i % 2], exposed))
        for k in range(i % 3 + (i % 2)):
            events.append((50_000 + 10 * i + k, 1000 + i, "purchase", exposed + timedelta(hours=2 + k)))
    return {
        "experiments": pl.DataFrame([("exp", "A", T0 - timedelta(days=1), None)], orient="row",
                                    schema={"experiment_id": pl.String, "control_variant": pl.String,
                                            "start_at": pl.Datetime("us"), "end_at": pl.Datetime("us")}),
        "metrics": pl.DataFrame([("purchases", "purchase")], orient="row", schema=["metric_id", "event_name"]),
        "assignments": pl.DataFrame(assignments, orient="row", schema=["experiment_id", "user_id", "variant", "assigned_at"]),
        "events": pl.DataFrame(events, orient="row", schema=["event_id", "user_id", "event_name", "event_at"]),
    }


COLUMNS = {
    "experiments": [("experiment_id", "id"), ("control_variant", "id"), ("start_at", "time"), ("end_at", "time")],
    "metrics": [("metric_id", "id"), ("event_name", "id")],
    "assignments": [("experiment_id", "id"), ("user_id", "user"), ("variant", "id"), ("assigned_at", "time")],
    "events": [("event_id", "user"), ("user_id", "user"), ("event_name", "id"), ("event_at", "time")],
}


def make_warehouse(path, frames, time_type="TIMESTAMP", user_type="VARCHAR"):
    """raw.* with the given types for times and for user/event ids; times are UTC instants either way."""
    con = duckdb.connect(str(path))
    try:
        con.execute("CREATE SCHEMA raw")
        for table, columns in COLUMNS.items():
            types = {"id": "VARCHAR", "user": user_type, "time": time_type}
            con.execute(f"CREATE TABLE raw.{table} ({', '.join(f'{c} {types[k]}' for c, k in columns)})")
            con.register("staged", frames[table].to_arrow())
            select = []
            for c, k in columns:
                if k == "time" and time_type == "TIMESTAMPTZ":
                    select.append(f"timezone('UTC', CAST({c} AS TIMESTAMP))")  # the UTC wall time as an instant
                else:
                    select.append(f"CAST({c} AS {types[k]})")
            con.execute(f"INSERT INTO raw.{table} SELECT {', '.join(select)} FROM staged")
            con.unregister("staged")
    finally:
        con.close()
    return path


def build_marts(path) -> tuple[pl.DataFrame, pl.DataFrame]:
    from flows.nightly import NIGHTLY_DBT_FLAGS

    warehouse = open_warehouse(path)
    warehouse.check_raw_contract()
    warehouse.ensure_result_tables()  # as the flow's first step does: dbt tests the glmm sources too
    run_dbt("build", warehouse, PIPELINE_SELECTOR, AS_OF.isoformat(sep=" "), extra=NIGHTLY_DBT_FLAGS)
    users = sql(path, "SELECT user_id, first_exposed_at, cv_count FROM fct_user_cv_counts ORDER BY user_id")
    histogram = sql(path, "SELECT variant, cv_count, n_users FROM fct_cv_count_histogram ORDER BY ALL")
    return users, histogram


def test_zoned_timestamps_on_a_non_utc_machine_give_exactly_the_utc_results(tmp_path, monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # dbt's DuckDB session would take +05:30 from here
    frames = raw_rows()
    plain_users, plain_histogram = build_marts(make_warehouse(tmp_path / "plain.duckdb", frames))
    zoned_users, zoned_histogram = build_marts(make_warehouse(tmp_path / "zoned.duckdb", frames, "TIMESTAMPTZ"))
    expected = frames["assignments"].select(pl.col("user_id").cast(pl.String), pl.col("assigned_at"))
    assert plain_users.select("user_id", "first_exposed_at").equals(
        expected.rename({"assigned_at": "first_exposed_at"}).sort("user_id"))
    assert zoned_users.equals(plain_users)  # not a minute shifted
    assert zoned_histogram.equals(plain_histogram)


def test_numeric_user_and_event_ids_work_like_text_ones(tmp_path):
    frames = raw_rows()
    text_users, text_histogram = build_marts(make_warehouse(tmp_path / "text.duckdb", frames))
    number_users, number_histogram = build_marts(make_warehouse(tmp_path / "numbers.duckdb", frames, user_type="BIGINT"))
    assert number_users.equals(text_users) and number_histogram.equals(text_histogram)
    assert number_histogram["n_users"].sum() == 80


def test_text_timestamps_are_refused_up_front_naming_the_column(tmp_path):
    path = make_warehouse(tmp_path / "text-times.duckdb", raw_rows(), time_type="VARCHAR")
    with pytest.raises(WarehouseError) as caught:
        open_warehouse(path).check_raw_contract()
    message = str(caught.value)
    for column in ("raw.events.event_at", "raw.assignments.assigned_at", "raw.experiments.start_at"):
        assert f"{column} is VARCHAR; expected TIMESTAMP (UTC) or TIMESTAMP WITH TIME ZONE" in message
    assert "does not guess the time zone" in message


def test_drifted_names_silent_experiments_and_inverted_windows_are_named(tmp_path, nightly):
    frames = raw_rows()
    events = frames["events"]
    # a new SDK sends 'Purchase ' for half of variant B's purchases
    b_users = frames["assignments"].filter(pl.col("variant") == "B")["user_id"]
    drifted = events.with_columns(
        pl.when(pl.col("user_id").is_in(b_users.implode()) & (pl.col("event_id") % 2 == 0))
        .then(pl.lit("Purchase ")).otherwise(pl.col("event_name")).alias("event_name"))
    # 'silent': users exposed, not one event; 'backwards': ends before it starts
    silent = [("silent", 5000 + i, "AB"[i % 2], T0 + timedelta(hours=i)) for i in range(40)]
    frames["assignments"] = pl.concat([frames["assignments"],
                                       pl.DataFrame(silent, orient="row", schema=frames["assignments"].schema)])
    frames["experiments"] = pl.concat([frames["experiments"], pl.DataFrame(
        [("silent", "A", T0 - timedelta(days=1), None), ("backwards", "A", T0, T0 - timedelta(days=3))],
        orient="row", schema=frames["experiments"].schema)])
    frames["events"] = drifted
    path = make_warehouse(tmp_path / "drift.duckdb", frames)

    report = nightly(warehouse=str(path), as_of=AS_OF, options=small(publish_results=False))
    assert report.status == "succeeded"
    issues = {(r["experiment_id"], r["issue"]): r for r in sql(path, "SELECT * FROM dq_data_issues").iter_rows(named=True)}
    near = issues[(None, "event_name_near_miss")]
    n_drifted = drifted.filter(pl.col("event_name") == "Purchase ").height
    assert near["n_rows"] == n_drifted > 0 and "[Purchase ] for metric purchases" in near["detail"]
    assert issues[("silent", "no_events")]["severity"] == "error"
    assert "purchases" in issues[("silent", "no_events")]["detail"]
    assert issues[("backwards", "inverted_window")]["severity"] == "error"

    # nothing 'fitted' on nothing: the silent pair is a fit failure that says why
    failures = {r["experiment_id"]: r["error"] for r in report.failures.iter_rows(named=True)}
    assert "no conversions in any variant" in failures["silent"]
    health = {r["experiment_id"]: r for r in sql(path, "SELECT * FROM rpt_experiment_health").iter_rows(named=True)}
    assert health["silent"]["health_status"] == "failed"
    assert health["exp"]["n_near_miss_events"] == n_drifted
    assert health["exp"]["health_status"] in ("warning", "failed")
    assert "named like this metric but for case or spaces were not counted" in health["exp"]["health_reasons"]
