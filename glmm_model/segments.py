"""Segment breakdowns with partial pooling: one lift per segment x treatment, shrunk toward the overall effect.

Input: the fit's per-user or histogram rows with one more column, ``segment`` (one
dimension: country, platform, new vs returning, ...). The model
(:func:`.model.segment_model`) is y ~ arm + (1 + arm | segment) + (1 | user), collapsed
over (segment, arm, count, exposure) cells (a conversion metric's: the same on the log-odds,
without the per-user intercept, :func:`.model.segment_conversion_model`): a segment's own effect is pulled toward the
overall one as far as the between-segment spread's posterior says, so a segment that
looks extreme by chance is not reported as a finding. Reported per segment x treatment:
the shrunk relative lift (mean and equal-tailed interval), P(beat control), the
segment's users and its own sample-ratio p-value; per treatment, the posterior of the
spread of effects across segments (``effect_spread``, on the log scale): near 0 means
every segment responds alike.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from . import diagnostics, runtime, summaries
from .config import FitConfig
from .data import ExperimentData, InputError, _require_no_nulls, _to_polars, prepare
from .schema import frame

SPREAD_SCHEMA: dict[str, pl.DataType] = {
    "variant": pl.String, "n_segments": pl.Int64, "effect_spread_mean": pl.Float64,
    "effect_spread_median": pl.Float64, "effect_spread_low": pl.Float64, "effect_spread_high": pl.Float64,
    "max_r_hat": pl.Float64, "divergences": pl.Int64, "valid": pl.Boolean,
}
SEGMENT_SITES = ("beta0", "beta", "s", "effect_spread", "segment_level", "segment_beta")
CONVERSION_SEGMENT_SITES = tuple(site for site in SEGMENT_SITES if site != "s")
MAX_SEGMENTS = 50


@dataclass(frozen=True)
class SegmentResult:
    """``segment_lift``: one row per segment x treatment (``glmm.segment_lift``, the spread's summary
    repeated on each); ``segment_spread``: one row per treatment."""

    dimension: str
    segment_lift: pl.DataFrame
    segment_spread: pl.DataFrame
    draws: dict


def segment_cells(data, control: str, column: str = "segment",
                  conversion: bool = False) -> tuple[ExperimentData, np.ndarray, tuple[str, ...]]:
    """Cells keyed by (segment, arm, count, exposure): the data as :func:`.data.prepare` validates them,
    the segment index of each cell, and the segments' names (sorted). ``conversion``: counts 0/1
    (at least one event), no exposure."""
    df = _to_polars(data)
    if column not in df.columns:
        raise InputError(f"a segment breakdown needs column '{column}' (columns: {', '.join(df.columns)})")
    _require_no_nulls(df, column)
    names = tuple(sorted(df.get_column(column).cast(pl.String).unique().to_list()))
    if len(names) < 2:
        raise InputError(f"column '{column}' has one segment ({names[0]!r}): a breakdown needs at least two")
    if len(names) > MAX_SEGMENTS:
        raise InputError(f"column '{column}' has {len(names)} segments; at most {MAX_SEGMENTS} are fitted "
                         "(group the rare ones first)")
    # validate everything once, then group with the segment as a key
    whole = prepare(df.drop(column), control, covariate=False)
    arm_of = {v: i for i, v in enumerate(whole.variants)}
    has_exposure = whole.has_exposure and not conversion
    exposure = df.get_column("exposure").cast(pl.Float64) if has_exposure else pl.lit(1.0)
    count = (pl.col("cv_count") > 0).cast(pl.Int64) if conversion else pl.col("cv_count").cast(pl.Int64)
    users = df.get_column("n_users").cast(pl.Int64) if "n_users" in df.columns else pl.lit(1, pl.Int64)
    cells = (
        df.select(
            pl.col(column).cast(pl.String).replace_strict({n: k for k, n in enumerate(names)}, return_dtype=pl.Int64)
            .alias("segment"),
            pl.col("variant").cast(pl.String).replace_strict(arm_of, return_dtype=pl.Int32).alias("arm"),
            count.alias("cv_count"),
            exposure.alias("exposure"),
            users.alias("n_users"),
        )
        .group_by(["segment", "arm", "cv_count", "exposure"]).agg(pl.col("n_users").sum())
        .filter(pl.col("n_users") > 0)
        .sort(["segment", "arm", "cv_count", "exposure"])
    )
    exp = ExperimentData(
        variants=whole.variants, cell_arm=cells["arm"].to_numpy().astype(np.int32),
        cell_count=cells["cv_count"].to_numpy().astype(np.int64), cell_exposure=cells["exposure"].to_numpy(),
        cell_users=cells["n_users"].to_numpy().astype(np.int64), has_exposure=has_exposure,
    )
    return exp, cells["segment"].to_numpy(), names


def fit_segments(data, control: str, config: FitConfig | None = None, column: str = "segment",
                 dimension: str | None = None) -> SegmentResult:
    """Fit the segment model to one experiment x metric x dimension: :func:`.model.segment_model` for
    count and ratio metrics, :func:`.model.segment_conversion_model` for conversion metrics.

    Divergent transitions are refitted as :func:`.fit.fit` does (higher target acceptance,
    longer warmup); a fit whose R-hat or divergences still fail ``config.decision`` has
    ``valid`` false on every row, so its lifts are flagged, never read as findings.
    """
    from .fit import refit_settings
    from .model_inputs import (SegmentCells, cells as histogram_cells, conversion_cells, per_cell, prior_arrays,
                               segment_effect_variance)
    from .sampling import _progress, run_nuts

    config = config or FitConfig()
    dimension = dimension or column
    runtime.ensure_configured()
    conversion = config.metric_type == "conversion"
    exp, segment, names = segment_cells(data, control, column, conversion=conversion)
    if config.metric_type == "ratio" and not exp.has_exposure:
        raise InputError("a ratio metric needs each user's denominator events in column 'exposure'")
    se2 = segment_effect_variance(exp, segment, len(names))
    prior = prior_arrays(config.priors, exp, config.metric_type)
    n_treatments = exp.num_arms - 1
    dense = config.sampler.dense_mass
    if conversion:
        cells = conversion_cells(exp)
        padded = np.concatenate([segment, np.zeros(cells.arm.shape[0] - exp.n_cells)]).astype(np.int32)
        model, args, kwargs = "segment_conversion_model", (cells, padded, se2, prior), {"cv_count": cells.converted}
        sites, fixed = CONVERSION_SEGMENT_SITES, 1  # beta0
    else:
        histogram = histogram_cells(exp)
        segments = SegmentCells(segment=per_cell(exp, segment, np.int32), effect_variance=se2)
        model, args, kwargs = "segment_model", (histogram, segments, prior), {"cv_count": histogram.cv_count}
        sites, fixed = SEGMENT_SITES, 2  # beta0, s
    # beta and the spread per treatment, a level and an effect deviation per segment (x treatment)
    mass_dim = (fixed + 2 * n_treatments + len(names) * (1 + n_treatments)) if dense else 0
    for sampler in refit_settings(config.sampler):
        draws, stats = run_nuts(model, args, kwargs, sampler, _progress(sampler), dense, sites, mass_dim=mass_dim)
        if int(np.asarray(stats["diverging"]).sum()) <= config.decision.max_divergences:
            break
    return SegmentResult(dimension, *summarise(exp, segment, names, draws, stats, config, dimension), draws=draws)


def _expit(x):
    return 1.0 / (1.0 + np.exp(-x))


def summarise(exp: ExperimentData, segment: np.ndarray, names, draws: dict, stats: dict, config: FitConfig,
              dimension: str):
    """(segment_lift, segment_spread) frames from the segment model's draws."""
    level = config.ci_level
    seg_beta = draws["segment_beta"]  # (chain, draw, K, T)
    spread = draws["effect_spread"]  # (chain, draw, T)
    per_chain = [draws[name] for name in ("beta0", "s") if name in draws]
    per_chain += [draws["segment_level"][:, :, k] for k in range(len(names))]
    per_chain += [seg_beta[:, :, k, j] for k in range(len(names)) for j in range(seg_beta.shape[-1])]
    per_chain += [spread[:, :, j] for j in range(spread.shape[-1])]
    r_hat = max(diagnostics.r_hat(values) for values in per_chain)
    divergences = int(np.asarray(stats["diverging"]).sum())
    valid = r_hat <= config.decision.max_r_hat and divergences <= config.decision.max_divergences
    spread_rows = []
    for j, variant in enumerate(exp.variants[1:]):
        d = spread[:, :, j].ravel()
        low, high = summaries.interval(d, level)
        spread_rows.append({
            "variant": variant, "n_segments": len(names), "effect_spread_mean": float(d.mean()),
            "effect_spread_median": float(np.median(d)), "effect_spread_low": float(low),
            "effect_spread_high": float(high), "max_r_hat": float(r_hat), "divergences": divergences,
            "valid": bool(valid),
        })
    plan = dict(config.planned_split) if config.planned_split else None
    weights = None if plan is None else [plan.get(v, 0.0) for v in exp.variants]
    lift_rows = []
    for k, name in enumerate(names):
        in_segment = segment == k
        users = np.bincount(exp.cell_arm[in_segment], weights=exp.cell_users[in_segment], minlength=exp.num_arms)
        srm = summaries.srm_p_value(users, weights)
        for j, variant in enumerate(exp.variants[1:]):
            if config.metric_type == "conversion":  # p_treatment / p_control - 1 within the segment
                base = (draws["beta0"] + draws["segment_level"][:, :, k]).ravel()
                lift = _expit(base + seg_beta[:, :, k, j].ravel()) / _expit(base) - 1.0
            else:  # the per-user intercept is shared by the arms: exp(effect) is the ratio of mean counts
                lift = np.expm1(seg_beta[:, :, k, j].ravel())
            low, high = summaries.interval(lift, level)
            row = spread_rows[j]
            lift_rows.append({
                "dimension": dimension, "segment": name, "variant": variant, "control_variant": exp.control,
                "n_users": int(users[j + 1]), "n_users_control": int(users[0]),
                "relative_lift_mean": float(lift.mean()), "relative_lift_low": float(low),
                "relative_lift_high": float(high), "prob_beat_control": float(np.mean(lift > 0)),
                "srm_p_value": float(srm),
                **{key: row[key] for key in ("n_segments", "effect_spread_median", "effect_spread_low",
                                             "effect_spread_high", "max_r_hat", "divergences", "valid")},
            })
    return frame("segment_lift", lift_rows), pl.DataFrame(spread_rows, schema=SPREAD_SCHEMA)
