"""The pipeline's commands: ``demo``, ``run``, ``backfill``, ``serve``, ``status`` and ``dashboard``.

Each talks to the warehouse through the seam (:func:`flows.warehouse.open_warehouse`)
and runs the nightly flow (:mod:`flows.nightly`, imported with Prefect only when a
run starts). Exit codes are in :mod:`flows.cli`.
"""
from __future__ import annotations

import os
import sys
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path

from .. import stopping
from ..clock import new_run_id, utc_now
from ..options import RunOptions
from ..prefect_api import temporary_api
from ..warehouse import RunRecord, Warehouse, WarehouseError, open_warehouse, run_lock_timeout
from . import DEMO_WAREHOUSE, EXIT_FAILED, EXIT_PARTIAL, CliError

DEMO_SPARK_WAREHOUSE = "warehouse/demo_spark"


def default_warehouse(engine: str | None = None) -> str:
    if engine == "spark":
        return os.environ.get("GLMM_AB_SPARK_DIR", "warehouse/spark")
    return os.environ.get("GLMM_AB_WAREHOUSE", "warehouse/glmm_ab.duckdb")


def _prefect_environment() -> None:
    # The ephemeral Prefect API can take ~20 s to start on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # Its telemetry service phones home; a warehouse job often has no way out and
    # would log an ERROR every run. Users can still turn it on explicitly.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def parse_as_of(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise CliError(f"--as-of must be an ISO timestamp such as 2026-11-24T03:00:00, got {text!r}") from exc


def print_lift(report, out=sys.stdout) -> None:
    print(f"\nRun {report.run_id} ({report.status}) as of {report.as_of:%Y-%m-%d %H:%M}", file=out)
    rows = list(report.lift.iter_rows(named=True))
    # columns as wide as their longest value
    e_w = max([18] + [len(r["experiment_id"]) for r in rows])
    m_w = max([12] + [len(r["metric_id"]) for r in rows])
    a_w = max([28] + [len(f"{r['variant']} (vs {r['control_variant']})") for r in rows])
    header = (f"{'experiment':<{e_w}} {'metric':<{m_w}} {'variant (vs control)':<{a_w}} {'users':>11}  "
              f"{'lift, median [95% CI]':<26} {'P(beat)':>7}  decision")
    print(header, file=out)
    print("-" * len(header), file=out)
    for r in rows:
        arms = f"{r['variant']} (vs {r['control_variant']})"
        users = f"{r['n_users']}/{r['n_users_control']}"
        lift = f"{r['relative_lift_median']:+6.1%} [{r['relative_lift_low']:+6.1%}, {r['relative_lift_high']:+6.1%}]"
        print(f"{r['experiment_id']:<{e_w}} {r['metric_id']:<{m_w}} {arms:<{a_w}} {users:>11}  {lift:<26} "
              f"{r['prob_beat_control']:>7.3f}  {r['decision']}", file=out)
    for r in report.failures.iter_rows(named=True):
        print(f"not fitted: {r['experiment_id']} x {r['metric_id']}: {r['error']}", file=out)
    if report.message:
        print(report.message, file=out)
    if report.reused:
        pairs = report.lift.select("experiment_id", "metric_id").unique().height
        print(f"{report.reused} of {pairs} experiment x metric pairs reused their last fit (inputs unchanged; "
              "--refit-all fits every pair)", file=out)
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in report.stage_seconds.items())
    print(f"seconds per stage: {stages}", file=out)


def run_options(args) -> RunOptions:
    """The run options of the command line, validated before anything runs (exit 2 when out of range)."""
    try:
        return RunOptions.from_args(args)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def _import_the_night() -> None:
    """What a night imports (the flow, Prefect, JAX, polars; dbt and its adapters), done while the
    temporary Prefect API starts on the other core."""
    from ..dbt import import_dbt
    from ..nightly import nightly  # noqa: F401

    import_dbt()


def _run_flow(warehouse: Warehouse, options: RunOptions, as_of: datetime | None = None) -> int:
    """One nightly run. The warehouse is held for the run before Prefect's API starts: two runs at once
    would start two temporary APIs on one PREFECT_HOME, and both write the same marts."""
    _prefect_environment()
    stopping.install()
    run_id = new_run_id()
    try:
        with warehouse.run_lock(run_lock_timeout()), temporary_api(while_starting=_import_the_night):
            from ..nightly import nightly

            with stopping.in_flow():
                report = nightly(warehouse=warehouse.describe(), as_of=as_of, options=options, run_id=run_id)
    except stopping.RunStopped as exc:  # recorded by the flow when it had started
        print(f"glmm-ab: run {run_id} {exc}", file=sys.stderr)
        return exc.exit_code
    except WarehouseError as exc:  # the raw contract (recorded by the flow), a lock, another run
        print(f"glmm-ab: run failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # the flow recorded its failure in glmm.runs, unless it never started
        reason = f"{type(exc).__name__}: {exc}"
        _record_unstarted_run(warehouse, run_id, as_of, options, reason)
        print(f"glmm-ab: run failed: {reason}", file=sys.stderr)
        return EXIT_FAILED
    print_lift(report)
    if report.publication is not None:
        print(f"published for BI: {report.publication.bi_path} (DuckDB) and {report.publication.parquet_dir}/ (Parquet)")
    return EXIT_PARTIAL if report.failures.height else 0


def _record_unstarted_run(warehouse: Warehouse, run_id: str, as_of: datetime | None, options: RunOptions,
                          reason: str) -> None:
    """A run that failed before its flow could record anything (Prefect's API did not start, ...)
    still leaves its 'failed' glmm.runs row, so `glmm-ab status` sees it."""
    try:
        if warehouse.has_run(run_id):
            return
        from glmm_model import __version__

        now = utc_now()
        warehouse.record_failed_run(RunRecord(run_id, as_of or now, now, __version__, options.run_config()),
                                    f"the run did not start: {reason}")
    except Exception as exc:
        print(f"glmm-ab: could not record the failed run {run_id} in glmm.runs: {exc}", file=sys.stderr)


def _warehouse(args, default: str | None = None) -> Warehouse:
    engine = getattr(args, "engine", None)
    try:
        return open_warehouse(args.warehouse or default or default_warehouse(engine), engine)
    except WarehouseError as exc:
        raise CliError(str(exc)) from exc


def _existing_warehouse(args) -> Warehouse:
    warehouse = _warehouse(args)
    if not warehouse.exists():
        raise CliError(f"warehouse file not found: {warehouse.describe()} (create it with 'glmm-ab demo' or point "
                       "--warehouse at yours)")
    return warehouse


def cmd_run(args) -> int:
    options, as_of = run_options(args), parse_as_of(args.as_of)
    return _run_flow(_existing_warehouse(args), options, as_of)


def parse_date(text: str, flag: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise CliError(f"{flag} must be a date such as 2026-11-01, got {text!r}") from exc


def cmd_backfill(args) -> int:
    """One run per as-of date, oldest first; each date's as-of is its midnight (UTC)."""
    options = run_options(args)
    warehouse = _existing_warehouse(args)
    first, last = parse_date(args.date_from, "--from"), parse_date(args.date_to, "--to")
    if last < first:
        raise CliError(f"--to {last} is before --from {first}")
    if (last - first).days >= 366:
        raise CliError(f"--from {first} --to {last} spans more than a year; backfill in smaller ranges")
    codes = {}
    _prefect_environment()
    with temporary_api(while_starting=_import_the_night):  # one Prefect API for every night (each run finds it)
        for k in range((last - first).days + 1):
            day = first + timedelta(days=k)
            print(f"\n== backfill {k + 1} of {(last - first).days + 1}: as of {day} 00:00 ==")
            codes[day] = _run_flow(warehouse, options, datetime.combine(day, datetime.min.time()))
            if stopping.requested():
                print(f"backfill stopped ({stopping.RunStopped(stopping.signal_number())}) at {day}", file=sys.stderr)
                return codes[day]
    failed = [str(d) for d, c in codes.items() if c == EXIT_FAILED]
    print(f"\nbackfill {first}..{last}: {len(codes) - len(failed)} of {len(codes)} runs succeeded"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    if failed:
        return EXIT_FAILED
    return EXIT_PARTIAL if EXIT_PARTIAL in codes.values() else 0


def cmd_serve(args) -> int:
    """Register the nightly deployment with a cron schedule on a Prefect server and run its flow runs."""
    options = run_options(args).with_absolute_paths()
    warehouse = _existing_warehouse(args)
    _prefect_environment()
    if not os.environ.get("PREFECT_API_URL"):
        raise CliError("serve needs a Prefect server: start one with 'prefect server start' and set "
                       "PREFECT_API_URL (e.g. http://127.0.0.1:4200/api)")
    from ..schedule import nightly_schedule, serve_nightly

    try:
        nightly_schedule(args.cron, args.timezone)
    except ValueError as exc:
        raise CliError(str(exc)) from exc

    parameters = {"warehouse": warehouse.describe(), "options": options.to_dict()}
    serve_nightly(args.name, nightly_schedule(args.cron, args.timezone), parameters)
    return 0


def cmd_demo(args) -> int:
    from ..demo import build

    options = run_options(args)
    warehouse = _warehouse(args, DEMO_SPARK_WAREHOUSE if args.engine == "spark" else DEMO_WAREHOUSE)
    if warehouse.exists():
        if args.warehouse and not args.force:
            raise CliError(f"{warehouse.describe()} exists; the demo would replace its raw tables. Pass --force, "
                           "or pick another path")
        warehouse.reset()
    if options.plots_dir is None:  # the demo shows everything: pictures beside its warehouse
        options = replace(options, plots_dir=str(warehouse.default_bi_path().parent / "plots"))
    tables = build()
    warehouse.load_raw(tables)
    print(f"demo warehouse {warehouse.describe()}: " + ", ".join(f"raw.{k} {v.height} rows" for k, v in tables.items()))
    code = _run_flow(warehouse, options)
    if code in (0, EXIT_PARTIAL):
        print(f"\nPictures (trace, user_predictive, rate_density) per experiment x metric under {options.plots_dir}/<run_id>/")
        bi = options.publish_to or warehouse.default_bi_path()
        print(f"Query the published copy:  duckdb -readonly {bi} -c 'SELECT * FROM rpt_experiment_results_latest'")
        print(f"  or in Python:  duckdb.connect('{bi}', read_only=True).sql('SELECT * FROM rpt_experiment_results_latest').show()")
        print(f"See it in a browser:  glmm-ab dashboard --published {bi}")
    return code


def cmd_load_raw(args) -> int:
    """Land raw logs into the warehouse's raw schema, then check them against the raw contract."""
    from ..warehouse.duckdb_warehouse import read_raw_source

    warehouse = _warehouse(args)
    try:
        tables = read_raw_source(Path(args.source))
        warehouse.load_raw(tables)
        warehouse.check_raw_contract()
    except WarehouseError as exc:
        raise CliError(str(exc)) from exc
    print(f"{warehouse.describe()}: " + ", ".join(f"raw.{k} {v.height} rows" for k, v in tables.items()))
    return 0


def cmd_status(args) -> int:
    """Print the last runs and every experiment x metric's health; exit 1 when the newest run failed
    or its BI copy was not published."""
    warehouse = _warehouse(args)
    if not warehouse.exists():
        raise CliError(f"warehouse file not found: {warehouse.describe()}")
    try:
        runs = warehouse.recent_runs(args.limit)
        health = warehouse.experiment_health() if runs is not None else None
    except WarehouseError as exc:
        print(f"glmm-ab: status unavailable: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if runs is None:
        print(f"{warehouse.describe()}: no runs yet")
        return 0
    print(f"Last {runs.height} run(s) of {warehouse.describe()}:")
    print(f"{'run_id':<26} {'as of':<17} {'finished':<17} {'status':<10} {'fitted':>6} {'reused':>6} {'failed':>6}  "
          f"{'BI copy':<13}  message")
    bi_labels = {"published": "published", "failed": "NOT published", None: "-"}
    for r in runs.iter_rows(named=True):
        message = "; ".join(filter(None, [r["message"], r["published"] == "failed"
                                          and f"BI copy not published: {r['publish_message']}"]))
        print(f"{r['run_id']:<26} {r['as_of']:%Y-%m-%d %H:%M} {r['finished_at']:%Y-%m-%d %H:%M} {r['status']:<10} "
              f"{r['pairs_fitted']:>6} {r['pairs_reused']:>6} {r['pairs_failed']:>6}  {bi_labels.get(r['published'], r['published']):<13}  "
              f"{message}")
    if health.height:
        print("\nHealth of the latest results (rpt_experiment_health):")
        for r in health.iter_rows(named=True):
            print(f"{r['experiment_id']:<20} {r['metric_id']:<14} {r['health_status']:<8} {r['health_reasons'] or ''}")
    newest_failed = runs.height and (runs["status"][0] == "failed" or runs["published"][0] == "failed")
    return EXIT_FAILED if newest_failed else 0


def cmd_dashboard(args) -> int:
    """Start the Streamlit dashboard on the published copy (read-only); this process becomes the server."""
    from dashboard.data import default_published_path

    from ..resources import dashboard_app

    published = Path(args.published) if args.published else default_published_path()
    if not published.is_file():
        raise CliError(f"no published results at {published}: run 'glmm-ab demo' or 'glmm-ab run' first, "
                       "or point --published at the BI copy")
    app = dashboard_app()
    command = [sys.executable, "-m", "streamlit", "run", str(app), "--server.headless", "true",
               "--server.port", str(args.port), "--server.address", args.address,
               "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer", "--", "--published", str(published.resolve())]
    print(f"glmm-ab dashboard on http://{args.address}:{args.port} reading {published} (read-only); Ctrl-C stops it",
          flush=True)
    # Become the Streamlit server rather than its parent: a SIGTERM from a supervisor
    # (systemd, a container runtime, `kill`) then stops the server itself. As a child,
    # it outlived a terminated parent and kept the port.
    os.execv(sys.executable, command)


