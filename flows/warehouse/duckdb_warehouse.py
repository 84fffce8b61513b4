"""The DuckDB warehouse: the raw contract, the glmm.* result tables, histograms, runs.

:class:`DuckDBWarehouse` implements the seam (:class:`flows.warehouse.Warehouse`)
for one DuckDB file. Result-table columns come from :mod:`glmm_model.schema`, so
the engine's tables and the warehouse's cannot drift apart.

A DuckDB file has one writer or many readers: every connection here is short
(opened, used, closed, so dbt can open the file next), and a file another
process holds is retried with backoff (``$GLMM_AB_LOCK_TIMEOUT``). Every write of
a run happens in one transaction: a run's results appear whole or not at all,
and earlier runs are never touched.
"""
from __future__ import annotations

import json
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

from glmm_model.schema import SCHEMAS

from ..clock import utc_now
from .run_lock import run_lock
from .raw_contract import OPTIONAL_RAW_DDL, RAW_DDL, contract_problems, load_columns
from . import (FIT_INPUTS_COLUMNS, RESULT_SCHEMA, PairHistogram, Publication, RunRecord, WarehouseBusy, WarehouseError,
               earlier_fits_from, histogram_pairs, histogram_sql, require_known_tables, result_tables,
               segment_histogram_sql, stage_seconds_json)
_SQL_TYPES = {pl.Float64: "DOUBLE", pl.Int64: "BIGINT", pl.String: "VARCHAR", pl.Boolean: "BOOLEAN"}
_KEY_COLUMNS = "run_id VARCHAR NOT NULL, experiment_id VARCHAR NOT NULL, metric_id VARCHAR NOT NULL"

RUNS_DDL = (
    "run_id VARCHAR PRIMARY KEY, as_of TIMESTAMP NOT NULL, started_at TIMESTAMP NOT NULL, "
    "finished_at TIMESTAMP NOT NULL, status VARCHAR NOT NULL, package_version VARCHAR NOT NULL, "
    "config JSON NOT NULL, message VARCHAR, stage_seconds JSON"
)
FIT_FAILURES_DDL = f"{_KEY_COLUMNS}, error VARCHAR NOT NULL"
FIT_INPUTS_DDL = "run_id VARCHAR NOT NULL, " + ", ".join(f"{c} VARCHAR NOT NULL" for c in FIT_INPUTS_COLUMNS)
PUBLICATIONS_DDL = ("run_id VARCHAR NOT NULL, attempted_at TIMESTAMP NOT NULL, status VARCHAR NOT NULL, "
                    "bi_path VARCHAR, message VARCHAR, stage_seconds JSON")


def result_table_ddl(table: str) -> str:
    columns = ", ".join(f"{name} {_SQL_TYPES[dtype]}" for name, dtype in SCHEMAS[table].items())
    return f"{_KEY_COLUMNS}, {columns}"


def lock_timeout() -> float:
    """Seconds to keep retrying a warehouse another process holds ($GLMM_AB_LOCK_TIMEOUT, default 120)."""
    try:
        return max(0.0, float(os.environ.get("GLMM_AB_LOCK_TIMEOUT", "120")))
    except ValueError as exc:
        raise WarehouseError(f"GLMM_AB_LOCK_TIMEOUT must be a number of seconds, got {os.environ['GLMM_AB_LOCK_TIMEOUT']!r}") from exc


def _is_lock_error(exc: Exception) -> bool:
    """DuckDB's 'Could not set lock on file ...: Conflicting lock is held': the word, not the letters
    (dbt's "placed within a conditional block" is no reason to wait and retry)."""
    return re.search(r"\block\b", str(exc), re.IGNORECASE) is not None


def open_with_retry(path: Path, read_only: bool, timeout: float | None = None):
    """duckdb.connect, retried with exponential backoff (0.5 s doubling, at most 10 s) while another
    process holds the file's lock; then a WarehouseError that says who holds it."""
    timeout = lock_timeout() if timeout is None else timeout
    deadline = time.monotonic() + timeout
    delay = 0.5
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            if not _is_lock_error(exc):
                raise WarehouseError(f"cannot open warehouse {path}: {exc}") from exc
            left = deadline - time.monotonic()
            if left <= 0:
                raise WarehouseBusy(
                    f"warehouse {path} is locked by another process; gave up after {timeout:.0f} s of retries "
                    f"(close the other writer, or point BI tools at the published copy): {exc}"
                ) from exc
            time.sleep(min(delay, left))
            delay = min(delay * 2, 10.0)


@contextmanager
def connect(path: str | Path, read_only: bool = False, lock_wait: float | None = None):
    """A DuckDB connection, closed on exit (dbt must not meet an open writer).

    A file locked by another process is retried with backoff for ``lock_wait`` seconds
    (default ``lock_timeout()``).
    """
    path = Path(path)
    if read_only and not path.exists():
        raise WarehouseError(f"warehouse file not found: {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    con = open_with_retry(path, read_only, lock_wait)
    try:
        yield con
    finally:
        con.close()




def name(con, schema: str, table: str | None = None) -> str:
    """A schema or table named with the connection's own catalog. DuckDB names a file's catalog after
    its stem, so in ``glmm.duckdb`` (or ``raw.duckdb``) a two-part ``glmm.runs`` is ambiguous."""
    catalog = con.execute("SELECT current_database()").fetchone()[0]
    parts = [catalog, schema] + ([table] if table else [])
    return ".".join('"' + part.replace('"', '""') + '"' for part in parts)


def query(con, sql: str, params: list | None = None) -> pl.DataFrame:
    """Run a query with bound parameters; rows come back through Arrow as polars."""
    return pl.from_arrow(con.execute(sql, params or []).to_arrow_table())


def create_raw_tables(con) -> None:
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {name(con, 'raw')}")
    for table, ddl in RAW_DDL.items():
        con.execute(f"CREATE TABLE IF NOT EXISTS {name(con, 'raw', table)} ({ddl})")


# What each raw column may be. Ids and names: text or whole numbers (staging casts them to
# text). Times: TIMESTAMP, taken as UTC, or TIMESTAMP WITH TIME ZONE, converted to UTC
# explicitly; text timestamps are refused: their time zone would be a guess.
_TEXT_TYPES = {"VARCHAR", "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT",
               "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT"}
_TIME_TYPES = {"TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS", "DATE"}


_NUMBER_TYPES = _TEXT_TYPES - {"VARCHAR"} | {"DOUBLE", "FLOAT", "REAL"}


_ACCEPTED = {
    "TIMESTAMP": (_TIME_TYPES, "TIMESTAMP (UTC) or TIMESTAMP WITH TIME ZONE"),
    "DOUBLE": (_NUMBER_TYPES, "a number type (DOUBLE, DECIMAL, INTEGER, ...)"),
    "VARCHAR": (_TEXT_TYPES, "VARCHAR or a whole-number type"),
}


def check_raw_contract(con) -> None:
    """Raise WarehouseError naming every raw table or column the contract needs and the warehouse
    lacks, and every column of a type the models cannot read safely (the type found and expected)."""
    have = con.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'raw' AND table_catalog = current_database()"
    ).fetchall()
    columns: dict[str, dict[str, str]] = {}
    for table, column, data_type in have:
        columns.setdefault(table, {})[column] = data_type.upper()
    problems = contract_problems(columns, _ACCEPTED, "VARCHAR")
    if problems:
        raise WarehouseError("the warehouse does not follow the raw contract: " + "; ".join(problems))


def create_result_tables(con) -> None:
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {name(con, RESULT_SCHEMA)}")
    con.execute(f"CREATE TABLE IF NOT EXISTS {name(con, RESULT_SCHEMA, 'runs')} ({RUNS_DDL})")
    # a column added since the table was made; earlier rows: NULL
    con.execute(f"ALTER TABLE {name(con, RESULT_SCHEMA, 'runs')} ADD COLUMN IF NOT EXISTS stage_seconds JSON")
    con.execute(f"CREATE TABLE IF NOT EXISTS {name(con, RESULT_SCHEMA, 'fit_failures')} ({FIT_FAILURES_DDL})")
    con.execute(f"CREATE TABLE IF NOT EXISTS {name(con, RESULT_SCHEMA, 'fit_inputs')} ({FIT_INPUTS_DDL})")
    con.execute(f"CREATE TABLE IF NOT EXISTS {name(con, RESULT_SCHEMA, 'publications')} ({PUBLICATIONS_DDL})")
    con.execute(f"ALTER TABLE {name(con, RESULT_SCHEMA, 'publications')} ADD COLUMN IF NOT EXISTS stage_seconds JSON")
    for table, columns in SCHEMAS.items():
        con.execute(f"CREATE TABLE IF NOT EXISTS {name(con, RESULT_SCHEMA, table)} ({result_table_ddl(table)})")
        for column, dtype in columns.items():  # a column added since the table was made; earlier rows: NULL
            con.execute(f"ALTER TABLE {name(con, RESULT_SCHEMA, table)} ADD COLUMN IF NOT EXISTS {column} {_SQL_TYPES[dtype]}")


def load_histograms(con, use_exposure: bool) -> list[PairHistogram]:
    """Every pair's histogram (with its experiment's control variant) from ONE query, so one snapshot."""
    rows = query(con, histogram_sql(use_exposure, name(con, "main", "fct_cv_count_histogram"),
                                    name(con, "main", "stg_experiments"), name(con, "main", "stg_metrics")))
    planned = con.execute(f"SELECT experiment_id, variant, traffic_weight FROM {name(con, 'main', 'stg_variants')} "
                          "ORDER BY experiment_id, variant").fetchall()
    segments = query(con, segment_histogram_sql(use_exposure, name(con, "main", "fct_segment_histogram"),
                                                name(con, "main", "stg_metrics")))
    return histogram_pairs(rows, planned, use_exposure, segments)


@contextmanager
def transaction(con):
    """BEGIN ... COMMIT, or ROLLBACK and re-raise on any error (interrupts included)."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def append(con, table: str, frame: pl.DataFrame) -> None:
    """Insert a frame's rows into ``table`` by column name, through Arrow."""
    if frame.height == 0:
        return
    con.register("staged_rows", frame.to_arrow())
    try:
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM staged_rows")
    finally:
        con.unregister("staged_rows")


def _insert_run(con, run: RunRecord, status: str, message: str | None) -> None:
    con.execute(
        f"INSERT INTO {name(con, RESULT_SCHEMA, 'runs')} (run_id, as_of, started_at, finished_at, status, "
        "package_version, config, message, stage_seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [run.run_id, run.as_of, run.started_at, utc_now(), status, run.package_version,
         json.dumps(run.config, default=str), message, stage_seconds_json(run.stage_seconds)],
    )


def write_run(con, run: RunRecord, results: dict[str, pl.DataFrame], failures: pl.DataFrame,
              message: str | None) -> None:
    """Append one successful run: the runs row and every result table, in ONE transaction.

    ``results`` maps table name -> frame with experiment_id, metric_id and the engine's
    columns (and ``fit_inputs``). On any error the transaction rolls back and nothing of the run remains.
    """
    require_known_tables(results, result_tables(), "result")
    with transaction(con):
        for table, frame in {**results, "fit_failures": failures}.items():
            if frame.height:  # an empty frame may have no columns at all
                append(con, name(con, RESULT_SCHEMA, table), frame.with_columns(pl.lit(run.run_id).alias("run_id")))
        _insert_run(con, run, "succeeded", message)


def record_failed_run(con, run: RunRecord, message: str) -> None:
    """A failed run leaves one glmm.runs row with its reason and nothing else."""
    _insert_run(con, run, "failed", message)


def load_raw(con, tables: dict[str, pl.DataFrame]) -> None:
    """Replace the contents of raw tables with the given frames, in one transaction (an optional
    table, such as raw.variants, is created when given)."""
    require_known_tables(tables, {*RAW_DDL, *OPTIONAL_RAW_DDL}, "raw")
    create_raw_tables(con)
    for table in set(tables) & set(OPTIONAL_RAW_DDL):
        con.execute(f"CREATE TABLE IF NOT EXISTS {name(con, 'raw', table)} ({OPTIONAL_RAW_DDL[table]})")
    for table, frame in tables.items():  # optional columns the frames carry (raw.metrics' type and role)
        for column, ddl_type in load_columns(table, frame.columns).items():
            con.execute(f"ALTER TABLE {name(con, 'raw', table)} ADD COLUMN IF NOT EXISTS {column} {ddl_type}")
    with transaction(con):
        for table, frame in tables.items():
            con.execute(f"DELETE FROM {name(con, 'raw', table)}")
            append(con, name(con, "raw", table), frame)


def read_raw_source(path: Path) -> dict[str, pl.DataFrame]:
    """Raw logs to land (``glmm-ab load-raw``): a DuckDB file's ``raw`` tables, or a folder of
    ``<table>.parquet`` files, one per raw table. The four contract tables are required,
    ``variants`` is optional; WarehouseError names what is missing."""
    wanted = [*RAW_DDL, *OPTIONAL_RAW_DDL]
    if path.is_dir():
        tables = {t: pl.read_parquet(path / f"{t}.parquet") for t in wanted if (path / f"{t}.parquet").is_file()}
        where = f"folder {path} (expected {', '.join(f'{t}.parquet' for t in RAW_DDL)})"
    elif path.is_file():
        try:
            with duckdb.connect(str(path), read_only=True) as con:
                present = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables "
                                                     "WHERE table_schema = 'raw'").fetchall()}
                tables = {t: query(con, f'SELECT * FROM raw."{t}"') for t in wanted if t in present}
        except duckdb.Error as exc:
            raise WarehouseError(f"cannot read raw tables from {path}: {exc}") from exc
        where = f"DuckDB file {path}"
    else:
        raise WarehouseError(f"raw source not found: {path} (a DuckDB file or a folder of Parquet files)")
    missing = [t for t in RAW_DDL if t not in tables]
    if missing:
        raise WarehouseError(f"the {where} lacks raw table(s) {', '.join(missing)}")
    return tables


def recent_runs(con, limit: int = 10) -> pl.DataFrame:
    """The newest runs with how many pairs each fitted (sampled), reused (their last fit's results: inputs
    unchanged) and failed, and whether its BI copy was published
    (``published``: the last attempt's status, NULL when none was made; ``publish_message``: why it failed)."""
    if table_exists(con, RESULT_SCHEMA, "publications"):
        last_attempt = f"""(SELECT {{}} FROM {name(con, RESULT_SCHEMA, "publications")} p WHERE p.run_id = r.run_id
                            ORDER BY p.attempted_at DESC LIMIT 1)"""
        published, publish_message = last_attempt.format("p.status"), last_attempt.format("p.message")
    else:  # a warehouse from before publications were recorded
        published = publish_message = "CAST(NULL AS VARCHAR)"
    reused = "0"
    if table_exists(con, RESULT_SCHEMA, "fit_inputs"):  # else a warehouse from before fits were reused
        reused = (f"(SELECT count(*) FROM {name(con, RESULT_SCHEMA, 'fit_inputs')} i "
                  "WHERE i.run_id = r.run_id AND i.fitted_in_run_id <> i.run_id)")
    return query(con, f"""
        SELECT r.run_id, r.as_of, r.finished_at, r.status,
               (SELECT count(*) FROM {name(con, RESULT_SCHEMA, "diagnostics")} d WHERE d.run_id = r.run_id)
                 - {reused} AS pairs_fitted,
               {reused} AS pairs_reused,
               (SELECT count(*) FROM {name(con, RESULT_SCHEMA, "fit_failures")} f WHERE f.run_id = r.run_id) AS pairs_failed,
               r.message, {published} AS published, {publish_message} AS publish_message
        FROM {name(con, RESULT_SCHEMA, "runs")} r ORDER BY r.finished_at DESC, r.run_id DESC LIMIT ?
    """, [limit])


def record_publication(con, run_id: str, status: str, bi_path: str | None, message: str | None,
                       stage_seconds: dict[str, float] | None = None) -> None:
    con.execute(f"INSERT INTO {name(con, RESULT_SCHEMA, 'publications')} "
                "(run_id, attempted_at, status, bi_path, message, stage_seconds) VALUES (?, ?, ?, ?, ?, ?)",
                [run_id, utc_now(), status, bi_path, message, stage_seconds_json(stage_seconds or {})])


def table_exists(con, schema: str, table: str) -> bool:
    return con.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
                       [schema, table]).fetchone()[0] > 0


def experiment_health(con) -> pl.DataFrame:
    """rpt_experiment_health, or an empty frame before the first successful run built it."""
    if not table_exists(con, "main", "rpt_experiment_health"):
        return pl.DataFrame()
    return query(con, "SELECT experiment_id, metric_id, health_status, health_reasons "
                      f"FROM {name(con, 'main', 'rpt_experiment_health')} ORDER BY experiment_id, metric_id")


@dataclass(frozen=True)
class DuckDBWarehouse:
    """A DuckDB file as the pipeline's warehouse (dbt target ``duckdb`` of ``profiles.yml``)."""

    path: Path
    engine = "duckdb"
    dbt_target = "duckdb"

    def release_dbt(self) -> None:
        """Close the DuckDB instance dbt-duckdb keeps open between calls (a class-level environment), so the
        file is free for the flow, another process, or dbt's next call on another warehouse."""
        from dbt.adapters.duckdb.connections import DuckDBConnectionManager

        with DuckDBConnectionManager._LOCK:
            env, DuckDBConnectionManager._ENV = DuckDBConnectionManager._ENV, None
            if env is not None:
                env.close()

    def describe(self) -> str:
        return str(self.path)

    def exists(self) -> bool:
        return self.path.is_file()

    def dbt_env(self) -> dict[str, str]:
        return {"GLMM_AB_WAREHOUSE": str(self.path.resolve())}

    def is_busy(self, error: BaseException) -> bool:
        return isinstance(error, WarehouseBusy) or _is_lock_error(error)

    def run_lock(self, timeout: float):
        return run_lock(self.path, timeout)

    def check_raw_contract(self) -> None:
        with connect(self.path) as con:
            check_raw_contract(con)

    def ensure_result_tables(self) -> None:
        with connect(self.path) as con:
            create_result_tables(con)

    def load_histograms(self, use_exposure: bool) -> list[PairHistogram]:
        with connect(self.path, read_only=True) as con:
            return load_histograms(con, use_exposure)

    def write_run(self, run: RunRecord, results: dict[str, pl.DataFrame], failures: pl.DataFrame,
                  message: str | None) -> None:
        with connect(self.path) as con:
            write_run(con, run, results, failures, message)

    def earlier_fits(self, digests: dict[tuple[str, str], str]) -> dict[str, pl.DataFrame]:
        with connect(self.path, read_only=True) as con:
            return earlier_fits_from(lambda sql: query(con, sql), lambda text: "'" + text.replace("'", "''") + "'",
                                     name(con, RESULT_SCHEMA), digests)

    def record_failed_run(self, run: RunRecord, message: str) -> None:
        with connect(self.path, lock_wait=5) as con:
            create_result_tables(con)
            record_failed_run(con, run, message)

    def has_run(self, run_id: str) -> bool:
        if not self.exists():
            return False
        with connect(self.path, read_only=True, lock_wait=10) as con:
            return table_exists(con, RESULT_SCHEMA, "runs") and con.execute(
                f"SELECT count(*) FROM {name(con, RESULT_SCHEMA, 'runs')} WHERE run_id = ?", [run_id]).fetchone()[0] > 0

    def record_publication(self, run_id: str, status: str, bi_path: str | None, message: str | None,
                           stage_seconds: dict[str, float] | None = None) -> None:
        with connect(self.path, lock_wait=30) as con:
            create_result_tables(con)
            record_publication(con, run_id, status, bi_path, message, stage_seconds)

    def recent_runs(self, limit: int) -> pl.DataFrame | None:
        with connect(self.path, read_only=True, lock_wait=10) as con:
            if not table_exists(con, RESULT_SCHEMA, "runs"):
                return None
            return recent_runs(con, limit)

    def experiment_health(self) -> pl.DataFrame:
        with connect(self.path, read_only=True, lock_wait=10) as con:
            return experiment_health(con)

    def default_bi_path(self) -> Path:
        from .duckdb_publish import default_bi_path

        return default_bi_path(self.path)

    def publish(self, run_id: str, bi_path: str | Path | None = None,
                parquet_dir: str | Path | None = None, per_user: bool = False) -> Publication:
        from .duckdb_publish import publish

        return publish(self.path, run_id, bi_path, parquet_dir, per_user=per_user)

    def load_raw(self, tables: dict[str, pl.DataFrame]) -> None:
        with connect(self.path) as con:
            load_raw(con, tables)

    def reset(self) -> None:
        self.path.unlink(missing_ok=True)
        Path(f"{self.path}.wal").unlink(missing_ok=True)
