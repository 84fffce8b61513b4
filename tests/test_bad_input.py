"""Raw data nobody cleaned, end to end from raw tables: every problem is named in dq_data_issues and
rpt_experiment_health, and no lift is silently wrong (the decision is 'invalid' where it must be)."""
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest

from flows.warehouse import duckdb_warehouse as wh
from flows.options import RunOptions
from pipeline_helpers import copy_warehouse, small, sql

HOSTILE = "e_x'); DROP TABLE glmm.runs; --/../../escaped"  # an id from raw data: never SQL, never a path
NOW = datetime.now().replace(microsecond=0)
T0 = (NOW - timedelta(days=20)).replace(hour=0, minute=0, second=0)


def ab_users(experiment: str, n: int, arms=("A", "B")) -> list[tuple]:
    return [(experiment, f"{experiment}_u{i}", arms[i % len(arms)], T0 + timedelta(minutes=i)) for i in range(n)]


def events_for(users: list[tuple], per_user=lambda i: i % 4, offset=timedelta(days=1)) -> list[tuple]:
    rows = []
    for i, (_, user, _, exposed) in enumerate(users):
        rows += [(f"{user}_e{k}", user, "signup", exposed + offset + timedelta(minutes=k)) for k in range(per_user(i))]
    return rows


@pytest.fixture(scope="module")
def dirty(tmp_path_factory, nightly):
    path = tmp_path_factory.mktemp("dirty") / "dirty.duckdb"
    names = ["e_nulls", "e_stray_arm", "e_conflict", "e_before", "e_one_arm", "e_empty", "e_extreme", "e_future",
             "e_no_control", HOSTILE]
    assignments, events = [], []
    for name in names:
        if name == "e_empty":
            continue
        arms = {"e_stray_arm": ("A", "B"), "e_one_arm": ("A",), "e_no_control": ("B", "C")}.get(name, ("A", "B"))
        users = ab_users(name, 120 if name != "e_one_arm" else 20, arms)
        assignments += users
        events += events_for(users)
    # NULL keys: exposures and events that cannot be attributed
    assignments += [("e_nulls", None, "A", T0), ("e_nulls", None, "B", T0), ("e_nulls", "e_nulls_u1", None, T0)]
    events += [("n1", None, "signup", T0 + timedelta(days=2)), ("n2", "e_nulls_u1", "signup", None),
               (None, "e_nulls_u1", "signup", T0 + timedelta(days=2))]
    # duplicate deliveries of five events
    events += [e for e in events if e[1] == "e_nulls_u3"][:3] + [e for e in events if e[1] == "e_nulls_u7"][:2]
    # an arm nobody planned: 4 users of 'C' beside 60 + 60
    assignments += [("e_stray_arm", f"e_stray_arm_c{i}", "C", T0 + timedelta(hours=i)) for i in range(4)]
    # two users in both variants
    assignments += [("e_conflict", "e_conflict_u0", "B", T0 + timedelta(hours=5)),
                    ("e_conflict", "e_conflict_u1", "A", T0 + timedelta(hours=5))]
    # every e_before user also converted a day before their exposure
    events += [(f"e_before_u{i}_early", f"e_before_u{i}", "signup", T0 - timedelta(days=1)) for i in range(120)]
    # one bot with a million events
    bot_events = pl.DataFrame({"event_id": [f"bot{k}" for k in range(1_000_000)], "user_id": "e_extreme_u1",
                               "event_name": "signup", "event_at": T0 + timedelta(days=2)})
    # events stamped in the future
    events += [(f"fut{k}", "e_future_u2", "signup", NOW + timedelta(days=5)) for k in range(7)]
    # exposures of an experiment nobody declared
    assignments += [("e_ghost", f"g{i}", "A", T0) for i in range(3)]

    con = duckdb.connect(str(path))
    wh.create_raw_tables(con)
    con.executemany("INSERT INTO raw.experiments VALUES (?, ?, ?, NULL)", [(n, "A", T0) for n in names])
    con.execute("INSERT INTO raw.metrics VALUES ('signups', 'signup')")
    con.executemany("INSERT INTO raw.assignments VALUES (?, ?, ?, ?)", assignments)
    con.executemany("INSERT INTO raw.events VALUES (?, ?, ?, ?)", events)
    wh.append(con, "raw.events", bot_events)
    con.close()
    report = nightly(warehouse=str(path), options=small(plots_dir=str(path.parent / "plots")))
    return path, report


def issues(path) -> dict:
    rows = sql(path, "SELECT experiment_id, issue, severity, n_rows FROM dq_data_issues")
    return {(r["experiment_id"], r["issue"]): (r["severity"], r["n_rows"]) for r in rows.iter_rows(named=True)}


def test_every_raw_problem_is_named_with_its_rows(dirty):
    path, report = dirty
    assert report.status == "succeeded"
    found = issues(path)
    assert found[("e_nulls", "null_key_in_assignments")] == ("warning", 3)
    assert found[(None, "null_key_in_events")] == ("warning", 3)
    assert found[(None, "duplicate_event_id")] == ("warning", 5)
    assert found[(None, "events_in_the_future")] == ("warning", 7)
    assert found[("e_ghost", "unknown_experiment")] == ("warning", 3)
    assert found[("e_conflict", "user_in_several_variants")] == ("warning", 2)
    assert found[("e_before", "events_before_exposure")] == ("warning", 120)
    assert found[("e_one_arm", "single_arm")] == ("error", 20)  # n_rows: the experiment's distinct users
    assert found[("e_empty", "no_users")] == ("error", 0)
    assert found[("e_no_control", "control_variant_missing")] == ("error", 120)
    assert found[("e_extreme", "extreme_user")] == ("warning", 1)
    # and nothing else was flagged: the clean experiments stay clean
    assert not {k for k in found if k[0] in ("e_stray_arm", "e_future", HOSTILE)}


def test_what_was_excluded_is_not_counted(dirty):
    path, _ = dirty
    counts = dict(sql(path, "SELECT user_id, cv_count FROM fct_user_cv_counts").iter_rows())
    assert counts["e_before_u5"] == 5 % 4  # the early event is not counted
    assert counts["e_future_u2"] == 2  # the future events are not counted
    assert counts["e_extreme_u1"] == 1 + 1_000_000  # the bot is kept, and flagged
    assert "e_conflict_u0" not in counts and None not in counts
    assert counts["e_nulls_u3"] == 3  # its duplicated deliveries count once


def test_experiments_that_cannot_be_analysed_fail_loudly_and_the_others_go_on(dirty):
    path, report = dirty
    failed = dict(report.failures.select("experiment_id", "error").iter_rows())
    assert set(failed) == {"e_one_arm", "e_no_control"}
    assert "only one arm" in failed["e_one_arm"] and "'A'" in failed["e_no_control"]
    fitted = set(report.lift["experiment_id"])
    assert fitted == {"e_nulls", "e_stray_arm", "e_conflict", "e_before", "e_extreme", "e_future", HOSTILE}
    health = {r["experiment_id"]: r for r in sql(path, "SELECT * FROM rpt_experiment_health").iter_rows(named=True)}
    assert health["e_one_arm"]["health_status"] == "failed" and "only one arm" in health["e_one_arm"]["health_reasons"]
    assert health["e_no_control"]["health_status"] == "failed"
    assert "extreme_user (1)" in health["e_extreme"]["health_reasons"]
    assert "null_key_in_assignments (3)" in health["e_nulls"]["health_reasons"]
    assert "events_before_exposure (120)" in health["e_before"]["health_reasons"]
    # an unplanned arm: the sample ratio fails, so no lift of that experiment is a decision
    stray = report.lift.filter(pl.col("experiment_id") == "e_stray_arm")
    assert stray["variant"].to_list() == ["B", "C"]
    assert stray["decision"].to_list() == ["invalid", "invalid"]
    assert all("sample ratio mismatch" in r for r in stray["decision_reason"])
    assert health["e_stray_arm"]["health_status"] == "failed"


def test_a_fit_that_does_not_converge_is_invalid_never_a_decision(dirty, nightly, tmp_path):
    path = copy_warehouse(dirty[0], tmp_path)
    # one experiment is enough, and each would compile a program of its own for these settings
    con = duckdb.connect(str(path))
    con.execute("DELETE FROM raw.experiments WHERE experiment_id <> 'e_before'")
    con.close()
    # 3 warmup steps: a sampler that cannot converge; no refits (they would only take more time here)
    report = nightly(warehouse=str(path), options=RunOptions(num_chains=2, num_warmup=3, num_samples=30, refits=0,
                                                             publish_results=False))
    assert report.status == "succeeded" and report.lift.height > 0
    assert set(report.lift["decision"]) == {"invalid"}
    assert all("r_hat" in r.lower() or "ess" in r.lower() for r in report.lift["decision_reason"])
    assert set(report.lift["experiment_id"]) == {"e_before"}
    health = sql(path, "SELECT health_status, health_reasons FROM rpt_experiment_health WHERE experiment_id = 'e_before'")
    assert set(health["health_status"]) == {"failed"}
    assert all("checks failed" in r for r in health["health_reasons"])


def test_ids_from_raw_data_are_values_never_sql_or_paths(dirty):
    path, report = dirty
    assert sql(path, "SELECT count(*) AS n FROM glmm.runs")["n"][0] == 1  # still there
    row = sql(path, "SELECT * FROM rpt_experiment_results_latest WHERE experiment_id = ?", [HOSTILE]).row(0, named=True)
    assert row["n_users"] + row["n_users_control"] == 120
    plots = (path.parent / "plots").resolve()
    written = [Path(p).resolve() for paths in report.plots.values() for p in paths.values()]
    assert written and all(plots in p.parents for p in written)
    assert not (path.parent / "escaped").exists() and not (plots.parent / "escaped").exists()


def test_plot_folder_names_are_short_safe_and_one_to_one():
    """Ids from raw data become folder names: long ones are cut, any script works, two ids never share one."""
    from flows.nightly import path_part

    long_id = "x" * 500
    ids = [long_id, long_id[:-1] + "y", "購入", "購買", "../../etc", "..", HOSTILE, "plain_id-2.v=1"]
    parts = [path_part(i) for i in ids]
    assert len(set(parts)) == len(ids)
    assert all(0 < len(p) <= 64 and "/" not in p and not p.startswith(".") for p in parts), parts
    assert path_part("plain_id-2.v=1") == "plain_id-2.v=1"  # a plain id stays readable
    assert path_part("購入") == path_part("購入")  # and the same id always gets the same folder
