"""The per-user counts are incremental on DuckDB (int_user_metric_counts): a night recounts the users
that raw rows stamped since its look-back start can change, and every mart it feeds equals a full
rebuild's on the same raw data, through late events, a late exposure that moves a first exposure, a
re-delivered event id that changes hands, a new conflict, a new user, an earlier as-of, a changed start,
an extended end and an added metric."""
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from flows.nightly import dbt_build, prepare_warehouse
from flows.warehouse import open_warehouse
from tests.pipeline_helpers import copy_warehouse, make_demo, sql

MARTS = ("fct_user_cv_counts", "fct_cv_count_histogram", "fct_segment_histogram", "dq_assignment_conflicts",
         "dq_data_issues")
NIGHT_1 = datetime(2026, 11, 26)
NIGHT_2 = NIGHT_1 + timedelta(days=1)


def build(path: Path, as_of: datetime, full_refresh: bool = False) -> None:
    """The nightly flow's pipeline build (its dbt step, as the flow calls it)."""
    warehouse = open_warehouse(path)
    prepare_warehouse.fn(warehouse)
    dbt_build.fn(warehouse, "pipeline", as_of, full_refresh)


def differences(incremental: Path, rebuilt: Path) -> dict[str, int]:
    """Per mart, the rows in one warehouse's table and not the other's (both ways, duplicates counted)."""
    with duckdb.connect(str(incremental), read_only=True) as con:
        con.execute(f"ATTACH '{rebuilt}' AS rebuilt (READ_ONLY)")
        own = con.execute("SELECT current_database()").fetchone()[0]
        return {t: con.execute(f"SELECT (SELECT count(*) FROM (FROM {own}.main.{t} EXCEPT ALL FROM rebuilt.main.{t}))"
                               f" + (SELECT count(*) FROM (FROM rebuilt.main.{t} EXCEPT ALL FROM {own}.main.{t}))"
                               ).fetchone()[0] for t in MARTS}


def rebuilt_from_scratch(incremental: Path, folder: Path, as_of: datetime) -> Path:
    """The same raw tables in a new warehouse, built once (no table to increment from). Its file has another
    name: dbt-duckdb's views name their catalog after the file, and :func:`differences` attaches it."""
    rebuilt = folder / "rebuilt.duckdb"
    rebuilt.parent.mkdir(parents=True)
    with duckdb.connect(str(rebuilt)) as con:
        con.execute(f"ATTACH '{incremental}' AS source (READ_ONLY)")
        con.execute("CREATE SCHEMA raw")
        for (table,) in con.execute("SELECT table_name FROM information_schema.tables WHERE table_catalog = "
                                    "'source' AND table_schema = 'raw'").fetchall():
            con.execute(f"CREATE TABLE raw.{table} AS FROM source.raw.{table}")
    build(rebuilt, as_of)
    return rebuilt


@pytest.fixture(scope="module")
def two_nights(tmp_path_factory):
    """A demo warehouse whose raw rows from NIGHT_1 on, and a fifth of the events of the two days before it
    (late arrivals), land after night 1, with a re-delivered event id, a new conflict and a new user."""
    path = make_demo(tmp_path_factory.mktemp("incremental") / "demo.duckdb")
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE SCHEMA held")
        con.execute(f"""CREATE TABLE held.events AS FROM raw.events WHERE event_at >= TIMESTAMP '{NIGHT_1}'
                        OR (event_at >= TIMESTAMP '{NIGHT_1}' - INTERVAL 2 DAY AND hash(event_id) % 5 = 0)""")
        con.execute(f"CREATE TABLE held.assignments AS FROM raw.assignments WHERE assigned_at >= TIMESTAMP '{NIGHT_1}'")
        con.execute("DELETE FROM raw.events WHERE event_id IN (SELECT event_id FROM held.events)")
        con.execute(f"DELETE FROM raw.assignments WHERE assigned_at >= TIMESTAMP '{NIGHT_1}'")
    build(path, NIGHT_1)
    night_1 = sql(path, "SELECT count(*) AS n FROM int_user_metric_counts")["n"][0]
    with duckdb.connect(str(path)) as con:
        con.execute(f"INSERT INTO raw.events FROM held.events WHERE event_at < TIMESTAMP '{NIGHT_2}'")
        con.execute(f"INSERT INTO raw.assignments FROM held.assignments WHERE assigned_at < TIMESTAMP '{NIGHT_2}'")
        # a retry of a counted event, delivered for another user of the same experiment a minute earlier: the
        # earliest occurrence counts, so the event changes hands
        moved = con.execute(f"""
            SELECT e.event_id, e.event_at, other.user_id
            FROM raw.events e
            JOIN raw.assignments a ON a.user_id = e.user_id AND a.experiment_id = 'onboarding_flow'
            JOIN raw.assignments other ON other.experiment_id = 'onboarding_flow' AND other.user_id <> e.user_id
                 AND other.assigned_at < e.event_at - INTERVAL 1 HOUR
            WHERE e.event_at >= TIMESTAMP '{NIGHT_1}' - INTERVAL 1 DAY AND e.event_at < TIMESTAMP '{NIGHT_1}'
            ORDER BY e.event_id, other.user_id LIMIT 1""").fetchone()
        con.execute("INSERT INTO raw.events SELECT ?, ?, event_name, ? - INTERVAL 1 MINUTE FROM raw.events "
                    "WHERE event_id = ? LIMIT 1", [moved[0], moved[2], moved[1], moved[0]])
        # a late exposure, half a day before a user's first one (inside the look-back): their first exposure moves
        late = con.execute(f"""INSERT INTO raw.assignments
            SELECT experiment_id, user_id, variant, assigned_at - INTERVAL 12 HOUR FROM raw.assignments
            WHERE experiment_id = 'onboarding_flow' AND user_id = (
                SELECT min(user_id) FROM (
                    SELECT user_id FROM raw.assignments WHERE experiment_id = 'onboarding_flow' GROUP BY user_id
                    HAVING min(assigned_at) >= TIMESTAMP '{NIGHT_1}' - INTERVAL 2 DAY AND min(assigned_at) < TIMESTAMP '{NIGHT_1}'))
            ORDER BY assigned_at LIMIT 1""")
        assert late.fetchone()[0] == 1
        # a user counted on night 1 now also sees the other arm: left out from night 2 on
        con.execute(f"""INSERT INTO raw.assignments
            SELECT experiment_id, user_id, CASE WHEN variant = 'control' THEN 'treatment' ELSE 'control' END,
                   TIMESTAMP '{NIGHT_1}' + INTERVAL 1 HOUR
            FROM raw.assignments WHERE experiment_id = 'onboarding_flow' ORDER BY user_id LIMIT 1""")
        con.execute(f"INSERT INTO raw.assignments VALUES ('onboarding_flow', 'new_user', 'control', "
                    f"TIMESTAMP '{NIGHT_1}' + INTERVAL 2 HOUR)")
        con.execute(f"INSERT INTO raw.events SELECT 'new_user_event', 'new_user', event_name, "
                    f"TIMESTAMP '{NIGHT_1}' + INTERVAL 3 HOUR FROM raw.metrics LIMIT 1")
        # a retry of an old event of a user no new row touches, delivered late for the new user: it stays the
        # old user's (its earliest occurrence), though only the new user is recounted
        con.execute(f"""INSERT INTO raw.events SELECT event_id, 'new_user', event_name, TIMESTAMP '{NIGHT_1}' + INTERVAL 4 HOUR
            FROM raw.events WHERE event_id = (
                SELECT min(e.event_id) FROM raw.events e
                JOIN raw.assignments a ON a.user_id = e.user_id AND a.experiment_id = 'onboarding_flow'
                WHERE e.event_at < TIMESTAMP '{NIGHT_1}' - INTERVAL 5 DAY
                  AND e.user_id NOT IN (SELECT user_id FROM raw.events WHERE event_at >= TIMESTAMP '{NIGHT_1}' - INTERVAL 3 DAY))""")
    build(path, NIGHT_2)
    return path, night_1


def test_a_night_recounts_only_the_users_new_rows_touch_and_equals_a_full_rebuild(two_nights, tmp_path):
    path, night_1 = two_nights
    recounted = sql(path, f"""SELECT DISTINCT experiment_id, user_id FROM int_user_metric_counts
                              WHERE counted_until = TIMESTAMP '{NIGHT_2}' ORDER BY ALL""")
    # the running experiments' users with an exposure or an event stamped in the look-back (3 days before
    # night 1's as-of) or later
    touched = sql(path, f"""
        SELECT DISTINCT a.experiment_id, a.user_id
        FROM raw.assignments a JOIN raw.experiments x USING (experiment_id)
        WHERE x.end_at IS NULL AND a.assigned_at >= x.start_at AND a.assigned_at < TIMESTAMP '{NIGHT_2}'
          AND (a.assigned_at >= TIMESTAMP '{NIGHT_1}' - INTERVAL 3 DAY
               OR a.user_id IN (SELECT user_id FROM raw.events WHERE event_at >= TIMESTAMP '{NIGHT_1}' - INTERVAL 3 DAY
                                AND event_at < TIMESTAMP '{NIGHT_2}'))
        ORDER BY ALL""")
    assert recounted.equals(touched)
    kept = sql(path, f"SELECT count(*) AS n FROM int_user_metric_counts WHERE counted_until = TIMESTAMP '{NIGHT_1}'")
    assert kept["n"][0] > 0  # the others' rows are night 1's
    counts = {"n": sql(path, "SELECT count(*) AS n FROM int_user_metric_counts")["n"][0]}
    assert counts["n"] > night_1
    assert sql(path, "SELECT count(*) AS n FROM fct_user_cv_counts WHERE user_id = 'new_user'")["n"][0] > 0
    assert differences(path, rebuilt_from_scratch(path, tmp_path / "rebuilt", NIGHT_2)) == dict.fromkeys(MARTS, 0)


def test_an_earlier_as_of_a_changed_definition_and_an_extended_end_recount_the_experiments_they_touch(
        two_nights, tmp_path):
    path, _ = two_nights
    path = copy_warehouse(path, tmp_path / "nights")
    build(path, NIGHT_1)  # a backfill: the running experiments' windows end earlier than what was counted
    assert differences(path, rebuilt_from_scratch(path, tmp_path / "earlier", NIGHT_1)) == dict.fromkeys(MARTS, 0)
    with duckdb.connect(str(path)) as con:
        con.execute("UPDATE raw.experiments SET start_at = start_at + INTERVAL 1 DAY WHERE experiment_id = 'pricing_copy'")
    build(path, NIGHT_2)
    assert differences(path, rebuilt_from_scratch(path, tmp_path / "changed", NIGHT_2)) == dict.fromkeys(MARTS, 0)
    later = NIGHT_2 + timedelta(days=9)
    build(path, later)
    # checkout_button ended on 2026-11-25, before this night's look-back; extended, its window grows by
    # days nobody looked at since: it is recounted whole
    with duckdb.connect(str(path)) as con:
        con.execute("UPDATE raw.experiments SET end_at = TIMESTAMP '2026-12-01' WHERE experiment_id = 'checkout_button'")
    build(path, later)
    assert differences(path, rebuilt_from_scratch(path, tmp_path / "extended", later)) == dict.fromkeys(MARTS, 0)
    # a metric added changes every experiment's definition: the night counts everyone again, as a full build
    with duckdb.connect(str(path)) as con:
        con.execute("INSERT INTO raw.metrics (metric_id, event_name) VALUES ('carts', 'add_to_cart')")
    build(path, later)
    assert differences(path, rebuilt_from_scratch(path, tmp_path / "metric", later)) == dict.fromkeys(MARTS, 0)


def test_a_correction_older_than_the_look_back_needs_a_full_refresh(two_nights, tmp_path):
    path, _ = two_nights
    path = copy_warehouse(path, tmp_path / "refresh")
    with duckdb.connect(str(path)) as con:  # an event deleted from the raw log a week after it happened
        # a count metric's event of a user no row since touched, counted in the window (one delivery)
        deleted = con.execute(f"""DELETE FROM raw.events WHERE event_id = (
            SELECT max(e.event_id) FROM raw.events e
            JOIN stg_metrics m ON m.event_name = e.event_name AND m.metric_type = 'count'
            JOIN fct_user_cv_counts f ON f.user_id = e.user_id AND f.metric_id = m.metric_id
                 AND f.experiment_id = 'onboarding_flow' AND f.first_exposed_at <= e.event_at
            WHERE e.event_at < TIMESTAMP '{NIGHT_1}' - INTERVAL 5 DAY
              AND e.event_id IN (SELECT event_id FROM raw.events GROUP BY event_id HAVING count(*) = 1)
              AND e.user_id NOT IN (SELECT user_id FROM raw.events WHERE event_at >= TIMESTAMP '{NIGHT_1}' - INTERVAL 3 DAY)
              AND e.user_id NOT IN (SELECT user_id FROM raw.assignments WHERE assigned_at >= TIMESTAMP '{NIGHT_1}' - INTERVAL 3 DAY))""")
        assert deleted.fetchone()[0] == 1
    build(path, NIGHT_2)  # the night does not look that far back: the user keeps the event
    assert differences(path, rebuilt_from_scratch(path, tmp_path / "stale", NIGHT_2))["fct_user_cv_counts"] > 0
    build(path, NIGHT_2, full_refresh=True)  # a full refresh recounts everyone
    assert sql(path, f"SELECT count(*) AS n FROM int_user_metric_counts WHERE counted_until = TIMESTAMP '{NIGHT_1}'"
               )["n"][0] == 0
    assert differences(path, rebuilt_from_scratch(path, tmp_path / "full", NIGHT_2)) == dict.fromkeys(MARTS, 0)
