"""``glmm-ab`` command line.

    glmm-ab fit INPUT --control NAME [--method collapsed|latent] [--priors default|article]
                [--seed N] [--chains N --warmup N --samples N] [--plots-dir DIR] [--json]

INPUT is CSV or Parquet with ``variant``, ``cv_count`` and optionally ``exposure``,
``user_id`` (one row per user) or ``n_users`` (rows already counted). Bad input
exits with code 2 and writes nothing. The installed ``glmm-ab`` command is
:mod:`flows.cli`, which adds the pipeline's ``demo`` and ``run`` to this parser;
this module alone (``python -m glmm_model.cli``) needs neither Prefect nor dbt.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2

LIFT_COLUMNS = [
    "variant", "n_users", "observed_mean", "expected_count_mean",
    "relative_lift_mean", "relative_lift_low", "relative_lift_high",
    "prob_beat_control", "expected_loss_ship", "prob_in_rope", "decision",
]


class CliError(Exception):
    """A problem with what the user asked for: printed, exit code 2."""


def read_table(path: str):
    import polars as pl

    p = Path(path)
    if not p.is_file():
        raise CliError(f"input file not found: {path}")
    suffix = p.suffix.lower()
    try:
        if suffix == ".csv":
            return pl.read_csv(p, infer_schema_length=None)
        if suffix in (".parquet", ".pq"):
            return pl.read_parquet(p)
    except Exception as exc:  # polars raises several types for malformed files
        raise CliError(f"could not read {path}: {exc}") from exc
    raise CliError(f"input must be a .csv or .parquet file, got {p.name!r}")


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_rows(table) -> list[dict]:
    return [{k: _clean(v) for k, v in row.items()} for row in table.to_dicts()]


def print_result(result, out=sys.stdout) -> None:
    import polars as pl

    with pl.Config(tbl_rows=50, tbl_cols=20, tbl_width_chars=160, float_precision=4,
                   tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
        print("Lift against control", result.data.control, file=out)
        print(result.lift.select(LIFT_COLUMNS), file=out)
        print("\nPosterior summary (equal-tailed {:.0%} intervals)".format(result.config.ci_level), file=out)
        print(result.posterior_summary, file=out)
    d = result.diagnostics.row(0, named=True)
    print(
        f"\nDiagnostics: {d['method']}, {d['num_chains']} chains x ({d['num_warmup']} warmup + {d['num_samples']} draws); "
        f"divergences {d['divergences']}, max R-hat {d['max_r_hat']:.3f}, min ESS bulk/tail "
        f"{d['min_ess_bulk']:.0f}/{d['min_ess_tail']:.0f}, BFMI {d['min_bfmi']:.2f}, "
        f"SRM p {d['srm_p_value']:.3g}, PPC p {d['ppc_p_value']:.3g}; {d['total_seconds']:.1f} s",
        file=out,
    )
    for row in result.lift.iter_rows(named=True):
        print(f"{row['variant']}: {row['decision']} ({row['decision_reason']})", file=out)
    for name, path in result.plots.items():
        print(f"plot {name}: {path}", file=out)


def cmd_fit(args) -> int:
    from . import FitConfig, InputError, Priors, SamplerConfig, fit
    from .sampling import enable_compilation_cache

    data = read_table(args.input)
    try:
        priors = Priors.from_preset(args.priors)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    try:
        config = FitConfig(
            method=args.method,
            priors=priors,
            sampler=SamplerConfig(
                num_chains=args.chains, num_warmup=args.warmup, num_samples=args.samples, seed=args.seed,
                progress_bar=False if args.json else None,
            ),
            ci_level=args.ci_level,
            plots_dir=args.plots_dir,
        )
    except ValueError as exc:  # settings out of range (chains, draws, seed, interval level)
        raise CliError(str(exc)) from exc
    enable_compilation_cache()
    try:
        result = fit(data, args.control, config)
    except InputError as exc:
        raise CliError(str(exc)) from exc
    if args.json:
        payload = {name: _json_rows(getattr(result, name)) for name in ("posterior_summary", "lift", "diagnostics")}
        json.dump(payload, sys.stdout, indent=2, allow_nan=False)
        print()
    else:
        print_result(result)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glmm-ab", description="Bayesian A/B analysis for count metrics (Poisson GLMM).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fit", help="fit one experiment from a CSV or Parquet file of per-user counts")
    p.add_argument("input", help="CSV or Parquet: variant, cv_count[, exposure][, user_id | n_users]")
    p.add_argument("--control", required=True, help="name of the control variant")
    p.add_argument("--method", choices=["collapsed", "latent"], default="collapsed")
    p.add_argument("--priors", choices=["default", "article"], default="default")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--ci-level", type=float, default=0.95)
    p.add_argument("--plots-dir", default=None, help="write trace, user_predictive and rate_density PNGs here")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.set_defaults(func=cmd_fit)
    return parser


def run(parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse ``argv`` and run the chosen command; a CliError prints and exits with code 2."""
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"glmm-ab: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # output piped into `head`: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def main(argv=None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
