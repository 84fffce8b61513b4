"""The warehouse seam: everything the pipeline asks of a warehouse, one implementation per engine.

The flow, the CLI and the demo talk to a :class:`Warehouse` and nothing else;
no module outside this package (and the dashboard's read-only reader) speaks an
engine's dialect or imports its driver. :func:`open_warehouse` picks the engine
from the location: today a DuckDB file (:mod:`.duckdb_warehouse`, with its BI
publisher :mod:`.duckdb_publish`); a second engine plugs in here.

What a run needs, in the order the nightly flow asks:

1. :meth:`Warehouse.check_raw_contract` and :meth:`Warehouse.ensure_result_tables`;
2. :attr:`Warehouse.dbt_target` and :meth:`Warehouse.dbt_env` — the dbt target in
   ``profiles.yml`` to build with, and the environment that points it here;
3. :meth:`Warehouse.load_histograms` — every experiment x metric histogram of the
   run, read in one snapshot right after dbt built them;
4. :meth:`Warehouse.run_lock` — one run at a time: taken before anything else;
5. :meth:`Warehouse.earlier_fits` — the results of pairs whose inputs and settings are those
   of their last fit (:mod:`flows.reuse`), so the run reuses them instead of sampling again;
6. :meth:`Warehouse.write_run` — the result tables, ``glmm.fit_inputs`` and the ``glmm.runs``
   row, all or nothing (:meth:`Warehouse.record_failed_run` for a run that failed);
7. :meth:`Warehouse.publish` — the read-only copy BI reads.

``glmm-ab status`` reads :meth:`Warehouse.recent_runs` and
:meth:`Warehouse.experiment_health`; the demo uses :meth:`Warehouse.reset` and
:meth:`Warehouse.load_raw`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ContextManager, Protocol, runtime_checkable

if TYPE_CHECKING:
    import polars as pl

RESULT_SCHEMA = "glmm"
# glmm.fit_inputs: one row per pair with results in a run (besides run_id), what they were computed from
FIT_INPUTS_COLUMNS = ("experiment_id", "metric_id", "input_digest", "fitted_in_run_id")  # all text


class WarehouseError(RuntimeError):
    """The warehouse cannot be used as asked (missing, breaks the raw contract, locked, unknown engine)."""


class WarehouseBusy(WarehouseError):
    """Another process holds the warehouse; the same step may succeed a little later."""


class PublishError(RuntimeError):
    """The BI copy could not be published; the warehouse's results are unaffected."""


@dataclass(frozen=True)
class PairHistogram:
    """One experiment x metric as the engine reads it: ``histogram`` has
    ``variant``, ``cv_count``, ``n_users`` (and ``exposure`` when the run uses it, or the
    denominator's events of a ratio metric); ``planned_split`` is the experiment's declared
    traffic split, if any; ``metric_type`` and ``tolerated_drop`` (a guardrail's) come from the
    metric's definition; ``segments`` the histograms of its segment breakdowns (primary count and
    ratio metrics of experiments with raw.user_segments rows)."""

    experiment_id: str
    metric_id: str
    control_variant: str
    histogram: "pl.DataFrame"
    planned_split: tuple[tuple[str, float], ...] | None = None  # raw.variants' (variant, weight); None: equal
    metric_type: str = "count"
    tolerated_drop: float | None = None
    # (dimension, histogram with a 'segment' column) per dimension of the segment breakdowns
    segments: tuple[tuple[str, "pl.DataFrame"], ...] = ()


@dataclass(frozen=True)
class RunRecord:
    """What ``glmm.runs`` records of a run besides its outcome (times are UTC)."""

    run_id: str
    as_of: datetime
    started_at: datetime
    package_version: str
    config: dict
    # seconds per stage finished so far (dbt, load, fit, ...): the runs row records those done before it
    stage_seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class Publication:
    """Where a run's BI copy went and how many rows each table got."""

    bi_path: Path
    parquet_dir: Path | None
    run_id: str
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def stage_seconds_json(stage_seconds: dict[str, float]) -> str:
    """Seconds per stage, rounded to milliseconds, as a JSON object in the order the stages ran:
    ``glmm.runs.stage_seconds`` (the stages finished before the runs row was written) and
    ``glmm.publications.stage_seconds`` (those after it, up to the publish attempt)."""
    return json.dumps({stage: round(seconds, 3) for stage, seconds in stage_seconds.items()})


@runtime_checkable
class Warehouse(Protocol):
    """The protocol each engine implements. Implementations are small frozen values
    (a location and settings), so a task runner can ship them to workers."""

    engine: str  # "duckdb"
    dbt_target: str  # the output in profiles.yml that builds this warehouse

    def describe(self) -> str:
        """The location as :func:`open_warehouse` takes it, for the flow's parameter and for logs (never a secret)."""

    def exists(self) -> bool:
        """Whether there is a warehouse at the location at all."""

    def dbt_env(self) -> dict[str, str]:
        """Environment variables that point the dbt target at this warehouse."""

    def release_dbt(self) -> None:
        """After each in-process dbt call: release what dbt's adapter still holds on this warehouse."""

    def run_lock(self, timeout: float) -> "ContextManager[None]":
        """Hold this warehouse for one run: wait up to ``timeout`` s for another run to finish, then raise
        WarehouseBusy naming the holder. Reentrant within a process (the CLI, then its flow)."""

    def is_busy(self, error: BaseException) -> bool:
        """Whether ``error`` (from this engine or from dbt on it) means another process holds the warehouse."""

    def check_raw_contract(self) -> None:
        """Raise WarehouseError naming every raw table or column the contract needs and the warehouse lacks."""

    def ensure_result_tables(self) -> None:
        """Create the ``glmm`` result tables that do not exist yet."""

    def load_histograms(self, use_exposure: bool) -> list[PairHistogram]:
        """Every experiment x metric pair's histogram, in one snapshot, ordered by experiment and metric."""

    def write_run(self, run: RunRecord, results: dict[str, "pl.DataFrame"], failures: "pl.DataFrame",
                  message: str | None) -> None:
        """Append a succeeded run: result tables, fit failures and the ``glmm.runs`` row, all or nothing."""

    def earlier_fits(self, digests: dict[tuple[str, str], str]) -> dict[str, "pl.DataFrame"]:
        """The result tables of the pairs in ``digests`` ((experiment_id, metric_id) -> input digest)
        whose newest ``glmm.fit_inputs`` row of a succeeded run has that digest, read from that run,
        keyed as :meth:`write_run` takes them; ``fit_inputs`` among them says which pairs and from
        which fit. Empty when none is reusable."""

    def record_failed_run(self, run: RunRecord, message: str) -> None:
        """Append a failed run's ``glmm.runs`` row (creating the result tables if need be), nothing else."""

    def record_publication(self, run_id: str, status: str, bi_path: str | None, message: str | None,
                           stage_seconds: dict[str, float] | None = None) -> None:
        """Append ``glmm.publications``: whether a run's BI copy was 'published' or 'failed', and why, with
        the seconds of the run's stages after its commit (``write``, ``reports``, ``publish``)."""

    def has_run(self, run_id: str) -> bool:
        """Whether ``glmm.runs`` holds a row for ``run_id``."""

    def recent_runs(self, limit: int) -> "pl.DataFrame | None":
        """The newest runs with pairs fitted and failed; None before the first run."""

    def experiment_health(self) -> "pl.DataFrame":
        """``rpt_experiment_health`` (empty before the first successful run)."""

    def default_bi_path(self) -> Path:
        """Where the BI copy goes unless told otherwise."""

    def publish(self, run_id: str, bi_path: str | Path | None, parquet_dir: str | Path | None,
                per_user: bool = False) -> Publication:
        """Replace the BI copy (and its Parquet files) with this warehouse's results; PublishError on failure."""

    def load_raw(self, tables: dict[str, "pl.DataFrame"]) -> None:
        """Replace the raw tables' contents with ``tables`` (the demo's synthetic logs)."""

    def reset(self) -> None:
        """Remove the warehouse and everything in it (the demo's ``--force``)."""


# A cell's exposure: a ratio metric's denominator, else the days (when the run uses them) or 1
_EXPOSURE_SQL = """CAST(CASE WHEN m.metric_type = 'ratio' THEN h.denominator_count
                     WHEN m.metric_type = 'count' AND {use_exposure} THEN h.exposure_days_cell
                     ELSE 1 END AS DOUBLE) AS exposure"""

HISTOGRAM_SQL = """
    SELECT h.experiment_id, h.metric_id, e.control_variant, m.metric_type,
           CASE WHEN m.role = 'guardrail' THEN COALESCE(m.tolerated_drop, 0.0) END AS tolerated_drop,
           h.variant, h.cv_count,
           {exposure},
           h.pre_cv_count,
           CAST(SUM(h.n_users) AS BIGINT) AS n_users
    FROM {histogram} AS h
    JOIN {experiments} AS e ON h.experiment_id = e.experiment_id
    JOIN {metrics} AS m ON h.metric_id = m.metric_id
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
    ORDER BY 1, 2, 6, 7, 8, 9 NULLS LAST
"""

SEGMENT_HISTOGRAM_SQL = """
    SELECT h.experiment_id, h.metric_id, h.dimension, h.segment, h.variant, h.cv_count,
           {exposure},
           CAST(SUM(h.n_users) AS BIGINT) AS n_users
    FROM {histogram} AS h
    JOIN {metrics} AS m ON h.metric_id = m.metric_id
    GROUP BY 1, 2, 3, 4, 5, 6, 7
    ORDER BY 1, 2, 3, 4, 5, 6, 7
"""


def histogram_sql(use_exposure: bool, histogram: str, experiments: str, metrics: str) -> str:
    """The one query (portable SQL) that reads every pair's histogram with its metric's type and
    tolerance, given the engine's names of ``fct_cv_count_histogram``, ``stg_experiments`` and
    ``stg_metrics``: exposure is a ratio metric's denominator, else the days (when the run uses
    them) or 1 (then dropped by :func:`histogram_pairs`)."""
    exposure = _EXPOSURE_SQL.format(use_exposure="TRUE" if use_exposure else "FALSE")
    return HISTOGRAM_SQL.format(exposure=exposure, histogram=histogram, experiments=experiments, metrics=metrics)


def segment_histogram_sql(use_exposure: bool, histogram: str, metrics: str) -> str:
    """The segment breakdowns' histograms (portable SQL), given the engine's names of
    ``fct_segment_histogram`` and ``stg_metrics``; exposure as in :func:`histogram_sql`."""
    exposure = _EXPOSURE_SQL.format(use_exposure="TRUE" if use_exposure else "FALSE")
    return SEGMENT_HISTOGRAM_SQL.format(exposure=exposure, histogram=histogram, metrics=metrics)


def histogram_pairs(rows: "pl.DataFrame", planned_rows, use_exposure: bool,
                    segment_rows: "pl.DataFrame | None" = None) -> list[PairHistogram]:
    """The pairs of the histogram query (:func:`histogram_sql`), the planned splits
    (``(experiment_id, variant, traffic_weight)`` rows, ordered) and the segment histograms
    (:func:`segment_histogram_sql`): what every engine's :meth:`Warehouse.load_histograms` returns."""
    planned: dict[str, list[tuple[str, float]]] = {}
    for experiment_id, variant, weight in planned_rows:
        planned.setdefault(experiment_id, []).append((variant, weight))
    by_pair: dict[tuple[str, str], list[tuple[str, "pl.DataFrame"]]] = {}
    if segment_rows is not None and segment_rows.height:
        for part in segment_rows.partition_by(["experiment_id", "metric_id", "dimension"], maintain_order=True):
            key = (part["experiment_id"][0], part["metric_id"][0])
            by_pair.setdefault(key, []).append((part["dimension"][0], part.drop("experiment_id", "metric_id",
                                                                                  "dimension")))
    keys = ["experiment_id", "metric_id", "control_variant", "metric_type", "tolerated_drop"]
    pairs = []
    for part in rows.partition_by(["experiment_id", "metric_id"], maintain_order=True):
        experiment_id, metric_id, control, metric_type, tolerated_drop = (part[k][0] for k in keys)
        histogram = part.drop(keys)
        keep_exposure = metric_type == "ratio" or (use_exposure and metric_type == "count")
        if not keep_exposure:
            histogram = histogram.drop("exposure")
        if histogram["pre_cv_count"].null_count() == histogram.height:  # no user with history: no covariate
            histogram = histogram.drop("pre_cv_count")
        segments = tuple((dimension, frame if keep_exposure else frame.drop("exposure"))
                         for dimension, frame in by_pair.get((experiment_id, metric_id), []))
        pairs.append(PairHistogram(
            experiment_id, metric_id, control, histogram,
            planned_split=tuple(planned[experiment_id]) if experiment_id in planned else None,
            metric_type=metric_type, tolerated_drop=tolerated_drop, segments=segments))
    return pairs


def require_known_tables(tables, known, kind: str) -> None:
    """Raise :class:`WarehouseError` naming the ``tables`` that are not among ``known`` (``kind``: what they are)."""
    unknown = sorted(set(tables) - set(known))
    if unknown:
        raise WarehouseError(f"unknown {kind} table(s) {unknown}")


def result_tables() -> set[str]:
    """The tables :meth:`Warehouse.write_run` takes: the engine's result tables and ``fit_inputs``."""
    from glmm_model.schema import SCHEMAS

    return {*SCHEMAS, "fit_inputs"}


def earlier_fits_from(query: "Callable[[str], pl.DataFrame]", literal: "Callable[[str], str]", schema: str,
                      digests: dict[tuple[str, str], str]) -> dict[str, "pl.DataFrame"]:
    """:meth:`Warehouse.earlier_fits` in portable SQL: ``query`` runs a statement on the engine,
    ``literal`` quotes a string for it, ``schema`` names the result schema as the engine writes it."""
    import polars as pl

    from glmm_model.schema import SCHEMAS

    if not digests:
        return {}
    newest = query(f"""
        WITH recorded AS (
            SELECT f.experiment_id, f.metric_id, f.input_digest, f.fitted_in_run_id, f.run_id,
                   row_number() OVER (PARTITION BY f.experiment_id, f.metric_id
                                      ORDER BY r.finished_at DESC, r.run_id DESC) AS newest
            FROM {schema}.fit_inputs AS f
            JOIN {schema}.runs AS r ON r.run_id = f.run_id AND r.status = 'succeeded'
        )
        SELECT experiment_id, metric_id, input_digest, fitted_in_run_id, run_id FROM recorded WHERE newest = 1""")
    if newest.height == 0:
        return {}
    wanted = pl.DataFrame([(e, m, d) for (e, m), d in digests.items()], orient="row",
                          schema={"experiment_id": pl.String, "metric_id": pl.String, "input_digest": pl.String})
    keys = ["experiment_id", "metric_id"]
    found = wanted.join(newest.select(*FIT_INPUTS_COLUMNS, "run_id")
                        .cast({c: pl.String for c in FIT_INPUTS_COLUMNS} | {"run_id": pl.String}),
                        on=keys + ["input_digest"], how="inner")
    if found.height == 0:
        return {}
    runs = ", ".join(literal(r) for r in sorted(set(found["run_id"])))
    sources = found.select(keys + ["run_id"])
    out = {}
    for table, columns in SCHEMAS.items():
        rows = query(f"SELECT * FROM {schema}.{table} WHERE run_id IN ({runs})")
        if rows.height == 0:
            continue
        rows = rows.cast({"run_id": pl.String, "experiment_id": pl.String, "metric_id": pl.String})
        out[table] = rows.join(sources, on=keys + ["run_id"], how="semi").select(
            [pl.col(k) for k in keys] + [pl.col(c).cast(t) for c, t in columns.items()])
    # a pair is reused whole or not at all: one whose rows are gone (a table pruned by hand) is fitted
    essential = ("diagnostics", "lift", "posterior_summary")
    if any(table not in out for table in essential):
        return {}
    present = out[essential[0]].select(keys).unique()
    for table in essential[1:]:
        present = present.join(out[table].select(keys).unique(), on=keys, how="semi")
    if present.height == 0:
        return {}
    out = {table: frame.join(present, on=keys, how="semi") for table, frame in out.items()}
    out["fit_inputs"] = found.join(present, on=keys, how="semi").select(FIT_INPUTS_COLUMNS)
    return out


def run_lock_timeout() -> float:
    """Seconds a run waits for another run on the same warehouse ($GLMM_AB_RUN_LOCK_TIMEOUT, default 1800)."""
    text = os.environ.get("GLMM_AB_RUN_LOCK_TIMEOUT", "1800")
    try:
        return max(0.0, float(text))
    except ValueError as exc:
        raise WarehouseError(f"GLMM_AB_RUN_LOCK_TIMEOUT must be a number of seconds, got {text!r}") from exc


ENGINES = ("duckdb", "spark")


def open_warehouse(location: str | Path, engine: str | None = None) -> Warehouse:
    """The warehouse at ``location``: a DuckDB file path, or ``duckdb:PATH``, or ``spark:FOLDER`` (a Spark
    warehouse folder: its tables and local metastore). ``engine`` names the engine of a bare path."""
    text = str(location)
    if not text.strip():
        raise WarehouseError("no warehouse given: pass --warehouse or set GLMM_AB_WAREHOUSE")
    prefix, sep, rest = text.partition(":")
    if sep and prefix in ENGINES:
        if engine is not None and engine != prefix:
            raise WarehouseError(f"--engine {engine} does not match the warehouse {text!r}")
        engine, text = prefix, rest
    elif sep and len(prefix) > 1 and "/" not in prefix and "\\" not in prefix:
        raise WarehouseError(f"unknown warehouse engine {prefix!r} in {text!r}: expected one of {', '.join(ENGINES)}")
    engine = engine or "duckdb"
    if engine == "spark":
        from .spark_warehouse import SparkWarehouse

        return SparkWarehouse(Path(text).absolute())
    if engine != "duckdb":
        raise WarehouseError(f"unknown engine {engine!r}: expected one of {', '.join(ENGINES)}")
    from .duckdb_warehouse import DuckDBWarehouse

    return DuckDBWarehouse(Path(text))
