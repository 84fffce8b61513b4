"""The nightly flow: raw event logs -> dbt -> one GLMM fit per experiment x metric -> result tables.

Steps, each a Prefect task:

1. ``prepare_warehouse`` — check the raw contract, create the ``glmm`` result tables if absent.
2. ``dbt_build_pipeline`` — ``dbt build`` of staging, intermediate and marts with their
   tests. An error-severity test failure stops the run here, before any fit.
3. ``list_pairs`` — every experiment x metric pair in ``fct_cv_count_histogram``.
4. ``load_pair`` — the pair's histogram, DuckDB -> Arrow -> polars (no pandas).
5. ``fit_pair`` — the collapsed (or latent) GLMM; retried on unexpected errors, not on
   bad data. A pair that cannot be fitted is recorded in ``glmm.fit_failures``; the
   others go on.
6. ``write_run`` — every result table and the ``glmm.runs`` row in ONE transaction.
7. ``dbt_build_reports`` — the report models over the result tables.
8. ``publish_bi`` — the marts, reports and glmm.* tables copied to the BI-facing
   DuckDB file and Parquet files (:mod:`flows.publish`), each replaced atomically.
9. ``publish_artifacts`` — a markdown table of lifts and decisions, and the plots.

A run that fails records a ``glmm.runs`` row with status 'failed' and its reason;
nothing else of it is written and earlier results stay as they were.
"""

import re
import time
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_image_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from glmm_model import FitConfig, InputError, Priors, SamplerConfig, __version__, fit
from glmm_model import warehouse as wh
from glmm_model.schema import SCHEMAS
from glmm_model.sampling import enable_compilation_cache

from .dbt import PIPELINE_SELECTOR, REPORTS_SELECTOR, run_dbt
from .publish import Publication, PublishError, publish

DEFAULT_WAREHOUSE = "warehouse/glmm_ab.duckdb"


@dataclass
class RunReport:
    """What one run did: its id and status, the lift rows, failed pairs, seconds per stage."""

    run_id: str
    status: str
    message: str | None
    as_of: datetime
    lift: pl.DataFrame = field(default_factory=pl.DataFrame)
    failures: pl.DataFrame = field(default_factory=pl.DataFrame)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    plots: dict[str, dict[str, str]] = field(default_factory=dict)
    publication: Publication | None = None


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)


def path_part(identifier: str) -> str:
    """An experiment or metric id as one safe folder name: ids come from raw data and may hold '/' or '..'."""
    part = re.sub(r"[^A-Za-z0-9_.=-]+", "_", identifier).strip(".")
    return part or "_"


def pair_seed(base: int, experiment_id: str, metric_id: str) -> int:
    """A fixed seed per pair: reruns give the same answer, pairs get different streams."""
    return (base + zlib.crc32(f"{experiment_id}\x1f{metric_id}".encode())) % (2**31)


def _is_transient(task, task_run, state) -> bool:
    """Retry unexpected errors, never bad data (it would fail the same way again)."""
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, InputError)


def _is_lock(task, task_run, state) -> bool:
    """dbt met a lock held by another process: worth another try after a pause."""
    exc = state.result(raise_on_failure=False)
    return "lock" in str(exc).lower()


@task  # no task retries: connect() itself retries a locked file with backoff
def prepare_warehouse(warehouse: str) -> None:
    with wh.connect(warehouse) as con:
        wh.check_raw_contract(con)
        wh.create_result_tables(con)


@task(retries=3, retry_delay_seconds=[2, 8, 30], retry_condition_fn=_is_lock)
def dbt_build_pipeline(warehouse: str, as_of: str) -> int:
    result = run_dbt("build", warehouse, PIPELINE_SELECTOR, as_of)
    for warning in result.warned:
        get_run_logger().warning("dbt test warning: %s", warning)
    return result.passed


@task(retries=2, retry_delay_seconds=2)
def list_pairs(warehouse: str) -> list[dict]:
    with wh.connect(warehouse, read_only=True) as con:
        return wh.list_pairs(con).to_dicts()


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def load_pair(warehouse: str, experiment_id: str, metric_id: str, use_exposure: bool) -> pl.DataFrame:
    with wh.connect(warehouse, read_only=True) as con:
        return wh.load_histogram(con, experiment_id, metric_id, use_exposure)


@task(retries=1, retry_delay_seconds=1, retry_condition_fn=_is_transient, cache_policy=NO_CACHE,
      task_run_name="fit-{experiment_id}-{metric_id}")
def fit_pair(data: pl.DataFrame, control: str, config: FitConfig, experiment_id: str, metric_id: str):
    return fit(data, control, config)


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def write_run(warehouse: str, run_id: str, as_of: datetime, started_at: datetime, config: dict,
              results: dict[str, pl.DataFrame], failures: pl.DataFrame, message: str | None) -> None:
    with wh.connect(warehouse) as con:
        wh.write_run(con, run_id, as_of, started_at, __version__, config, results, failures, message)


@task(retries=3, retry_delay_seconds=[2, 8, 30], retry_condition_fn=_is_lock)
def dbt_build_reports(warehouse: str, as_of: str) -> int:
    return run_dbt("build", warehouse, REPORTS_SELECTOR, as_of).passed


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def publish_bi(warehouse: str, run_id: str, bi_path: str | None, parquet_dir: str | None) -> Publication:
    return publish(warehouse, run_id, bi_path, parquet_dir)


@task(cache_policy=NO_CACHE)
def publish_artifacts(run_id: str, lift: pl.DataFrame, failures: pl.DataFrame, plots: dict[str, dict[str, str]]) -> None:
    lines = [f"# glmm-ab run `{run_id}`", "",
             "| experiment | metric | variant | users | relative lift (95% CI) | P(beat control) | decision |",
             "|---|---|---|---|---|---|---|"]
    for r in lift.iter_rows(named=True):
        lines.append(
            f"| {r['experiment_id']} | {r['metric_id']} | {r['variant']} vs {r['control_variant']} | "
            f"{r['n_users']} / {r['n_users_control']} | {r['relative_lift_mean']:+.1%} "
            f"({r['relative_lift_low']:+.1%}, {r['relative_lift_high']:+.1%}) | {r['prob_beat_control']:.3f} | "
            f"**{r['decision']}** |"
        )
    for r in failures.iter_rows(named=True):
        lines.append(f"\nNot fitted: {r['experiment_id']} x {r['metric_id']}: {r['error']}")
    create_markdown_artifact("\n".join(lines), key="glmm-ab-lift", description=f"Lift and decisions of run {run_id}")
    for pair, paths in plots.items():
        for name, path in paths.items():
            key = re.sub(r"[^a-z0-9-]+", "-", f"glmm-ab-{pair}-{name}".lower())[:100]
            create_image_artifact(Path(path).resolve().as_uri(), key=key, description=f"{name} of {pair} (run {run_id})")


def _record_failure(warehouse, run_id, as_of, started_at, config, message, create=False) -> None:
    """A 'failed' glmm.runs row; if even that cannot be written (the warehouse is locked or gone), log it."""
    try:
        with wh.connect(warehouse, lock_wait=5) as con:
            if create:
                wh.create_result_tables(con)
            wh.record_failed_run(con, run_id, as_of, started_at, __version__, config, message)
    except Exception as exc:
        get_run_logger().error("run %s: could not record the failure in glmm.runs: %s", run_id, exc)


def _with_keys(frame: pl.DataFrame, experiment_id: str, metric_id: str) -> pl.DataFrame:
    return frame.select(pl.lit(experiment_id).alias("experiment_id"), pl.lit(metric_id).alias("metric_id"), pl.all())


@flow(name="glmm-ab-nightly", log_prints=True)
def nightly(
    warehouse: str = DEFAULT_WAREHOUSE,
    as_of: datetime | None = None,
    method: str = "collapsed",
    priors: str = "default",
    num_chains: int = 4,
    num_warmup: int = 500,
    num_samples: int = 2000,
    seed: int = 42,
    use_exposure: bool = False,
    plots_dir: str | None = None,
    publish_to: str | None = None,
    parquet_dir: str | None = None,
    publish_results: bool = True,
) -> RunReport:
    """Fit every experiment x metric in ``warehouse`` as of ``as_of`` (default: now, UTC) and append the results.

    ``use_exposure``: enter each user's exposure days as a log offset (rates per day)
    instead of comparing counts per user. ``plots_dir``: write the three pictures
    per pair under ``plots_dir/<run_id>/``. ``publish_to``: the BI-facing DuckDB file
    (default ``<warehouse stem>_bi.duckdb`` beside the warehouse); ``parquet_dir``: its
    Parquet copy (default ``<bi stem>_parquet/`` beside it). A publish that fails after
    the results are committed fails the flow with :class:`PublishError`; the
    results stay committed and the old BI copy stays as it was.
    """
    logger = get_run_logger()
    enable_compilation_cache()
    run_id = f"{utc_now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    started_at = utc_now()
    as_of = as_of or started_at
    as_of_text = as_of.isoformat(sep=" ")
    config = {"method": method, "priors": priors, "num_chains": num_chains, "num_warmup": num_warmup,
              "num_samples": num_samples, "seed": seed, "use_exposure": use_exposure}
    report = RunReport(run_id=run_id, status="running", message=None, as_of=as_of)
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        report.stage_seconds[stage] = report.stage_seconds.get(stage, 0.0) + now - clock
        clock = now

    logger.info("run %s: warehouse %s, as of %s", run_id, warehouse, as_of_text)
    try:
        prepare_warehouse(warehouse)
        passed = dbt_build_pipeline(warehouse, as_of_text)
        logger.info("run %s: dbt built the pipeline models, %d nodes passed", run_id, passed)
        lap("dbt")
        pairs = list_pairs(warehouse)
    except Exception as exc:
        report.status, report.message = "failed", f"{type(exc).__name__}: {exc}"
        _record_failure(warehouse, run_id, as_of, started_at, config, report.message, create=True)
        logger.error("run %s failed before fitting: %s", run_id, report.message)
        raise

    results: dict[str, list[pl.DataFrame]] = {name: [] for name in SCHEMAS}
    failure_rows = []
    for pair in pairs:
        exp_id, metric_id, control = pair["experiment_id"], pair["metric_id"], pair["control_variant"]
        data = load_pair(warehouse, exp_id, metric_id, use_exposure)
        lap("load")
        fit_config = FitConfig(
            method=method,
            priors=Priors.from_preset(priors),
            sampler=SamplerConfig(num_chains=num_chains, num_warmup=num_warmup, num_samples=num_samples,
                                  seed=pair_seed(seed, exp_id, metric_id), progress_bar=False),
            plots_dir=str(Path(plots_dir) / run_id / path_part(exp_id) / path_part(metric_id)) if plots_dir else None,
        )
        try:
            result = fit_pair(data, control, fit_config, exp_id, metric_id)
        except Exception as exc:  # recorded, and the other pairs go on
            failure_rows.append({"experiment_id": exp_id, "metric_id": metric_id, "error": f"{type(exc).__name__}: {exc}"})
            logger.error("run %s: %s x %s not fitted: %s", run_id, exp_id, metric_id, exc)
            lap("fit")
            continue
        for name, table in result.tables().items():
            results[name].append(_with_keys(table, exp_id, metric_id))
        if result.plots:
            report.plots[f"{exp_id}/{metric_id}"] = result.plots
        lap("fit")

    tables = {name: pl.concat(frames) if frames else pl.DataFrame() for name, frames in results.items()}
    failures = pl.DataFrame(failure_rows, schema={"experiment_id": pl.String, "metric_id": pl.String, "error": pl.String})
    report.lift, report.failures = tables["lift"], failures
    if not pairs:
        report.message = "no experiment x metric pairs to analyse (no exposures in any window)"
    elif failure_rows:
        report.message = f"{len(failure_rows)} of {len(pairs)} experiment x metric pairs not fitted"
    try:
        write_run(warehouse, run_id, as_of, started_at, config, tables, failures, report.message)
    except Exception as exc:
        report.status, report.message = "failed", f"writing results failed: {exc}"
        _record_failure(warehouse, run_id, as_of, started_at, config, report.message)
        raise
    lap("write")
    report.status = "succeeded"
    dbt_build_reports(warehouse, as_of_text)
    lap("reports")
    publish_failure = None
    if publish_results:
        try:
            report.publication = publish_bi(warehouse, run_id, publish_to, parquet_dir)
            logger.info("run %s: published %d tables to %s", run_id, len(report.publication.rows),
                        report.publication.bi_path)
        except Exception as exc:
            publish_failure = exc
            logger.error("run %s: results committed, but the BI copy was not published: %s", run_id, exc)
    lap("publish")
    try:
        publish_artifacts(run_id, report.lift, failures, report.plots)
    except Exception as exc:  # the results are committed; a missing artifact must not fail the run
        logger.warning("run %s: artifacts not published: %s", run_id, exc)
    lap("artifacts")
    logger.info(
        "run %s %s: %d pairs fitted, %d failed; seconds per stage: %s", run_id, report.status,
        len(pairs) - len(failure_rows), len(failure_rows),
        ", ".join(f"{k} {v:.1f}" for k, v in report.stage_seconds.items()),
    )
    if publish_failure is not None:
        raise PublishError(f"results of run {run_id} are committed, but the BI copy was not published: "
                           f"{publish_failure}") from publish_failure
    return report
