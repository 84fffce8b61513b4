"""The ``glmm-ab`` entry point: the engine's ``fit`` plus the pipeline's ``demo`` and ``run``.

    glmm-ab demo [--warehouse PATH] [--force]
    glmm-ab run  [--warehouse PATH] [--as-of TIMESTAMP] [--method ...] [--exposure] [--plots-dir DIR]
                 [--publish-to PATH] [--parquet-dir DIR] [--no-publish]
    glmm-ab dashboard [--published PATH] [--port N] [--address HOST]
    glmm-ab status [--warehouse PATH] [--limit N]
    glmm-ab backfill --from DATE --to DATE [--warehouse PATH] [run options]
    glmm-ab serve [--cron '0 3 * * *'] [--timezone UTC] [--warehouse PATH] [run options]

Exit codes of ``run`` and ``demo``: 0 when the run succeeded, 1 when it failed
(its reason is recorded in glmm.runs), 3 when it succeeded but some experiment x
metric pairs could not be fitted (recorded in glmm.fit_failures), 2 for bad
arguments or a warehouse that cannot be used. A run whose results were committed
but whose BI copy could not be published exits 1 and says so.
"""
from __future__ import annotations

import os
import sys
from datetime import date, datetime, timedelta
from pathlib import Path

from glmm_model.cli import CliError, build_parser, run

EXIT_FAILED, EXIT_PARTIAL = 1, 3
DEMO_WAREHOUSE = "warehouse/demo.duckdb"


def default_warehouse() -> str:
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
    header = f"{'experiment':<18} {'metric':<12} {'variant (vs control)':<28} {'users':>11}  {'relative lift [95% CI]':<26} {'P(beat)':>7}  decision"
    print(header, file=out)
    print("-" * len(header), file=out)
    for r in report.lift.iter_rows(named=True):
        arms = f"{r['variant']} (vs {r['control_variant']})"
        users = f"{r['n_users']}/{r['n_users_control']}"
        lift = f"{r['relative_lift_mean']:+6.1%} [{r['relative_lift_low']:+6.1%}, {r['relative_lift_high']:+6.1%}]"
        print(f"{r['experiment_id']:<18} {r['metric_id']:<12} {arms:<28} {users:>11}  {lift:<26} {r['prob_beat_control']:>7.3f}  {r['decision']}", file=out)
    for r in report.failures.iter_rows(named=True):
        print(f"not fitted: {r['experiment_id']} x {r['metric_id']}: {r['error']}", file=out)
    if report.message:
        print(report.message, file=out)
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in report.stage_seconds.items())
    print(f"seconds per stage: {stages}", file=out)


def flow_parameters(args, warehouse: str) -> dict:
    """The nightly flow's parameters from the run options (shared by run, demo, backfill and serve)."""
    return dict(
        warehouse=warehouse, method=args.method, priors=args.priors, num_chains=args.chains,
        num_warmup=args.warmup, num_samples=args.samples, seed=args.seed, use_exposure=args.exposure,
        plots_dir=args.plots_dir, publish_to=args.publish_to or os.environ.get("GLMM_AB_BI_PATH") or None,
        parquet_dir=args.parquet_dir, publish_results=not args.no_publish,
    )


def _run_flow(args, warehouse: str, as_of: datetime | None = None) -> int:
    _prefect_environment()
    from glmm_model.warehouse import WarehouseError

    from .nightly import nightly

    try:
        report = nightly(as_of=as_of, **flow_parameters(args, warehouse))
    except WarehouseError as exc:
        print(f"glmm-ab: run failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # the flow recorded the failure in glmm.runs; say so plainly
        print(f"glmm-ab: run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print_lift(report)
    if report.publication is not None:
        print(f"published for BI: {report.publication.bi_path} (DuckDB) and {report.publication.parquet_dir}/ (Parquet)")
    return EXIT_PARTIAL if report.failures.height else 0


def _existing_warehouse(args) -> str:
    warehouse = args.warehouse or default_warehouse()
    if not Path(warehouse).is_file():
        raise CliError(f"warehouse file not found: {warehouse} (create it with 'glmm-ab demo' or point --warehouse at yours)")
    return warehouse


def cmd_run(args) -> int:
    return _run_flow(args, _existing_warehouse(args), parse_as_of(args.as_of))


def parse_date(text: str, flag: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise CliError(f"{flag} must be a date such as 2026-11-01, got {text!r}") from exc


def cmd_backfill(args) -> int:
    """One run per as-of date, oldest first; each date's as-of is its midnight (UTC)."""
    warehouse = _existing_warehouse(args)
    first, last = parse_date(args.date_from, "--from"), parse_date(args.date_to, "--to")
    if last < first:
        raise CliError(f"--to {last} is before --from {first}")
    if (last - first).days >= 366:
        raise CliError(f"--from {first} --to {last} spans more than a year; backfill in smaller ranges")
    codes = {}
    for k in range((last - first).days + 1):
        day = first + timedelta(days=k)
        print(f"\n== backfill {k + 1} of {(last - first).days + 1}: as of {day} 00:00 ==")
        codes[day] = _run_flow(args, warehouse, datetime.combine(day, datetime.min.time()))
    failed = [str(d) for d, c in codes.items() if c == EXIT_FAILED]
    print(f"\nbackfill {first}..{last}: {len(codes) - len(failed)} of {len(codes)} runs succeeded"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    if failed:
        return EXIT_FAILED
    return EXIT_PARTIAL if EXIT_PARTIAL in codes.values() else 0


def cmd_serve(args) -> int:
    """Register the nightly deployment with a cron schedule on a Prefect server and run its flow runs."""
    warehouse = str(Path(_existing_warehouse(args)).resolve())
    _prefect_environment()
    if not os.environ.get("PREFECT_API_URL"):
        raise CliError("serve needs a Prefect server: start one with 'prefect server start' and set "
                       "PREFECT_API_URL (e.g. http://127.0.0.1:4200/api)")
    from .schedule import nightly_schedule, serve_nightly

    try:
        nightly_schedule(args.cron, args.timezone)
    except ValueError as exc:
        raise CliError(str(exc)) from exc

    parameters = flow_parameters(args, warehouse)
    for key in ("plots_dir", "publish_to", "parquet_dir"):
        if parameters[key]:
            parameters[key] = str(Path(parameters[key]).resolve())
    serve_nightly(args.name, nightly_schedule(args.cron, args.timezone), parameters)
    return 0


def cmd_demo(args) -> int:
    from glmm_model import demo_data
    from glmm_model import warehouse as wh

    warehouse = Path(args.warehouse or DEMO_WAREHOUSE)
    if warehouse.exists():
        if args.warehouse and not args.force:
            raise CliError(f"{warehouse} exists; the demo would replace its raw tables. Pass --force, or pick another path")
        warehouse.unlink()
        Path(f"{warehouse}.wal").unlink(missing_ok=True)
    if args.plots_dir is None:  # the demo shows everything: pictures beside its warehouse
        args.plots_dir = str(warehouse.parent / "plots")
    tables = demo_data.build()
    with wh.connect(warehouse) as con:
        wh.load_raw(con, tables)
    print(f"demo warehouse {warehouse}: " + ", ".join(f"raw.{k} {v.height} rows" for k, v in tables.items()))
    code = _run_flow(args, str(warehouse))
    if code in (0, EXIT_PARTIAL):
        print(f"\nPictures (trace, user_predictive, rate_density) per experiment x metric under {args.plots_dir}/<run_id>/")
        from .publish import default_bi_path

        bi = args.publish_to or default_bi_path(warehouse)
        print(f"Query the published copy:  duckdb -readonly {bi} -c 'SELECT * FROM rpt_experiment_results_latest'")
        print(f"  or in Python:  duckdb.connect('{bi}', read_only=True).sql('SELECT * FROM rpt_experiment_results_latest').show()")
        print(f"See it in a browser:  glmm-ab dashboard --published {bi}")
    return code


def cmd_status(args) -> int:
    """Print the last runs and every experiment x metric's health; exit 1 when the newest run failed."""
    from glmm_model import warehouse as wh

    warehouse = Path(args.warehouse or default_warehouse())
    if not warehouse.is_file():
        raise CliError(f"warehouse file not found: {warehouse}")
    try:
        with wh.connect(warehouse, read_only=True, lock_wait=10) as con:
            if not wh.table_exists(con, wh.RESULT_SCHEMA, "runs"):
                print(f"{warehouse}: no runs yet")
                return 0
            runs = wh.recent_runs(con, args.limit)
            health = wh.experiment_health(con)
    except wh.WarehouseError as exc:
        print(f"glmm-ab: status unavailable: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"Last {runs.height} run(s) of {warehouse}:")
    print(f"{'run_id':<26} {'as of':<17} {'finished':<17} {'status':<10} {'fitted':>6} {'failed':>6}  message")
    for r in runs.iter_rows(named=True):
        print(f"{r['run_id']:<26} {r['as_of']:%Y-%m-%d %H:%M} {r['finished_at']:%Y-%m-%d %H:%M} {r['status']:<10} "
              f"{r['pairs_fitted']:>6} {r['pairs_failed']:>6}  {r['message'] or ''}")
    if health.height:
        print("\nHealth of the latest results (rpt_experiment_health):")
        for r in health.iter_rows(named=True):
            print(f"{r['experiment_id']:<20} {r['metric_id']:<14} {r['health_status']:<8} {r['health_reasons'] or ''}")
    return EXIT_FAILED if runs.height and runs["status"][0] == "failed" else 0


def cmd_dashboard(args) -> int:
    """Start the Streamlit dashboard on the published copy (read-only); this process becomes the server."""
    from dashboard.data import default_published_path

    published = Path(args.published) if args.published else default_published_path()
    if not published.is_file():
        raise CliError(f"no published results at {published}: run 'glmm-ab demo' or 'glmm-ab run' first, "
                       "or point --published at the BI copy")
    app = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"
    command = [sys.executable, "-m", "streamlit", "run", str(app), "--server.headless", "true",
               "--server.port", str(args.port), "--server.address", args.address,
               "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer", "--", "--published", str(published.resolve())]
    print(f"glmm-ab dashboard on http://{args.address}:{args.port} reading {published} (read-only); Ctrl-C stops it",
          flush=True)
    # Become the Streamlit server rather than its parent: a SIGTERM from a supervisor
    # (systemd, a container runtime, `kill`) then stops the server itself. As a child,
    # it outlived a terminated parent and kept the port.
    os.execv(sys.executable, command)


def _add_run_options(p) -> None:
    p.add_argument("--method", choices=["collapsed", "latent"], default="collapsed")
    p.add_argument("--priors", choices=["default", "article"], default="default")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--exposure", action="store_true", help="use exposure days as a log offset (rates per day)")
    p.add_argument("--plots-dir", default=None, help="write each pair's three pictures under DIR/<run_id>/")
    p.add_argument("--publish-to", default=None,
                   help="BI-facing DuckDB copy (default $GLMM_AB_BI_PATH or <warehouse stem>_bi.duckdb beside it)")
    p.add_argument("--parquet-dir", default=None, help="Parquet copy of the same tables (default <bi stem>_parquet/)")
    p.add_argument("--no-publish", action="store_true", help="do not publish the BI copy")


def main(argv=None) -> int:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    p = sub.add_parser("demo", help="create a demo warehouse of synthetic raw logs and run the nightly flow on it")
    p.add_argument("--warehouse", default=None, help=f"DuckDB file to create (default {DEMO_WAREHOUSE})")
    p.add_argument("--force", action="store_true", help="replace an existing --warehouse file")
    _add_run_options(p)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("run", help="run the nightly flow once against a warehouse that follows the raw contract")
    p.add_argument("--warehouse", default=None, help="DuckDB file (default $GLMM_AB_WAREHOUSE or warehouse/glmm_ab.duckdb)")
    p.add_argument("--as-of", default=None, help="count conversions up to this time (ISO timestamp, UTC); default now")
    _add_run_options(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("backfill", help="run the nightly flow for each as-of date of a range, in order")
    p.add_argument("--warehouse", default=None, help="DuckDB file (default $GLMM_AB_WAREHOUSE or warehouse/glmm_ab.duckdb)")
    p.add_argument("--from", dest="date_from", required=True, help="first as-of date (YYYY-MM-DD; as of its midnight UTC)")
    p.add_argument("--to", dest="date_to", required=True, help="last as-of date, inclusive")
    _add_run_options(p)
    p.set_defaults(func=cmd_backfill)
    p = sub.add_parser("serve", help="serve the nightly deployment on a cron schedule (needs PREFECT_API_URL)")
    p.add_argument("--warehouse", default=None, help="DuckDB file (default $GLMM_AB_WAREHOUSE or warehouse/glmm_ab.duckdb)")
    p.add_argument("--cron", default="0 3 * * *", help="when to run (default '0 3 * * *': 03:00 every day)")
    p.add_argument("--timezone", default="UTC", help="time zone of the cron schedule (IANA name, default UTC)")
    p.add_argument("--name", default="nightly", help="deployment name (default 'nightly')")
    _add_run_options(p)
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("status", help="print the last runs and the health of every experiment x metric")
    p.add_argument("--warehouse", default=None, help="DuckDB file (default $GLMM_AB_WAREHOUSE or warehouse/glmm_ab.duckdb)")
    p.add_argument("--limit", type=int, default=10, help="how many runs (default 10)")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("dashboard", help="start the Streamlit dashboard on the published BI copy (read-only)")
    p.add_argument("--published", default=None,
                   help="the BI copy (default $GLMM_AB_BI_PATH, or the copy beside $GLMM_AB_WAREHOUSE, "
                        "or warehouse/glmm_ab_bi.duckdb, or warehouse/demo_bi.duckdb)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--address", default="127.0.0.1")
    p.set_defaults(func=cmd_dashboard)
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
