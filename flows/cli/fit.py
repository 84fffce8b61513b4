"""``glmm-ab fit``: one experiment from a file, through the engine alone (no Prefect, no dbt).

    glmm-ab fit INPUT --control NAME [--metric-type count|conversion|ratio] [--tolerated-drop F]
                [--no-covariate] [--method collapsed|latent] [--priors default|article]
                [--seed N] [--chains N --warmup N --samples N] [--plots-dir DIR] [--json]

INPUT is CSV or Parquet with ``variant``, ``cv_count`` and optionally ``exposure``,
``user_id`` (one row per user) or ``n_users`` (rows already counted); a ratio metric
has its denominator events in ``exposure``. A ``pre_cv_count`` column (the same metric's
count in a pre-period before each user's first exposure; empty for a user with no
history) is used as a covariate unless ``--no-covariate``. A ``segment`` column (one
dimension: platform, country, ...) adds a breakdown with partial pooling: each segment's
shrunk lift, interval, P(beat control) and own SRM p-value, and the spread of the effect
across segments (``--json``: ``segment_lift`` and ``segment_spread`` lists). Bad input
exits with code 2 and writes nothing. ``--plots-dir`` draws the three pictures
from the fit's result tables.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from . import CliError

LIFT_COLUMNS = [
    "variant", "n_users", "observed_mean", "expected_count_mean",
    "relative_lift_median", "relative_lift_low", "relative_lift_high",
    "prob_beat_control", "prob_best", "expected_loss_ship", "prob_in_rope", "decision",
]
GUARDRAIL_COLUMNS = ["tolerated_drop", "prob_drop_beyond_tolerance"]
SEGMENT_COLUMNS = ["segment", "variant", "n_users", "relative_lift_mean", "relative_lift_low", "relative_lift_high",
                   "prob_beat_control", "srm_p_value"]


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


def print_result(result, plots: dict[str, str], out=sys.stdout) -> None:
    import polars as pl

    with pl.Config(tbl_rows=50, tbl_cols=20, tbl_width_chars=160, float_precision=4,
                   tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
        print("Lift against control", result.data.control, file=out)
        guardrail = GUARDRAIL_COLUMNS if result.config.tolerated_drop is not None else []
        print(result.lift.select(LIFT_COLUMNS + guardrail), file=out)
        print("\nPosterior summary (equal-tailed {:.0%} intervals)".format(result.config.ci_level), file=out)
        print(result.posterior_summary, file=out)
    d = result.diagnostics.row(0, named=True)
    print(
        f"\nDiagnostics: {d['metric_type']} metric, {d['method']}, {d['num_chains']} chains x ({d['num_warmup']} warmup + {d['num_samples']} draws); "
        f"divergences {d['divergences']}, max R-hat {d['max_r_hat']:.3f}, min ESS bulk/tail "
        f"{d['min_ess_bulk']:.0f}/{d['min_ess_tail']:.0f}, BFMI {d['min_bfmi']:.2f}, "
        f"SRM p {d['srm_p_value']:.3g} against the split {_split_text(d['planned_split'])}, "
        f"PPC p {d['ppc_p_value']:.3g}; {d['total_seconds']:.1f} s",
        file=out,
    )
    if d["covariate"] == "pre_period":
        ratio = _clean(d["covariate_sd_ratio"])
        print("Pre-period covariate: " + ("sd ratio not computed" if ratio is None else
              f"beta's posterior sd x {ratio:.3f} against the same users without it"), file=out)
    for row in result.lift.iter_rows(named=True):
        print(f"{row['variant']}: {row['decision']} ({row['decision_reason']})", file=out)
    for name, path in plots.items():
        print(f"plot {name}: {path}", file=out)


def print_segments(segments, out=sys.stdout) -> None:
    import polars as pl

    with pl.Config(tbl_rows=200, tbl_cols=20, tbl_width_chars=160, float_precision=4,
                   tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
        print(f"\nSegments ('{segments.dimension}', partially pooled toward the overall effect)", file=out)
        print(segments.segment_lift.select(SEGMENT_COLUMNS), file=out)
    for row in segments.segment_spread.iter_rows(named=True):
        flag = "" if row["valid"] else (f"  INVALID: max R-hat {row['max_r_hat']:.3f}, {row['divergences']} "
                                        "divergences; do not read these segment lifts")
        print(f"{row['variant']}: spread of the effect across segments (sd, log scale) median "
              f"{row['effect_spread_median']:.3f}, interval {row['effect_spread_low']:.3f} to "
              f"{row['effect_spread_high']:.3f}{flag}", file=out)


def _split_text(planned_split_json: str) -> str:
    return "/".join(f"{variant} {share:.0%}" for variant, share in json.loads(planned_split_json).items())


def parse_split(text: str | None) -> dict[str, str] | None:
    """``control=0.9,treatment=0.1`` as {variant: weight}; the engine checks the weights."""
    if text is None:
        return None
    split = {}
    for part in text.split(","):
        variant, sep, weight = part.rpartition("=")
        if not sep or not variant.strip():
            raise CliError(f"--split must read VARIANT=WEIGHT,VARIANT=WEIGHT (e.g. control=0.9,treatment=0.1); "
                           f"got {part!r} in {text!r}")
        if variant.strip() in split:
            raise CliError(f"--split names {variant.strip()!r} twice: {text!r}")
        split[variant.strip()] = weight.strip()
    return split


def cmd_fit(args) -> int:
    from glmm_model import FitConfig, InputError, Priors, SamplerConfig, configure, fit

    data = read_table(args.input)
    if not 0 <= args.refits <= 2:
        raise CliError(f"refits must be 0, 1 or 2, got {args.refits}")
    try:
        config = FitConfig(
            method=args.method,
            priors=Priors.from_preset(args.priors),
            sampler=SamplerConfig(
                num_chains=args.num_chains, num_warmup=args.num_warmup, num_samples=args.num_samples,
                seed=args.seed, progress_bar=False if args.json else None,
                divergence_refits=SamplerConfig.divergence_refits[:args.refits],
            ),
            ci_level=args.ci_level,
            planned_split=parse_split(args.split),
            metric_type=args.metric_type,
            tolerated_drop=args.tolerated_drop,
            covariate=args.use_covariate,
        )
    except ValueError as exc:  # settings out of range (chains, draws, seed, interval level, split)
        raise CliError(str(exc)) from exc
    configure()
    try:
        result = fit(data, args.control, config)
        segments = None
        if "segment" in data.columns:
            from glmm_model.segments import fit_segments

            segments = fit_segments(data, args.control, config)
    except InputError as exc:
        raise CliError(str(exc)) from exc
    plots = {}
    if args.plots_dir:
        from glmm_model.plots import write_plots

        plots = write_plots(result.tables(), args.plots_dir)
    if args.json:
        payload = {name: _json_rows(getattr(result, name)) for name in ("posterior_summary", "lift", "diagnostics")}
        if segments is not None:
            payload["segment_lift"] = _json_rows(segments.segment_lift)
            payload["segment_spread"] = _json_rows(segments.segment_spread)
        json.dump(payload, sys.stdout, indent=2, allow_nan=False)
        print()
    else:
        print_result(result, plots)
        if segments is not None:
            print_segments(segments)
    return 0
