"""Column names and types of every result table: the contract with the warehouse.

Each fit table is built through :func:`frame`, so a missing, extra or misspelt
column fails here rather than in a warehouse write. The warehouse adds
``run_id``, ``experiment_id`` and ``metric_id`` in front.
"""
from __future__ import annotations

import polars as pl

F, I, S, B = pl.Float64, pl.Int64, pl.String, pl.Boolean

SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "posterior_summary": {
        "parameter": S, "variant": S, "mean": F, "sd": F, "median": F, "ci_low": F, "ci_high": F,
        "mcse_mean": F, "ess_bulk": F, "ess_tail": F, "r_hat": F,
    },
    "lift": {
        "variant": S, "control_variant": S, "n_users": I, "n_users_control": I,
        "observed_mean": F, "observed_mean_control": F, "observed_rate": F, "observed_rate_control": F,
        "expected_count_mean": F, "expected_count_low": F, "expected_count_high": F,
        "expected_count_control_mean": F, "expected_count_control_low": F, "expected_count_control_high": F,
        "relative_lift_mean": F, "relative_lift_median": F, "relative_lift_low": F, "relative_lift_high": F,
        "absolute_lift_mean": F, "absolute_lift_low": F, "absolute_lift_high": F,
        "prob_beat_control": F, "expected_loss_ship": F, "expected_loss_keep": F, "prob_in_rope": F,
        "prob_best": F, "expected_loss_vs_best": F, "prob_best_control": F, "expected_loss_vs_best_control": F,
        "decision": S, "decision_reason": S, "tolerated_drop": F, "prob_drop_beyond_tolerance": F,
    },
    "diagnostics": {
        "method": S, "metric_type": S, "prior_preset": S, "num_chains": I, "num_warmup": I, "num_samples": I,
        "target_accept": F, "seed": I, "n_users": I, "n_cells": I, "covariate": S, "covariate_sd_ratio": F,
        "fit_attempts": I, "divergences": I, "stuck_chains": I, "max_r_hat": F,
        "min_ess_bulk": F, "min_ess_tail": F, "min_bfmi": F, "srm_p_value": F, "planned_split": S, "ppc_p_value": F,
        "ppc_p_value_adjusted": F,
        "converged": B, "failure_reasons": S, "sampling_seconds": F, "total_seconds": F,
    },
    "predictive_check": {
        "variant": S, "count_low": I, "count_high": I, "observed_users": I, "observed_share": F,
        "predicted_share_mean": F, "predicted_share_low": F, "predicted_share_high": F, "ppc_p_value": F,
    },
    "user_estimates": {
        "variant": S, "cv_count": I, "exposure": F, "n_users": I, "pre_cv_count_low": I, "pre_cv_count_high": I,
        "rate_mean": F, "rate_median": F, "rate_low": F, "rate_high": F,
    },
    "posterior_draws": {"parameter": S, "variant": S, "chain": I, "draw": I, "value": F},
    "user_predictive": {
        "sample_user": I, "user_label": S, "variant": S, "observed_count": I,
        "count_low": I, "count_high": I, "probability": F,
    },
    "rate_density": {"variant": S, "is_control": B, "rate_low": F, "rate_high": F, "density": F},
    # the segment breakdowns (glmm_model.segments), one row per dimension x segment x treatment
    "segment_lift": {
        "dimension": S, "segment": S, "variant": S, "control_variant": S, "n_users": I, "n_users_control": I,
        "relative_lift_mean": F, "relative_lift_low": F, "relative_lift_high": F, "prob_beat_control": F,
        "srm_p_value": F, "n_segments": I, "effect_spread_median": F, "effect_spread_low": F,
        "effect_spread_high": F, "max_r_hat": F, "divergences": I, "valid": B,
    },
}
# the tables of one fit (glmm_model.fit); the segment breakdowns come from glmm_model.segments
FIT_TABLES = tuple(name for name in SCHEMAS if name != "segment_lift")


def frame(table: str, rows: list[dict]) -> pl.DataFrame:
    """Build one result table with its declared columns, in order, and types."""
    schema = SCHEMAS[table]
    for row in rows:
        if set(row) != set(schema):
            raise KeyError(f"{table}: row columns {sorted(set(row) ^ set(schema))} differ from the schema")
    return pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)


KEY_DOCS = {
    "run_id": "The nightly run that wrote the row (glmm.runs.run_id).",
    "experiment_id": "Experiment key (raw.experiments).",
    "metric_id": "Metric key (raw.metrics).",
}

COLUMN_DOCS: dict[str, dict[str, str]] = {
    "posterior_summary": {
        "parameter": "'beta0' (control log-rate), 'beta' (treatment effect on the log scale), 's' (sd of the per-user random intercept), and with the pre-period covariate 'gamma' (its coefficient on log1p(pre count)) and 'delta' (the log-rate shift of users with no history).",
        "variant": "Treatment variant for 'beta' rows; NULL for 'beta0' and 's'.",
        "mean": "Posterior mean.",
        "sd": "Posterior standard deviation.",
        "median": "Posterior median.",
        "ci_low": "Lower end of the equal-tailed credible interval (default 95%).",
        "ci_high": "Upper end of the equal-tailed credible interval.",
        "mcse_mean": "Monte Carlo standard error of the mean.",
        "ess_bulk": "Bulk effective sample size, rank-normalised (Vehtari et al. 2021, as ArviZ computes it).",
        "ess_tail": "Tail effective sample size.",
        "r_hat": "Rank-normalised split R-hat (1.00 is ideal; above 1.01 fails).",
    },
    "lift": {
        "variant": "Treatment variant.",
        "control_variant": "Control variant it is compared with.",
        "n_users": "Users in the treatment arm.",
        "n_users_control": "Users in the control arm.",
        "observed_mean": "Observed mean count per user in the treatment arm.",
        "observed_mean_control": "Observed mean count per user in the control arm.",
        "observed_rate": "Observed count per unit of exposure in the treatment arm (its count / its exposure): the unit of expected_count_*; equals observed_mean when no exposure is used.",
        "observed_rate_control": "Observed count per unit of exposure in the control arm; equals observed_mean_control when no exposure is used.",
        "expected_count_mean": "Posterior mean of exp(beta0 + beta + s²/2): expected count per user (per unit exposure; a ratio metric: per denominator event) in the treatment arm. A conversion metric: the probability of converting.",
        "expected_count_low": "Lower end of its credible interval.",
        "expected_count_high": "Upper end of its credible interval.",
        "expected_count_control_mean": "Posterior mean of exp(beta0 + s²/2): expected count per user (per unit exposure) in the control arm; a conversion metric: the probability of converting.",
        "expected_count_control_low": "Lower end of its credible interval.",
        "expected_count_control_high": "Upper end of its credible interval.",
        "relative_lift_mean": "Posterior mean of exp(beta) - 1, the ratio of arm means minus one (a conversion metric: p_treatment / p_control - 1).",
        "relative_lift_median": "Posterior median of the relative lift.",
        "relative_lift_low": "Lower end of the relative lift's credible interval.",
        "relative_lift_high": "Upper end of the relative lift's credible interval.",
        "absolute_lift_mean": "Posterior mean of expected count (treatment) - expected count (control).",
        "absolute_lift_low": "Lower end of its credible interval.",
        "absolute_lift_high": "Upper end of its credible interval.",
        "prob_beat_control": "P(relative lift > 0): chance to beat control.",
        "expected_loss_ship": "E[max(0, -lift)]: relative lift expected to be lost by shipping a worse treatment.",
        "expected_loss_keep": "E[max(0, lift)]: relative lift expected to be forgone by keeping the control.",
        "prob_in_rope": "P(|lift| < ROPE half-width, default 1%): chance the difference is practically zero.",
        "prob_best": "P(this arm has the highest mean of all arms, control included), from the joint draws; with one treatment, P(beat control).",
        "expected_loss_vs_best": "E[best arm's mean - this arm's mean] over the draws, in units of the control's mean: the relative lift given up by choosing this arm.",
        "prob_best_control": "P(the control has the highest mean of all arms).",
        "expected_loss_vs_best_control": "E[best arm's mean - the control's mean], in units of the control's mean: what keeping the control gives up.",
        "decision": "'ship', 'keep_control', 'inconclusive', or 'invalid' (diagnostics or sample ratio failed).",
        "decision_reason": "The rule that produced the decision, or the failed checks.",
        "tolerated_drop": "A guardrail metric's tolerated relative drop (raw.metrics.tolerated_drop, e.g. 0.02 for 2%); NULL for other metrics.",
        "prob_drop_beyond_tolerance": "P(relative lift < -tolerated_drop): the chance the treatment harms this guardrail by more than it tolerates; NULL without a tolerance.",
    },
    "diagnostics": {
        "method": "'collapsed' or 'latent'.",
        "metric_type": "'count' (Poisson GLMM), 'conversion' (Bernoulli, logit link per arm: beta0 and beta are log-odds, no s) or 'ratio' (the count model with the denominator's events as exposure).",
        "prior_preset": "'default' or 'article'.",
        "num_chains": "NUTS chains.",
        "num_warmup": "Warmup iterations per chain.",
        "num_samples": "Draws kept per chain.",
        "target_accept": "NUTS target acceptance probability.",
        "seed": "Random seed of the fit.",
        "n_users": "Users fitted.",
        "n_cells": "Histogram cells (distinct variant x count x exposure, x pre-period bin with the covariate).",
        "covariate": "'pre_period' when the fit adjusted for the metric's count before each user's first exposure (log mu gains gamma * (log1p(pre count) - mean) + delta * no_history), else 'none'.",
        "covariate_sd_ratio": "Posterior sd of beta with the pre-period covariate / without it, on the same users (Laplace approximations of both fits; below 1 means a narrower interval; averaged over treatments). NULL without the covariate.",
        "fit_attempts": "NUTS runs made: 1, or more when divergent transitions triggered a refit with a higher target acceptance (0.95, then 0.99) and a longer warmup (2x, then 4x); num_warmup and target_accept are the kept run's.",
        "divergences": "Divergent transitions after warmup in the kept run (any that persist through the refits fails).",
        "stuck_chains": "Chains whose kept draws never moved, or hold non-finite values (any fails; named in failure_reasons).",
        "max_r_hat": "Largest R-hat over parameters.",
        "min_ess_bulk": "Smallest bulk ESS over parameters.",
        "min_ess_tail": "Smallest tail ESS over parameters.",
        "min_bfmi": "Smallest per-chain Bayesian fraction of missing information (below 0.3 fails).",
        "srm_p_value": "Sample-ratio-mismatch chi-squared p-value against the planned split (below 0.001 fails).",
        "planned_split": "The traffic split the sample-ratio check tested against, as JSON {variant: share} (raw.variants or --split; an equal split when none is declared).",
        "ppc_p_value": "Smallest per-arm posterior predictive p-value of the count histogram (reported, not gating).",
        "ppc_p_value_adjusted": "The smallest per-arm predictive p-value times the number of arms (Bonferroni, at most 1): the multiplicity-aware misfit check (below 0.01 warns in rpt_experiment_health).",
        "converged": "True when every gating check passed.",
        "failure_reasons": "The failed checks, NULL when none.",
        "sampling_seconds": "Seconds spent sampling.",
        "total_seconds": "Seconds for the whole fit.",
    },
    "predictive_check": {
        "variant": "Arm.",
        "count_low": "Lowest count of the bin.",
        "count_high": "Highest count of the bin; NULL for the open last bin.",
        "observed_users": "Users observed in the bin.",
        "observed_share": "Share of the arm's users observed in the bin.",
        "predicted_share_mean": "Posterior predictive mean share of the bin.",
        "predicted_share_low": "Lower end of the replicated share's interval (includes sampling noise for the arm's size).",
        "predicted_share_high": "Upper end of the replicated share's interval.",
        "ppc_p_value": "The arm's posterior predictive p-value (chi-squared discrepancy of the histogram).",
    },
    "user_estimates": {
        "variant": "Arm of the users in the cell.",
        "cv_count": "Observed count of the users in the cell.",
        "exposure": "Exposure of the users in the cell (1 when none is used).",
        "n_users": "Users sharing the cell (join fct_user_cv_counts on variant and cv_count for per-user rows).",
        "pre_cv_count_low": "Lowest pre-period count of the cell's bin (with the covariate); NULL without it or for users with no history.",
        "pre_cv_count_high": "Highest pre-period count of the cell's bin; NULL without the covariate or for users with no history.",
        "rate_mean": "Posterior mean of each such user's rate mu_i (the shrinkage estimate).",
        "rate_median": "Posterior median of the rate.",
        "rate_low": "Lower end of the rate's credible interval.",
        "rate_high": "Upper end of the rate's credible interval.",
    },
    "posterior_draws": {
        "parameter": "'beta0', 'beta' or 's'.",
        "variant": "Treatment variant for 'beta' rows; NULL for 'beta0' and 's'.",
        "chain": "NUTS chain (0-based).",
        "draw": "Draw index within the chain (0-based; evenly thinned to at most 200 per chain).",
        "value": "The parameter's value at that draw: the trace plot.",
    },
    "user_predictive": {
        "sample_user": "0-based number of the sampled user within the fit.",
        "user_label": "The user's id (per-user input) or 'at count quantile q%' of the arm (histogram input).",
        "variant": "The user's arm.",
        "observed_count": "The user's observed count (the picture's red dashed line).",
        "count_low": "Lowest count of the bin.",
        "count_high": "Highest count of the bin.",
        "probability": "Posterior predictive probability that a replicated count falls in the bin.",
    },
    "rate_density": {
        "variant": "Arm.",
        "is_control": "True for the control arm.",
        "rate_low": "Lower edge of the rate bin (conversions per user, per unit exposure).",
        "rate_high": "Upper edge of the rate bin.",
        "density": "Density of a random user's estimated rate mu in the bin (the article's TG/CG plot).",
    },
    "segment_lift": {
        "dimension": "What the segments divide users by (raw.user_segments.dimension: platform, country, ...).",
        "segment": "The segment; '(none)' for the experiment's users without one, '(multiple)' for users whose raw rows disagree.",
        "variant": "Treatment variant.",
        "control_variant": "Control variant.",
        "n_users": "Users of the segment in the treatment arm.",
        "n_users_control": "Users of the segment in the control arm.",
        "relative_lift_mean": "Posterior mean of the segment's relative lift exp(beta + b_segment) - 1, partially pooled toward the overall effect (y ~ arm + (1 + arm | segment) + (1 | user)).",
        "relative_lift_low": "Lower bound of its equal-tailed interval (runs.config ci_level).",
        "relative_lift_high": "Upper bound of its equal-tailed interval.",
        "prob_beat_control": "P(the segment's lift > 0).",
        "srm_p_value": "The segment's own sample-ratio-mismatch p-value against the planned split (chi-squared).",
        "n_segments": "Segments of the dimension in the fit.",
        "effect_spread_median": "Posterior median of the sd of the treatment effect across the dimension's segments (log scale, HalfNormal(0.25) prior): near 0 means every segment responds alike. The same on each of the dimension's rows.",
        "effect_spread_low": "Lower bound of the spread's equal-tailed interval.",
        "effect_spread_high": "Upper bound of the spread's equal-tailed interval.",
        "max_r_hat": "Largest R-hat of the segment model's parameters.",
        "divergences": "Divergent transitions after warmup in the kept run (refitted like the main fit).",
        "valid": "True when R-hat and divergences pass the main fit's rules; false: do not read the segment lifts.",
    },
}


def dbt_source_columns_yaml(indent: int = 6) -> str:
    """The glmm result tables' column docs as dbt source YAML (kept in __sources.yml; a test compares)."""
    import json

    pad = " " * indent
    lines = []
    for table, docs in COLUMN_DOCS.items():
        lines.append(f"{pad}- name: {table}")
        lines.append(f"{pad}  columns:")
        for name, doc in {**KEY_DOCS, **docs}.items():
            lines.append(f"{pad}    - name: {name}")
            lines.append(f"{pad}      description: {json.dumps(doc, ensure_ascii=False)}")
    return "\n".join(lines)
