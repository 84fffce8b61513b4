"""Benchmark 3: ``glmm-ab run`` end to end on 10 experiments x 2 metrics x 1,000,000 users (~20M events).

    python tests/benchmarks/end_to_end.py [--users 1000000] [--experiments 10] [--keep PATH [--reuse]]
                                          [--engines duckdb,spark] [--nights 2] [--refit-all] [--new-day]

Builds the raw tables with DuckDB SQL (users split evenly between control and
treatment, each user-metric's event count geometric with mean ~1, +5% for the
treatment, times over two weeks), then times ``glmm-ab run`` twice, each in a
fresh process as a user runs it, and prints the flow's per-stage breakdown and
the wall time of both. The first run may trace and compile sampler programs for
shapes it has not seen (an empty cache: the first night); the second is every
night after. ``--keep PATH --reuse`` uses a warehouse already built there. Nights after the first find the same
rows, so each pair reuses its last fit (``glmm.fit_inputs``); ``--refit-all`` then times one more
night on the same rows with ``glmm-ab run --refit-all`` (every pair fitted again), side by side.
``--new-day`` (DuckDB) then lands one more day of raw rows (the events of 2026-10-15, the busiest
day, again on 2026-11-01 under new event ids, and 2026-10-14's exposures again on 2026-11-01 as
new users) and times the night of 2026-11-02 twice: incremental (int_user_metric_counts recounts
the users those rows touch; every pair's histogram changed, so every pair is fitted) and with
``--full-refresh --refit-all`` (every user recounted, every pair fitted: the whole cost), then
checks that the marts of the two are identical, row for row.
``--engines duckdb,spark`` also lands the same raw tables in a Spark warehouse
(``glmm-ab load-raw``, timed on its own) and runs the same nights on Spark local
mode, side by side (needs the spark extra and a JDK). ``--nights 1`` times one night per
engine (a Spark night at 1,000,000 users takes many minutes).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

BIN = Path(sys.executable).parent

RAW_SQL = """
CREATE SCHEMA raw;
CREATE TABLE raw.experiments AS
    SELECT 'exp' || lpad(CAST(i AS VARCHAR), 2, '0') AS experiment_id, 'control' AS control_variant,
           TIMESTAMP '2026-10-01' AS start_at, CAST(NULL AS TIMESTAMP) AS end_at
    FROM range({experiments}) t(i);
CREATE TABLE raw.metrics AS
    SELECT * FROM (VALUES ('purchases', 'purchase'), ('add_to_cart', 'add_to_cart')) t(metric_id, event_name);
CREATE TABLE raw.assignments AS
    SELECT 'exp' || lpad(CAST(e AS VARCHAR), 2, '0') AS experiment_id,
           'u' || e || '_' || u AS user_id,
           CASE WHEN hash(e, u) % 2 = 0 THEN 'control' ELSE 'treatment' END AS variant,
           TIMESTAMP '2026-10-01' + to_seconds(CAST(hash(e, u, 7) % 1209600 AS BIGINT)) AS assigned_at
    FROM range({experiments}) a(e), range({users}) b(u);
CREATE TABLE raw.events AS
    WITH user_metrics AS (
        SELECT a.user_id, a.assigned_at, m.event_name,
               CAST(floor(-ln(random()) * CASE WHEN a.variant = 'treatment' THEN 1.52 ELSE 1.45 END) AS BIGINT) AS n
        FROM raw.assignments a CROSS JOIN raw.metrics m
    ),
    exploded AS (
        SELECT user_id, assigned_at, event_name, unnest(range(n)) AS k FROM user_metrics WHERE n > 0
    )
    SELECT 'ev' || CAST(row_number() OVER () AS VARCHAR) AS event_id, user_id, event_name,
           assigned_at + to_seconds(CAST(random() * 1209600 AS BIGINT)) AS event_at
    FROM exploded;
"""


NEW_DAY_EVENTS = "2026-10-15's events again on 2026-11-01 (new event ids, the same users)"
NEW_DAY_EXPOSURES = "2026-10-14's exposures again on 2026-11-01 (new users)"
NEW_DAY_SQL = """
INSERT INTO raw.events SELECT 'day2_' || event_id, user_id, event_name, event_at + INTERVAL 17 DAY FROM raw.events
    WHERE event_at >= TIMESTAMP '2026-10-15' AND event_at < TIMESTAMP '2026-10-16';
INSERT INTO raw.assignments SELECT experiment_id, 'day2_' || user_id, variant, assigned_at + INTERVAL 18 DAY
    FROM raw.assignments WHERE assigned_at >= TIMESTAMP '2026-10-14' AND assigned_at < TIMESTAMP '2026-10-15';
"""
MARTS = ("fct_user_cv_counts", "fct_cv_count_histogram", "fct_segment_histogram", "dq_assignment_conflicts",
         "dq_data_issues")


def timed_run(engine: str, location: list[str], as_of: str, *flags: str):
    """``glmm-ab run`` in a fresh process: its stage seconds (from its output) and wall time."""
    started = time.perf_counter()
    out = subprocess.run([str(BIN / "glmm-ab"), "run", *location, "--as-of", as_of, *flags], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if out.returncode != 0:
        sys.exit(f"glmm-ab run on {engine} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    stages = dict(re.findall(r"(\w+) ([\d.]+)s", out.stdout.split("seconds per stage:")[-1]))
    return (stages, wall), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--experiments", type=int, default=10)
    parser.add_argument("--keep", default=None, help="build the warehouse here and keep it")
    parser.add_argument("--reuse", action="store_true", help="with --keep: use the warehouse already there")
    parser.add_argument("--engines", default="duckdb", help="duckdb, spark or duckdb,spark")
    parser.add_argument("--nights", type=int, default=2, help="nights timed per engine")
    parser.add_argument("--refit-all", action="store_true",
                        help="then one more night on the same rows with --refit-all (every pair fitted again)")
    parser.add_argument("--new-day", action="store_true",
                        help="then one more day of raw rows: its night incremental and with --full-refresh (DuckDB)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.keep) if args.keep else Path(tmp) / "bench.duckdb"
        if not (args.reuse and path.exists()):
            path.unlink(missing_ok=True)
            started = time.perf_counter()
            con = duckdb.connect(str(path))
            con.execute("SELECT setseed(0.42)")
            con.execute(RAW_SQL.format(users=args.users, experiments=args.experiments))
            con.close()
            print(f"warehouse built in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        with duckdb.connect(str(path), read_only=True) as con:
            n_events = con.execute("SELECT count(*) FROM raw.events").fetchone()[0]
            n_assign = con.execute("SELECT count(*) FROM raw.assignments").fetchone()[0]
        engines = args.engines.split(",")
        locations = {"duckdb": ["--warehouse", str(path)]}
        loaded = None
        if "spark" in engines:
            spark_dir = path.with_name(f"{path.stem}_spark")
            started = time.perf_counter()
            out = subprocess.run([str(BIN / "glmm-ab"), "load-raw", str(path), "--engine", "spark",
                                  "--warehouse", str(spark_dir)], capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"glmm-ab load-raw failed ({out.returncode}):\n{out.stderr[-3000:]}")
            loaded = time.perf_counter() - started
            locations["spark"] = ["--engine", "spark", "--warehouse", str(spark_dir)]
        runs = {}
        for engine in engines:
            for night in range(args.nights):
                runs[engine, f"night {night + 1}"], out = timed_run(engine, locations[engine], "2026-11-01T00:00:00")
            if args.refit_all:
                runs[engine, "same rows, --refit-all"], out = timed_run(engine, locations[engine], "2026-11-01T00:00:00",
                                                                       "--refit-all")
        if args.new_day:
            with duckdb.connect(str(path)) as con:
                con.execute(NEW_DAY_SQL)
            runs["duckdb", "new day, incremental"], out = timed_run("duckdb", locations["duckdb"], "2026-11-02T00:00:00")
            with duckdb.connect(str(path)) as con:  # the incremental night's marts, kept aside (not timed)
                con.execute("CREATE OR REPLACE SCHEMA incremental_night")
                for mart in MARTS:
                    con.execute(f"CREATE TABLE incremental_night.{mart} AS FROM main.{mart}")
                recounted, users = con.execute(
                    "SELECT count(DISTINCT (experiment_id, user_id)) FILTER (WHERE counted_until = TIMESTAMP '2026-11-02'), "
                    "count(DISTINCT (experiment_id, user_id)) FROM main.int_user_metric_counts").fetchone()
            runs["duckdb", "new day, --full-refresh"], out = timed_run("duckdb", locations["duckdb"], "2026-11-02T00:00:00",
                                                                     "--full-refresh", "--refit-all")
            with duckdb.connect(str(path)) as con:
                differing = {mart: con.execute(
                    f"SELECT (SELECT count(*) FROM (FROM incremental_night.{mart} EXCEPT ALL FROM main.{mart}))"
                    f" + (SELECT count(*) FROM (FROM main.{mart} EXCEPT ALL FROM incremental_night.{mart}))").fetchone()[0]
                    for mart in MARTS}
                con.execute("DROP SCHEMA incremental_night CASCADE")
    columns = list(runs)
    print("| stage | " + " | ".join(f"{e} {n} (s)" for e, n in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for k in runs[columns[0]][0]:
        print(f"| {k} | " + " | ".join(f"{float(runs[c][0].get(k, 'nan')):.1f}" for c in columns) + " |")
    print("| **`glmm-ab run` wall time** (incl. Python start, Prefect's ephemeral API) | "
          + " | ".join(f"**{runs[c][1]:.1f}**" for c in columns) + " |")
    print(f"\n{args.experiments} experiments x 2 metrics x {args.users:,} users: {n_assign:,} assignments, "
          f"{n_events:,} events; default sampler (4 chains x (500 + 2000)); pairs fitted: "
          f"{len(re.findall(r' (ship|keep_control|inconclusive|invalid)$', out.stdout, re.M))} lift rows "
          f"in the last run's output."
          + (f" Landing the raw tables in Spark (glmm-ab load-raw from the DuckDB file): {loaded:.0f} s." if loaded else ""))
    if args.new_day:
        print(f"\nThe new day: {NEW_DAY_EVENTS} and {NEW_DAY_EXPOSURES}; the incremental night recounted "
              f"{recounted:,} of {users:,} experiment x user pairs. Marts of the incremental night that differ from "
              f"the full refresh's (rows, both ways): " + ", ".join(f"{m} {n}" for m, n in differing.items())
              + ("" if not any(differing.values()) else "  <-- NOT EQUAL"))


if __name__ == "__main__":
    main()
