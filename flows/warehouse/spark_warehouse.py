"""The Spark warehouse: the raw contract, the glmm.* result tables, histograms, runs, on Apache Spark.

:class:`SparkWarehouse` implements the seam (:class:`flows.warehouse.Warehouse`) on
a Spark session in this process: local mode (``local[2]``) by default, or the
cluster a job runs on (a Databricks job's driver), as ``$GLMM_AB_SPARK_MASTER``
and the Spark settings of the ``spark`` target in ``profiles.yml`` say. That target
is the one source of those settings: dbt (dbt-spark's ``session`` method, run in
this process, so one JVM and one metastore serve both) and this module read it.

Tables are plain Parquet, partitioned by ``run_id``. Spark has no multi-table
transaction, so the ``glmm.runs`` row is the commit marker: a run's result
partitions are written first (each an overwrite of that run's partition, so a
retried write never doubles rows), its ``runs`` row last. Every report model reads
results through a ``succeeded`` runs row, and the BI copy takes only rows of runs
that have one, so a run killed between two tables leaves nothing visible;
:meth:`SparkWarehouse.ensure_result_tables` drops such orphaned partitions at the
start of the next run (which holds the run lock, so no run is writing them).

Data moves between polars and Spark through Arrow (``toPandas``/``createDataFrame``
with Arrow on). Needs the ``spark`` extra (``pip install "glmm-ab[spark]"``) and a JDK.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from glmm_model.schema import SCHEMAS

from ..clock import utc_now
from . import (FIT_INPUTS_COLUMNS, RESULT_SCHEMA, PairHistogram, Publication, RunRecord, WarehouseBusy, WarehouseError,
               earlier_fits_from, histogram_pairs, histogram_sql, require_known_tables, result_tables,
               segment_histogram_sql, stage_seconds_json)
from .run_lock import run_lock
from .raw_contract import OPTIONAL_RAW_DDL, RAW_DDL, contract_problems, load_columns

_SQL_TYPES = {pl.Float64: "DOUBLE", pl.Int64: "BIGINT", pl.String: "STRING", pl.Boolean: "BOOLEAN"}
KEY_COLUMNS = [("experiment_id", "STRING"), ("metric_id", "STRING")]
# run_id comes last: Spark puts partition columns at the end of a table's schema
BOOKKEEPING = {
    "runs": [("as_of", "TIMESTAMP"), ("started_at", "TIMESTAMP"), ("finished_at", "TIMESTAMP"), ("status", "STRING"),
             ("package_version", "STRING"), ("config", "STRING"), ("message", "STRING"), ("stage_seconds", "STRING")],
    "fit_failures": KEY_COLUMNS + [("error", "STRING")],
    "fit_inputs": [(c, "STRING") for c in FIT_INPUTS_COLUMNS],
}
PUBLICATIONS = [("run_id", "STRING"), ("attempted_at", "TIMESTAMP"), ("status", "STRING"), ("bi_path", "STRING"),
                ("message", "STRING"), ("stage_seconds", "STRING")]

# What each raw column may be (Spark's type names). Ids and names: text or whole numbers;
# times: TIMESTAMP (UTC), TIMESTAMP_NTZ (taken as UTC) or DATE.
_TEXT_TYPES = {"STRING", "TINYINT", "SMALLINT", "INT", "BIGINT"}
_ACCEPTED = {
    "TIMESTAMP": ({"TIMESTAMP", "TIMESTAMP_NTZ", "DATE"}, "TIMESTAMP (UTC) or TIMESTAMP_NTZ"),
    "DOUBLE": (_TEXT_TYPES - {"STRING"} | {"DOUBLE", "FLOAT"}, "a number type (DOUBLE, DECIMAL, INT, ...)"),
    "VARCHAR": (_TEXT_TYPES, "STRING or a whole-number type"),
}


_started_for: Path | None = None  # the warehouse folder this process started Spark for


def _columns(table: str) -> list[tuple[str, str]]:
    """(name, Spark type) of a glmm table, run_id (the partition column) last."""
    if table in BOOKKEEPING:
        return BOOKKEEPING[table] + [("run_id", "STRING")]
    return KEY_COLUMNS + [(c, _SQL_TYPES[t]) for c, t in SCHEMAS[table].items()] + [("run_id", "STRING")]


def spark_settings(env: dict[str, str]) -> dict[str, str]:
    """The Spark settings of the ``spark`` target in the packaged ``profiles.yml``, rendered as dbt
    renders them (``env_var`` from ``env``, then the process environment)."""
    import yaml
    from jinja2 import Template

    from ..resources import dbt_profiles_dir

    profile = yaml.safe_load((dbt_profiles_dir() / "profiles.yml").read_text())
    parameters = profile["glmm_ab"]["outputs"]["spark"]["server_side_parameters"]

    def env_var(name: str, default: str | None = None) -> str:
        value = env.get(name, os.environ.get(name, default))
        if value is None:
            raise WarehouseError(f"profiles.yml needs the environment variable {name}")
        return value

    return {key: Template(str(value)).render(env_var=env_var) for key, value in parameters.items()}


_POLARS_TYPES = {"STRING": pl.String, "TIMESTAMP": pl.Datetime("us")}


def _one_row(values: dict, columns: list[tuple[str, str]]) -> pl.DataFrame:
    """One bookkeeping row, typed from the table's columns; times as naive UTC (the session's zone)."""
    values = {k: v.replace(tzinfo=None) if hasattr(v, "tzinfo") else v for k, v in values.items()}
    return pl.DataFrame([values], schema={c: _POLARS_TYPES[t] for c, t in columns})


def _as_contract_type(frame: pl.DataFrame, column: str, spark_type: str) -> pl.Expr:
    """A raw column as the contract types it: text ids as strings, times as naive UTC, weights as floats."""
    dtype = frame.schema[column]
    if spark_type == "TIMESTAMP":
        if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
            return pl.col(column).dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        return pl.col(column).cast(pl.Datetime("us"))
    return pl.col(column).cast(pl.String if spark_type == "STRING" else pl.Float64)


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class SparkWarehouse:
    """A Spark warehouse whose folder (tables and local metastore) is ``root`` (``$GLMM_AB_SPARK_DIR``)."""

    root: Path
    engine = "spark"
    dbt_target = "spark"

    def release_dbt(self) -> None:
        """Nothing to release: dbt-spark's session method shares this process's Spark session, which stays."""

    # -- the session ------------------------------------------------------------------------------
    def session(self):
        """This process's Spark session, started with the profile's settings on first use."""
        global _started_for
        try:
            from pyspark.sql import SparkSession
        except ImportError as exc:
            raise WarehouseError("the Spark engine needs pyspark: pip install 'glmm-ab[spark]' "
                                 "(and a JDK: apt-get install openjdk-17-jre-headless)") from exc
        settings = spark_settings(self.dbt_env())
        active = SparkSession.getActiveSession()
        if active is not None:
            if _started_for not in (None, self.root.resolve()):
                raise WarehouseError(f"this process already runs Spark on {_started_for}; one Spark warehouse per "
                                     f"process (asked for {self.root})")
            return active  # ours, or the cluster's (a Databricks job): its settings stand
        self.root.mkdir(parents=True, exist_ok=True)
        builder = SparkSession.builder.appName("glmm-ab").enableHiveSupport()
        for key, value in settings.items():
            builder = builder.config(key, value)
        spark = builder.getOrCreate()
        _started_for = self.root.resolve()
        spark.sparkContext.setLogLevel("ERROR")
        spark.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
        spark.conf.set("spark.sql.sources.partitionOverwriteMode", "dynamic")
        return spark

    def sql(self, statement: str):
        return self.session().sql(statement)

    def query(self, statement: str) -> pl.DataFrame:
        return pl.from_pandas(self.sql(statement).toPandas())

    def table_exists(self, schema: str, table: str) -> bool:
        return self.session().catalog.tableExists(f"{schema}.{table}")

    def _insert(self, table: str, frame: pl.DataFrame, columns: list[tuple[str, str]], overwrite: bool) -> None:
        """Insert ``frame`` into ``table`` (columns in the table's order); ``overwrite``: replace the
        partitions the rows fall in (this run's), leaving every other partition as it was."""
        from pyspark.sql.types import _parse_datatype_string

        schema = ", ".join(f"{_ident(c)} {t}" for c, t in columns)
        frame = frame.select([pl.col(c) if c in frame.columns else pl.lit(None).alias(c) for c, _ in columns])
        data = self.session().createDataFrame(frame.to_pandas(), schema=_parse_datatype_string(schema))
        data.write.insertInto(table, overwrite=overwrite)

    # -- the seam ---------------------------------------------------------------------------------
    def describe(self) -> str:
        return f"spark:{self.root}"

    def exists(self) -> bool:
        return (self.root / "metastore_db").is_dir()

    def dbt_env(self) -> dict[str, str]:
        return {"GLMM_AB_SPARK_DIR": str(self.root.resolve())}

    def is_busy(self, error: BaseException) -> bool:
        text = str(error)
        return isinstance(error, WarehouseBusy) or "Another instance of Derby" in text

    def run_lock(self, timeout: float):
        return run_lock(self.root / "warehouse", timeout)

    def check_raw_contract(self) -> None:
        found = {table: {c.name: c.dataType.upper() for c in self.session().catalog.listColumns(f"raw.{table}")}
                 for table in [*RAW_DDL, *OPTIONAL_RAW_DDL] if self.table_exists("raw", table)}
        problems = contract_problems(found, _ACCEPTED, "STRING")
        if problems:
            raise WarehouseError("the warehouse does not follow the raw contract: " + "; ".join(problems))

    def ensure_result_tables(self) -> None:
        """Create the result tables that do not exist yet, then drop the partitions of runs killed while
        writing. Called at a run's start, under the run lock: no other run is writing then."""
        self._create_result_tables()
        self.drop_orphaned_partitions()

    def _create_result_tables(self) -> None:
        self.sql(f"CREATE DATABASE IF NOT EXISTS {RESULT_SCHEMA}")
        for table in [*BOOKKEEPING, *SCHEMAS]:
            columns = _columns(table)
            self.sql(f"CREATE TABLE IF NOT EXISTS {RESULT_SCHEMA}.{table} "
                     f"({', '.join(f'{_ident(c)} {t}' for c, t in columns)}) USING parquet PARTITIONED BY (run_id)")
            self._add_new_columns(table, columns)
        self.sql(f"CREATE TABLE IF NOT EXISTS {RESULT_SCHEMA}.publications "
                 f"({', '.join(f'{_ident(c)} {t}' for c, t in PUBLICATIONS)}) USING parquet")
        self._add_new_columns("publications", PUBLICATIONS)

    def _add_new_columns(self, table: str, columns: list[tuple[str, str]], schema: str = RESULT_SCHEMA) -> None:
        """Columns added since ``table`` was made; its earlier rows read NULL there."""
        have = {c.name.lower() for c in self.session().catalog.listColumns(f"{schema}.{table}")}
        added = [(c, t) for c, t in columns if c.lower() not in have]
        if added:
            self.sql(f"ALTER TABLE {schema}.{table} ADD COLUMNS "
                     f"({', '.join(f'{_ident(c)} {t}' for c, t in added)})")

    def drop_orphaned_partitions(self) -> list[tuple[str, str]]:
        """Drop result partitions whose run has no ``glmm.runs`` row (a run killed while writing).
        Call only while holding the run lock. Returns the (table, run_id) pairs dropped."""
        recorded = set(self.query(f"SELECT run_id FROM {RESULT_SCHEMA}.runs")["run_id"].to_list())
        dropped = []
        for table in ["fit_failures", "fit_inputs", *SCHEMAS]:
            partitions = [row[0].split("=", 1)[1] for row in self.sql(f"SHOW PARTITIONS {RESULT_SCHEMA}.{table}").collect()]
            for run_id in partitions:
                if run_id not in recorded:
                    self.sql(f"ALTER TABLE {RESULT_SCHEMA}.{table} DROP IF EXISTS PARTITION (run_id = {_literal(run_id)})")
                    dropped.append((table, run_id))
        return dropped

    def load_histograms(self, use_exposure: bool) -> list[PairHistogram]:
        rows = self.query(histogram_sql(use_exposure, "main.fct_cv_count_histogram", "main.stg_experiments",
                                        "main.stg_metrics"))
        planned = self.query("SELECT experiment_id, variant, traffic_weight FROM main.stg_variants "
                             "ORDER BY experiment_id, variant")
        segments = self.query(segment_histogram_sql(use_exposure, "main.fct_segment_histogram", "main.stg_metrics"))
        return histogram_pairs(rows, planned.rows(), use_exposure, segments)

    def write_run(self, run: RunRecord, results: dict[str, pl.DataFrame], failures: pl.DataFrame,
                  message: str | None) -> None:
        """Each result table's partition for this run (overwritten, so a retry does not double rows), then
        the ``glmm.runs`` row: the commit marker every reader goes through."""
        require_known_tables(results, result_tables(), "result")
        for table, frame in {**results, "fit_failures": failures}.items():
            if frame.height:
                self._insert(f"{RESULT_SCHEMA}.{table}", frame.with_columns(pl.lit(run.run_id).alias("run_id")),
                             _columns(table), overwrite=True)
        self._insert_run(run, "succeeded", message)

    def _insert_run(self, run: RunRecord, status: str, message: str | None) -> None:
        row = {"as_of": run.as_of, "started_at": run.started_at, "finished_at": utc_now(), "status": status,
               "package_version": run.package_version, "config": json.dumps(run.config, default=str),
               "message": message, "stage_seconds": stage_seconds_json(run.stage_seconds), "run_id": run.run_id}
        self._insert(f"{RESULT_SCHEMA}.runs", _one_row(row, _columns("runs")), _columns("runs"), overwrite=True)

    def earlier_fits(self, digests: dict[tuple[str, str], str]) -> dict[str, pl.DataFrame]:
        return earlier_fits_from(self.query, _literal, RESULT_SCHEMA, digests)

    def record_failed_run(self, run: RunRecord, message: str) -> None:
        # not ensure_result_tables: a run that could not start (another holds the lock) must not drop
        # the partitions that run is writing
        self._create_result_tables()
        self._insert_run(run, "failed", message)

    def record_publication(self, run_id: str, status: str, bi_path: str | None, message: str | None,
                           stage_seconds: dict[str, float] | None = None) -> None:
        row = {"run_id": run_id, "attempted_at": utc_now(), "status": status, "bi_path": bi_path, "message": message,
               "stage_seconds": stage_seconds_json(stage_seconds or {})}
        self._insert(f"{RESULT_SCHEMA}.publications", _one_row(row, PUBLICATIONS), PUBLICATIONS, overwrite=False)

    def has_run(self, run_id: str) -> bool:
        if not self.exists() or not self.table_exists(RESULT_SCHEMA, "runs"):
            return False
        return self.sql(f"SELECT 1 FROM {RESULT_SCHEMA}.runs WHERE run_id = {_literal(run_id)}").count() > 0

    def recent_runs(self, limit: int) -> pl.DataFrame | None:
        if not self.exists() or not self.table_exists(RESULT_SCHEMA, "runs"):
            return None
        return self.query(f"""
            WITH fitted AS (SELECT run_id, count(*) AS n FROM {RESULT_SCHEMA}.diagnostics GROUP BY run_id),
                 reused AS (SELECT run_id, count(*) AS n FROM {RESULT_SCHEMA}.fit_inputs
                            WHERE fitted_in_run_id <> run_id GROUP BY run_id),
                 failed AS (SELECT run_id, count(*) AS n FROM {RESULT_SCHEMA}.fit_failures GROUP BY run_id),
                 attempts AS (SELECT run_id, status, message,
                                     row_number() OVER (PARTITION BY run_id ORDER BY attempted_at DESC) AS newest
                              FROM {RESULT_SCHEMA}.publications)
            SELECT r.run_id, r.as_of, r.finished_at, r.status, coalesce(fitted.n, 0) - coalesce(reused.n, 0) AS pairs_fitted,
                   coalesce(reused.n, 0) AS pairs_reused, coalesce(failed.n, 0) AS pairs_failed, r.message, p.status AS published, p.message AS publish_message
            FROM {RESULT_SCHEMA}.runs r
            LEFT JOIN fitted ON fitted.run_id = r.run_id
            LEFT JOIN reused ON reused.run_id = r.run_id
            LEFT JOIN failed ON failed.run_id = r.run_id
            LEFT JOIN attempts p ON p.run_id = r.run_id AND p.newest = 1
            ORDER BY r.finished_at DESC, r.run_id DESC LIMIT {int(limit)}""")

    def experiment_health(self) -> pl.DataFrame:
        if not self.exists() or not self.table_exists("main", "rpt_experiment_health"):
            return pl.DataFrame()
        return self.query("SELECT experiment_id, metric_id, health_status, health_reasons "
                          "FROM main.rpt_experiment_health ORDER BY experiment_id, metric_id")

    def default_bi_path(self) -> Path:
        from .duckdb_publish import default_bi_path

        return default_bi_path(self.root)

    def publish(self, run_id: str, bi_path: str | Path | None = None,
                parquet_dir: str | Path | None = None, per_user: bool = False) -> Publication:
        """The same BI copy as the DuckDB engine's (a DuckDB file and Parquet files), published by the DuckDB
        publisher from this warehouse's tables, moved through Arrow. glmm.* rows come only from runs
        that have a ``glmm.runs`` row (a killed run's partitions are not results)."""
        from .duckdb_publish import PUBLISHED_PREFIXES, UNPUBLISHED, is_per_user, publish_tables

        catalog = self.session().catalog
        names = [("main", t.name) for t in catalog.listTables("main")
                 if t.name.startswith(PUBLISHED_PREFIXES)
                 and (t.tableType != "VIEW" or is_per_user("main", t.name))
                 and (per_user or not is_per_user("main", t.name))]
        names += [(RESULT_SCHEMA, t.name) for t in catalog.listTables(RESULT_SCHEMA) if t.name not in UNPUBLISHED]

        def rows(schema: str, table: str):
            committed = schema == RESULT_SCHEMA and table != "runs"
            where = f" WHERE run_id IN (SELECT run_id FROM {RESULT_SCHEMA}.runs)" if committed else ""
            return self.sql(f"SELECT * FROM {schema}.{table}{where}").toPandas()

        return publish_tables({name: (lambda name=name: rows(*name)) for name in names}, run_id,
                              bi_path or self.default_bi_path(), parquet_dir, source=self.describe(), per_user=per_user)

    def load_raw(self, tables: dict[str, pl.DataFrame]) -> None:
        """Replace the raw tables with ``tables`` (Parquet tables in database ``raw``). Each frame goes to
        Spark as a Parquet file written by polars (columnar, not row by row through pandas), typed as
        the raw contract says on the way in."""
        require_known_tables(tables, {*RAW_DDL, *OPTIONAL_RAW_DDL}, "raw")
        self.sql("CREATE DATABASE IF NOT EXISTS raw")
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".raw-staging-", dir=self.root) as staging:
            for table, frame in tables.items():
                columns = [(c, {"VARCHAR": "STRING"}.get(t, t)) for c, t in load_columns(table, frame.columns).items()]
                frame = frame.with_columns(_as_contract_type(frame, c, t) for c, t in columns if c in frame.columns)
                path = Path(staging) / f"{table}.parquet"
                frame.write_parquet(path)
                self.sql(f"CREATE TABLE IF NOT EXISTS raw.{table} "
                         f"({', '.join(f'{_ident(c)} {t}' for c, t in columns)}) USING parquet")
                self._add_new_columns(table, columns, schema="raw")  # optional columns new to the table
                staged = self.session().read.parquet(str(path))
                # insertInto is positional: the table's own column order (optional columns may have been
                # added in another order), NULL for any the frame lacks
                fields = [(f.name, f.dataType.simpleString()) for f in self.session().table(f"raw.{table}").schema.fields]
                typed = staged.selectExpr(*(f"CAST({_ident(c)} AS {t}) AS {_ident(c)}" if c in frame.columns
                                            else f"CAST(NULL AS {t}) AS {_ident(c)}" for c, t in fields))
                typed.write.insertInto(f"raw.{table}", overwrite=True)

    def reset(self) -> None:
        from pyspark.sql import SparkSession

        active = SparkSession.getActiveSession()
        if active is not None:
            active.stop()
        global _started_for
        _started_for = None
        shutil.rmtree(self.root, ignore_errors=True)
