"""The nightly flow: raw event logs -> dbt -> one GLMM fit per experiment x metric -> result tables.

Steps, each a Prefect task, against one :class:`~flows.warehouse.Warehouse`:

1. ``prepare_warehouse`` — check the raw contract, create the ``glmm`` result tables if absent.
2. ``dbt_build`` (pipeline) — ``dbt build`` of staging, intermediate and marts with their
   tests. An error-severity test failure stops the run here, before any fit.
3. ``load_histograms`` — every experiment x metric histogram, in one snapshot.
4. ``earlier_fits`` — the results of pairs whose histogram, settings and engine are those of
   their last fit (:mod:`.reuse`): reused, not fitted again (``--refit-all`` fits every pair).
   ``fit_pair`` mapped over the other pairs — a pure task: one small histogram and the frozen
   run options in, result tables out, so a task runner can ship it anywhere: in this
   process by default, on Dask workers with ``--task-runner dask`` (:mod:`.runners`). Retried on
   unexpected errors, not on bad data. A pair that cannot be fitted is recorded in
   ``glmm.fit_failures``; the others go on.
5. ``write_run`` — every result table, ``glmm.fit_inputs`` and the ``glmm.runs`` row, all or nothing.
6. ``dbt_build`` (reports) — the report models over the result tables.
7. ``publish_bi`` — the marts, reports and glmm.* tables copied for BI, atomically.
8. ``draw_pictures`` and ``publish_artifacts`` — the three pictures per pair, drawn from
   the result tables, and a markdown table of lifts and decisions.

A run that fails records a ``glmm.runs`` row with status 'failed' and its reason;
nothing else of it is written and earlier results stay as they were.
"""
# No `from __future__ import annotations` here: Prefect builds its parameter model from the
# flow's annotations when a served run arrives, and postponed annotations leave it undefined.
import hashlib
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import polars as pl
from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_image_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from glmm_model import FitCancelled, FitTimeout, InputError, __version__, configure, fit
from glmm_model.schema import SCHEMAS
from glmm_model.segments import fit_segments

from . import reuse, stopping
from .clock import new_run_id, utc_now
from .dbt import PIPELINE_SELECTOR, REPORTS_SELECTOR, DbtError, run_dbt
from .options import RunOptions
from .runners import SEQUENTIAL, task_runner
from .warehouse import (PairHistogram, Publication, PublishError, RunRecord, Warehouse, WarehouseBusy, open_warehouse,
                        run_lock_timeout)

DEFAULT_WAREHOUSE = "warehouse/glmm_ab.duckdb"
# dbt's unit tests check the models' logic with fixed inputs: they belong to development and CI
# (tests/test_pipeline.py runs them), not to the nightly build, where dbt casts their fixtures
# to the warehouse's raw column types (a BIGINT user_id would fail a fixture id 'u1'). So do the
# 'structural' tests (dbt_project.yml): what the intermediate views guarantee by construction,
# each of which re-runs its view over the whole raw log.
NIGHTLY_DBT_FLAGS = ["--exclude-resource-type", "unit_test", "--exclude", "tag:structural"]
FAILURE_SCHEMA = {"experiment_id": pl.String, "metric_id": pl.String, "error": pl.String}


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
    reused: int = 0  # pairs whose results came from their last fit (unchanged inputs: flows/reuse.py)
    plots: dict[str, dict[str, str]] = field(default_factory=dict)
    publication: Publication | None = None

    @contextmanager
    def stage(self, name: str):
        """Add the block's wall time to ``stage_seconds[name]``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + time.perf_counter() - started


PATH_PART_CHARS = 48


def path_part(identifier: str) -> str:
    """An experiment or metric id as one safe folder name. Ids come from raw data and may hold '/',
    '..', any script or hundreds of characters: a plain id stays as it is; any other keeps a short
    sanitised prefix and gains a digest of the whole id, so names stay short and different ids
    never share a folder."""
    part = re.sub(r"[^A-Za-z0-9_.=-]+", "_", identifier)[:PATH_PART_CHARS].strip(".")
    if part == identifier and part:
        return part
    return f"{part or '_'}-{hashlib.sha256(identifier.encode()).hexdigest()[:12]}"


def _is_transient(task, task_run, state) -> bool:
    """Retry unexpected errors; never bad data (it would fail the same way again), a fit that ran out
    of time (it would again, and double the night) or one cancelled by a stop."""
    return not isinstance(state.result(raise_on_failure=False), (InputError, FitTimeout, FitCancelled))


def _is_busy(task, task_run, state) -> bool:
    """Another process held the warehouse: worth another try after a pause."""
    return isinstance(state.result(raise_on_failure=False), WarehouseBusy)


@task(cache_policy=NO_CACHE)  # no task retries: the warehouse retries a locked file with backoff itself
def prepare_warehouse(warehouse: Warehouse) -> None:
    warehouse.check_raw_contract()
    warehouse.ensure_result_tables()


@task(retries=3, retry_delay_seconds=[2, 8, 30], retry_condition_fn=_is_busy, cache_policy=NO_CACHE,
      task_run_name="dbt-build-{step}")
def dbt_build(warehouse: Warehouse, step: str, as_of: datetime, full_refresh: bool = False) -> int:
    selector = {"pipeline": PIPELINE_SELECTOR, "reports": REPORTS_SELECTOR}[step]
    flags = NIGHTLY_DBT_FLAGS + (["--full-refresh"] if full_refresh else [])
    try:
        result = run_dbt("build", warehouse, selector, as_of.isoformat(sep=" "), extra=flags)
    except DbtError as exc:
        if warehouse.is_busy(exc):
            raise WarehouseBusy(str(exc)) from exc
        raise
    for warning in result.warned:
        get_run_logger().warning("dbt test warning: %s", warning)
    return result.passed


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def load_histograms(warehouse: Warehouse, use_exposure: bool) -> list[PairHistogram]:
    return warehouse.load_histograms(use_exposure)


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def earlier_fits(warehouse: Warehouse, digests: dict[tuple[str, str], str]) -> dict[str, pl.DataFrame]:
    return warehouse.earlier_fits(digests)


@task(retries=1, retry_delay_seconds=1, retry_condition_fn=_is_transient, cache_policy=NO_CACHE,
      task_run_name="fit-{pair.experiment_id}-{pair.metric_id}")
def fit_pair(pair: PairHistogram, options: RunOptions) -> dict[str, pl.DataFrame]:
    """One pair's result tables, keyed by experiment and metric, with its segment breakdowns (one
    fit per dimension). Pure: nothing read or written."""
    configure()  # once per process: this may be a task-runner worker
    if stopping.requested():  # the run is stopping: pairs still queued do not start
        raise FitCancelled("the run is stopping")
    config = options.fit_config(pair.experiment_id, pair.metric_id, pair.planned_split, pair.metric_type,
                                pair.tolerated_drop)
    tables = fit(pair.histogram, pair.control_variant, config).tables()
    breakdowns = []
    for dimension, histogram in pair.segments if options.segments else ():
        try:
            breakdowns.append(fit_segments(histogram, pair.control_variant, config, dimension=dimension).segment_lift)
        except (InputError, FitTimeout) as exc:  # one segment only, or out of time: the pair's results stand
            get_run_logger().warning("%s x %s: no breakdown by %s: %s", pair.experiment_id, pair.metric_id,
                                     dimension, exc)
    if breakdowns:
        tables["segment_lift"] = pl.concat(breakdowns)
    keys = [pl.lit(pair.experiment_id).alias("experiment_id"), pl.lit(pair.metric_id).alias("metric_id")]
    return {name: table.select(*keys, pl.all()) for name, table in tables.items()}


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def write_run(warehouse: Warehouse, run: RunRecord, results: dict[str, pl.DataFrame], failures: pl.DataFrame,
              message: str | None) -> None:
    warehouse.write_run(run, results, failures, message)


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def publish_bi(warehouse: Warehouse, run_id: str, bi_path: str | None, parquet_dir: str | None,
               per_user: bool = False, stage_seconds: dict[str, float] | None = None) -> Publication:
    """The BI copy; each attempt, published or failed, is recorded in glmm.publications with the seconds
    of the run's stages since its commit (``stage_seconds``) and of this attempt (``publish``)."""
    started = time.perf_counter()

    def stages() -> dict[str, float]:
        return {**(stage_seconds or {}), "publish": time.perf_counter() - started}

    try:
        publication = warehouse.publish(run_id, bi_path, parquet_dir, per_user=per_user)
    except Exception as exc:
        _record_publication(warehouse, run_id, "failed", bi_path or warehouse.default_bi_path(),
                            f"{type(exc).__name__}: {exc}", stages())
        raise
    _record_publication(warehouse, run_id, "published", publication.bi_path, None, stages())
    return publication


def _record_publication(warehouse: Warehouse, run_id: str, status: str, bi_path, message: str | None,
                        stage_seconds: dict[str, float]) -> None:
    try:
        warehouse.record_publication(run_id, status, str(bi_path), message, stage_seconds)
    except Exception as exc:  # the results are committed either way; the log keeps what the table could not
        get_run_logger().error("run %s: could not record the publication (%s) in glmm.publications: %s",
                               run_id, status, exc)


@task(cache_policy=NO_CACHE)
def draw_pictures(results: dict[str, pl.DataFrame], folder: Path) -> dict[str, dict[str, str]]:
    """The three pictures of every fitted pair under ``folder/<experiment>/<metric>/``, from the result tables.
    A pair whose pictures fail is logged and skipped: its results are already committed."""
    from glmm_model.plots import PICTURES, write_plots

    drawn = {}
    pictured = {name: results[name] for name in ("posterior_draws", *PICTURES[1:])}
    for (experiment_id, metric_id), draws in pictured["posterior_draws"].group_by(
            ["experiment_id", "metric_id"], maintain_order=True):
        tables = {name: frame.filter((pl.col("experiment_id") == experiment_id) & (pl.col("metric_id") == metric_id))
                  for name, frame in pictured.items()}
        try:
            drawn[f"{experiment_id}/{metric_id}"] = write_plots(
                tables, folder / path_part(experiment_id) / path_part(metric_id))
        except Exception as exc:
            get_run_logger().warning("pictures of %s x %s not drawn: %s", experiment_id, metric_id, exc)
    return drawn


@task(cache_policy=NO_CACHE)
def publish_artifacts(run_id: str, lift: pl.DataFrame, failures: pl.DataFrame, plots: dict[str, dict[str, str]]) -> None:
    lines = [f"# glmm-ab run `{run_id}`", "",
             "| experiment | metric | variant | users | relative lift, median (95% CI) | P(beat control) | decision |",
             "|---|---|---|---|---|---|---|"]
    for r in lift.iter_rows(named=True):
        lines.append(
            f"| {r['experiment_id']} | {r['metric_id']} | {r['variant']} vs {r['control_variant']} | "
            f"{r['n_users']} / {r['n_users_control']} | {r['relative_lift_median']:+.1%} "
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


def collect_fits(pairs: list[PairHistogram], futures) -> tuple[dict[str, pl.DataFrame], pl.DataFrame]:
    """The fitted pairs' tables concatenated per result table, and one failure row per pair that raised."""
    frames: dict[str, list[pl.DataFrame]] = {name: [] for name in SCHEMAS}
    failures = []
    for pair, future in zip(pairs, futures):
        future.wait()
        if future.state.is_completed():
            for name, table in future.result().items():
                frames[name].append(table)
        else:
            exc = future.state.result(raise_on_failure=False)
            failures.append({"experiment_id": pair.experiment_id, "metric_id": pair.metric_id,
                             "error": f"{type(exc).__name__}: {exc}"})
    tables = {name: pl.concat(parts) if parts else pl.DataFrame() for name, parts in frames.items()}
    return tables, pl.DataFrame(failures, schema=FAILURE_SCHEMA)


def fit_pairs(pairs: list[PairHistogram], options: RunOptions) -> tuple[dict[str, pl.DataFrame], pl.DataFrame]:
    """Every pair fitted on the current task runner; the result tables and the failures."""
    return collect_fits(pairs, fit_pair.map(pairs, unmapped(options)))


def fit_changed_pairs(wh: Warehouse, pairs: list[PairHistogram], options: RunOptions,
                      run_id: str) -> tuple[dict[str, pl.DataFrame], pl.DataFrame, int]:
    """The result tables of every pair (with ``fit_inputs``), the failures, and how many pairs reused
    their last fit: a pair whose inputs are those of its last fit reuses it (:mod:`.reuse`), unless
    ``options.reuse_fits`` is off; the others are fitted on the run's task runner."""
    logger = get_run_logger()
    digests = {(p.experiment_id, p.metric_id): reuse.pair_digest(p, options) for p in pairs}
    reused = {}
    if options.reuse_fits and pairs:
        try:
            reused = earlier_fits(wh, digests)
        except Exception as exc:  # fitting every pair gives the same answers, only later
            logger.warning("run %s: earlier fits could not be read, every pair is fitted: %s", run_id, exc)
    reused_keys = set(reused["fit_inputs"].select("experiment_id", "metric_id").rows()) if reused else set()
    to_fit = [p for p in pairs if (p.experiment_id, p.metric_id) not in reused_keys]
    if reused_keys:
        logger.info("run %s: %d of %d pairs unchanged since their last fit: their results are reused",
                    run_id, len(reused_keys), len(pairs))
    if options.task_runner == SEQUENTIAL or not to_fit:
        results, failures = fit_pairs(to_fit, options)
    else:  # a subflow whose task runner ships each pair to a Dask worker
        results, failures = flow(fit_pairs, name="glmm-ab-fits", task_runner=task_runner(options.task_runner),
                                 validate_parameters=False)(to_fit, options)
    failed = set(failures.select("experiment_id", "metric_id").rows())
    fitted = [(p.experiment_id, p.metric_id) for p in to_fit if (p.experiment_id, p.metric_id) not in failed]
    results["fit_inputs"] = reuse.fit_inputs(fitted, digests, run_id)
    return reuse.merge_results(results, reused), failures, len(reused_keys)


@contextmanager
def held_run(wh: Warehouse, as_of: datetime | None, options: RunOptions, run_id: str | None):
    """The run's record, with the warehouse held for it (one run at a time; reentrant, so the CLI
    may take the lock before Prefect starts)."""
    started_at = utc_now()
    run = RunRecord(run_id=run_id or new_run_id(started_at), as_of=as_of or started_at, started_at=started_at,
                    package_version=__version__, config=options.run_config())
    with wh.run_lock(run_lock_timeout()):
        yield run


@contextmanager
def recorded_failure(warehouse: Warehouse, run: RunRecord, report: RunReport, what: str):
    """On any error in the block: a 'failed' glmm.runs row with the reason, then re-raise. An error
    caused by a stop (a terminated dbt, cancelled fits) is recorded and raised as the stop."""
    try:
        yield
        stopping.check()
    except Exception as exc:
        if stopping.requested() and not isinstance(exc, stopping.RunStopped):
            try:
                stopping.check()
            except stopping.RunStopped as stop:
                stop.__cause__, exc = exc, stop
        report.status, report.message = "failed", f"{what}: {type(exc).__name__}: {exc}"
        get_run_logger().error("run %s failed: %s", run.run_id, report.message)
        try:
            warehouse.record_failed_run(run, report.message)
        except Exception as record_exc:  # the warehouse is locked or gone: the log is all there is
            get_run_logger().error("run %s: could not record the failure in glmm.runs: %s", run.run_id, record_exc)
        raise exc


# One pair at a time on this process's cores (each fit already runs its chains on two threads),
# unless options.task_runner ships the fits elsewhere.
@flow(name="glmm-ab-nightly", log_prints=True, task_runner=task_runner(SEQUENTIAL))
def nightly(warehouse: str = DEFAULT_WAREHOUSE, as_of: datetime | None = None,
            options: RunOptions | None = None, run_id: str | None = None) -> RunReport:
    """Fit every experiment x metric in ``warehouse`` as of ``as_of`` (default: now, UTC) and append the results.

    ``options`` (:class:`~flows.options.RunOptions`) says how: the method, priors and
    sampler settings, exposure offsets, where pictures go and where the BI copy is
    published. A publish that fails after the results are committed fails the flow
    with :class:`PublishError`; the results stay committed and the old BI copy stays.
    One run at a time per warehouse: the flow waits for another run to finish
    (``$GLMM_AB_RUN_LOCK_TIMEOUT``, default 30 min), then fails with WarehouseBusy.
    ``run_id``: given by the CLI, so it can record a run whose flow never started.
    """
    configure()
    stopping.reinstall_in_flow()
    options = options or RunOptions()
    logger = get_run_logger()
    wh = open_warehouse(warehouse)
    with held_run(wh, as_of, options, run_id) as run:
        # the report's stage timings are the run record's: its glmm.runs row carries those done by then
        report = RunReport(run_id=run.run_id, status="running", message=None, as_of=run.as_of,
                           stage_seconds=run.stage_seconds)
        logger.info("run %s: warehouse %s, as of %s", run.run_id, wh.describe(), run.as_of.isoformat(sep=" "))

        with recorded_failure(wh, run, report, "before fitting"):
            with report.stage("dbt"):
                prepare_warehouse(wh)
                passed = dbt_build(wh, "pipeline", run.as_of, options.full_refresh)
            logger.info("run %s: dbt built the pipeline models, %d nodes passed", run.run_id, passed)
            with report.stage("load"):
                pairs = load_histograms(wh, options.use_exposure)
        with recorded_failure(wh, run, report, "while fitting"), report.stage("fit"):
            results, failures, report.reused = fit_changed_pairs(wh, pairs, options, run.run_id)
        for r in failures.iter_rows(named=True):
            logger.error("run %s: %s x %s not fitted: %s", run.run_id, r["experiment_id"], r["metric_id"], r["error"])
        report.lift, report.failures = results["lift"], failures
        if not pairs:
            report.message = "no experiment x metric pairs to analyse (no exposures in any window)"
        elif failures.height:
            report.message = f"{failures.height} of {len(pairs)} experiment x metric pairs not fitted"
        with recorded_failure(wh, run, report, "writing results failed"), report.stage("write"):
            write_run(wh, run, results, failures, report.message)
        report.status = "succeeded"

        try:  # committed: a stop from here on leaves the reports and the BI copy to the next run
            stopping.check()
            with report.stage("reports"):
                dbt_build(wh, "reports", run.as_of)
            stopping.check()
        except Exception as exc:
            if stopping.requested():
                logger.error("run %s: results committed; stopped before the reports and the BI copy were refreshed",
                             run.run_id)
                raise stopping.RunStopped(stopping.signal_number()) from exc
            raise
        publish_failure = None
        if options.publish_results:
            with report.stage("publish"):
                try:
                    after_commit = {k: v for k, v in report.stage_seconds.items() if k in ("write", "reports")}
                    report.publication = publish_bi(wh, run.run_id, options.publish_to, options.parquet_dir,
                                                    options.publish_per_user, after_commit)
                    logger.info("run %s: published %d tables to %s", run.run_id, len(report.publication.rows),
                                report.publication.bi_path)
                except Exception as exc:
                    publish_failure = exc
                    logger.error("run %s: results committed, but the BI copy was not published: %s", run.run_id, exc)
        with report.stage("artifacts"):
            if options.plots_dir and results["posterior_draws"].height:
                report.plots = draw_pictures(results, Path(options.plots_dir) / run.run_id)
            try:
                publish_artifacts(run.run_id, report.lift, failures, report.plots)
            except Exception as exc:  # the results are committed; a missing artifact must not fail the run
                logger.warning("run %s: artifacts not published: %s", run.run_id, exc)
        logger.info(
            "run %s %s: %d pairs fitted, %d reused, %d failed; seconds per stage: %s", run.run_id, report.status,
            len(pairs) - report.reused - failures.height, report.reused, failures.height,
            ", ".join(f"{k} {v:.1f}" for k, v in report.stage_seconds.items()),
        )
        if publish_failure is not None:
            raise PublishError(f"results of run {run.run_id} are committed, but the BI copy was not published: "
                               f"{publish_failure}") from publish_failure
        return report
