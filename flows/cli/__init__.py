"""The ``glmm-ab`` command line: one parser, commands imported only when they run.

    glmm-ab fit INPUT --control NAME [--split A=0.9,B=0.1] [--metric-type count|conversion|ratio]
                [--tolerated-drop F] [--no-covariate] [--method ...] [--priors ...] [--seed N] [--plots-dir DIR] [--json]
    glmm-ab demo [--warehouse PATH] [--force] [run options]
    glmm-ab run  [--warehouse PATH] [--as-of TIMESTAMP] [run options]
    glmm-ab backfill --from DATE --to DATE [--warehouse PATH] [run options]
    glmm-ab serve [--cron '0 3 * * *'] [--timezone UTC] [--warehouse PATH] [run options]
    glmm-ab status [--warehouse PATH] [--limit N]
    glmm-ab load-raw SOURCE [--warehouse PATH] [--engine duckdb|spark]
    glmm-ab dashboard [--published PATH] [--port N] [--address HOST]

The run options are :class:`flows.options.RunOptions`' flags. Building the parser
imports only the standard library; ``fit`` (:mod:`.fit`) then imports the engine
alone, never Prefect or dbt; the pipeline commands live in :mod:`.pipeline`.

Exit codes: 0 success; 1 a run failed (its reason is recorded in glmm.runs), or
its results were committed but the BI copy was not published; 2 bad arguments,
bad input or a warehouse that cannot be used; 3 a run succeeded but some
experiment x metric pairs could not be fitted (recorded in glmm.fit_failures).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..options import RunOptions

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_PARTIAL = 1, 2, 3
DEMO_WAREHOUSE = "warehouse/demo.duckdb"
WAREHOUSE_HELP = ("the warehouse: a DuckDB file (default $GLMM_AB_WAREHOUSE or warehouse/glmm_ab.duckdb), or with "
                  "--engine spark a Spark warehouse folder (default $GLMM_AB_SPARK_DIR or warehouse/spark)")


def _engine_argument(p) -> None:
    p.add_argument("--engine", choices=("duckdb", "spark"), default=os.environ.get("GLMM_AB_ENGINE") or None,
                   help="the warehouse engine (default $GLMM_AB_ENGINE, or the --warehouse prefix "
                        "'duckdb:'/'spark:', or duckdb); spark needs the spark extra and a JDK")


class CliError(Exception):
    """A problem with what the user asked for: printed, exit code 2."""


def _command(parser, name: str, module: str, help: str) -> argparse.ArgumentParser:
    p = parser.add_parser(name, help=help)
    p.set_defaults(command_module=module, command_function=f"cmd_{name.replace('-', '_')}")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glmm-ab", description="Bayesian A/B analysis for count metrics (Poisson GLMM).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = _command(sub, "fit", "fit", "fit one experiment from a CSV or Parquet file of per-user counts")
    p.add_argument("input", help="CSV or Parquet: variant, cv_count[, exposure][, pre_cv_count][, segment][, user_id | n_users]")
    p.add_argument("--control", required=True, help="name of the control variant")
    RunOptions.add_arguments(p, RunOptions.SAMPLING)
    p.add_argument("--ci-level", type=float, default=0.95)
    p.add_argument("--split", default=None, metavar="VARIANT=WEIGHT,...",
                   help="planned traffic split for the sample-ratio check, e.g. control=0.9,treatment=0.1 "
                        "(weights normalised; default an equal split)")
    p.add_argument("--metric-type", default="count", choices=("count", "conversion", "ratio"),
                   help="count: events per user (default); conversion: users with cv_count > 0 converted "
                        "(a Bernoulli model, exposure unused); ratio: cv_count numerator events per 'exposure' "
                        "denominator events (required)")
    p.add_argument("--tolerated-drop", type=float, default=None, metavar="FRACTION",
                   help="a guardrail's tolerated relative drop (0.02: 2%%): report P(lift < -FRACTION)")
    p.add_argument("--plots-dir", default=None, help="write trace, user_predictive and rate_density PNGs here")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")

    p = _command(sub, "demo", "pipeline", "create a demo warehouse of synthetic raw logs and run the nightly flow on it")
    p.add_argument("--warehouse", default=None, help=f"DuckDB file to create (default {DEMO_WAREHOUSE})")
    p.add_argument("--force", action="store_true", help="replace an existing --warehouse file")
    _engine_argument(p)
    RunOptions.add_arguments(p)

    p = _command(sub, "run", "pipeline", "run the nightly flow once against a warehouse that follows the raw contract")
    p.add_argument("--warehouse", default=None, help=WAREHOUSE_HELP)
    p.add_argument("--as-of", default=None, help="count conversions up to this time (ISO timestamp, UTC); default now")
    _engine_argument(p)
    RunOptions.add_arguments(p)

    p = _command(sub, "backfill", "pipeline", "run the nightly flow for each as-of date of a range, in order")
    p.add_argument("--warehouse", default=None, help=WAREHOUSE_HELP)
    p.add_argument("--from", dest="date_from", required=True, help="first as-of date (YYYY-MM-DD; as of its midnight UTC)")
    p.add_argument("--to", dest="date_to", required=True, help="last as-of date, inclusive")
    _engine_argument(p)
    RunOptions.add_arguments(p)

    p = _command(sub, "serve", "pipeline", "serve the nightly deployment on a cron schedule (needs PREFECT_API_URL)")
    p.add_argument("--warehouse", default=None, help=WAREHOUSE_HELP)
    p.add_argument("--cron", default="0 3 * * *", help="when to run (default '0 3 * * *': 03:00 every day)")
    p.add_argument("--timezone", default="UTC", help="time zone of the cron schedule (IANA name, default UTC)")
    p.add_argument("--name", default="nightly", help="deployment name (default 'nightly')")
    _engine_argument(p)
    RunOptions.add_arguments(p)

    p = _command(sub, "status", "pipeline", "print the last runs and the health of every experiment x metric")
    p.add_argument("--warehouse", default=None, help=WAREHOUSE_HELP)
    p.add_argument("--limit", type=int, default=10, help="how many runs (default 10)")
    _engine_argument(p)

    p = _command(sub, "load-raw", "pipeline", "land raw logs (a DuckDB file's raw tables, or a folder of Parquet "
                 "files, one per raw table) in the warehouse's raw schema, replacing what is there")
    p.add_argument("source", help="a DuckDB file with raw.experiments, raw.metrics, raw.assignments, raw.events "
                                  "(and optionally raw.variants), or a folder of experiments.parquet, ... files")
    p.add_argument("--warehouse", default=None, help=WAREHOUSE_HELP)
    _engine_argument(p)

    p = _command(sub, "dashboard", "pipeline", "start the Streamlit dashboard on the published BI copy (read-only)")
    p.add_argument("--published", default=None,
                   help="the BI copy (default $GLMM_AB_BI_PATH, or the copy beside $GLMM_AB_WAREHOUSE, "
                        "or warehouse/glmm_ab_bi.duckdb, or warehouse/demo_bi.duckdb)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--address", default="127.0.0.1")
    return parser


def main(argv=None) -> int:
    """Parse ``argv`` and run the chosen command; a CliError prints and exits with code 2."""
    return _run(build_parser().parse_args(argv))


def script() -> None:
    """The installed ``glmm-ab`` command: :func:`main` on the command line, then the process ends.

    After ``fit`` it ends at once (``os._exit``), its output flushed and its logging shut down:
    the interpreter's teardown (freeing the loaded JAX program and its ~1,500 memory maps, the
    modules of JAX and polars, JAX's exit hooks) took 0.2 s of a 2 s fit of the source article's
    example and has nothing to do for it. The fit holds no server, lock or open output file, and
    writes nothing at exit. The pipeline commands end normally: Prefect's exit hooks stop its API
    server and flush its logs.
    """
    args = build_parser().parse_args()
    code = _run(args)
    if args.command == "fit":
        import logging

        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (BrokenPipeError, ValueError):  # a reader that went away, or a closed stream: nothing to flush to
                pass
        logging.shutdown()
        os._exit(code or 0)
    sys.exit(code)


def _run(args) -> int:
    command = getattr(importlib.import_module(f"{__name__}.{args.command_module}"), args.command_function)
    try:
        return command(args)
    except CliError as exc:
        print(f"glmm-ab: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # output piped into `head`: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    script()
