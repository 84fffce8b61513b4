"""``fit``: per-user counts in, a typed result of warehouse-ready tables out.

Steps: validate and reduce to histogram cells (:mod:`.data`) -> NUTS on the
collapsed or latent model (:mod:`.sampling`) -> posterior summary, diagnostics,
lift and decision (:mod:`.summaries`) -> predictive check and per-cell rate
estimates (:mod:`.predictive`) -> the tables behind the three pictures
(:mod:`.pictures`). Drawing them is the caller's business (:func:`.plots.write_plots`
reads the result tables), so a picture that cannot be drawn never loses a fit.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from . import covariate_gain, pictures, predictive, runtime, summaries
from .config import FitConfig, SamplerConfig
from .data import ExperimentData, InputError, prepare
from .model_inputs import prior_arrays
from .sampling import FitTimeout, Posterior, sample
from .schema import FIT_TABLES, frame


@dataclass(frozen=True)
class FitResult:
    """Everything one fit produced. Table attributes are polars DataFrames with the
    column names and types of :mod:`glmm_model.schema` (they become warehouse columns)."""

    posterior_summary: pl.DataFrame
    lift: pl.DataFrame
    diagnostics: pl.DataFrame
    predictive_check: pl.DataFrame
    user_estimates: pl.DataFrame
    posterior_draws: pl.DataFrame
    user_predictive: pl.DataFrame
    rate_density: pl.DataFrame
    posterior: Posterior
    data: ExperimentData
    rates: predictive.RateSamples
    config: FitConfig

    @property
    def idata(self):
        """The posterior as ArviZ ``InferenceData`` (for ArviZ's plots and functions; built on first use)."""
        return self.posterior.inference_data

    def tables(self) -> dict[str, pl.DataFrame]:
        """The result tables by name, as the warehouse stores them."""
        return {name: getattr(self, name) for name in FIT_TABLES}

    def user_estimates_by_user(self) -> pl.DataFrame:
        """One row per input user (input order): their cell's rate estimate, with ``user_id`` when given."""
        if self.data.user_cell is None:
            raise ValueError("per-user rows need per-user input; this fit read histogram rows")
        out = self.user_estimates[self.data.user_cell.tolist()]
        if self.data.user_ids is not None:
            out = out.with_columns(pl.Series("user_id", self.data.user_ids)).select("user_id", pl.exclude("user_id"))
        return out.drop("n_users")


def refit_settings(sampler: SamplerConfig) -> list[SamplerConfig]:
    """The sampler settings to try in turn: as given, then each of ``sampler.divergence_refits``
    ((target acceptance, warmup multiplier) pairs) that asks for smaller steps than the last."""
    out = [sampler]
    for target_accept, warmup_factor in sampler.divergence_refits:
        if target_accept > out[-1].target_accept:
            out.append(replace(sampler, target_accept=target_accept, num_warmup=sampler.num_warmup * warmup_factor))
    return out


def fit(data, control: str, config: FitConfig | None = None) -> FitResult:
    """Fit the GLMM to one experiment x metric.

    ``data``: polars DataFrame or Arrow table with ``variant``, ``cv_count``, and
    optionally ``exposure``, ``user_id`` (one row per user) or ``n_users`` (rows
    already counted per cell). ``control``: the control variant's name.
    ``config.metric_type``: 'count' (the Poisson GLMM), 'conversion' (a user with
    ``cv_count > 0`` converted; exposure is not used) or 'ratio' (``cv_count`` numerator
    events, ``exposure`` the user's denominator events, required and > 0).
    Raises :class:`glmm_model.InputError` on bad input, before any sampling;
    :class:`glmm_model.FitTimeout` when it is still sampling ``config.sampler.time_limit_s``
    after sampling started; :class:`glmm_model.FitCancelled` when :func:`glmm_model.cancel_running`
    stops it.
    """
    config = config or FitConfig()
    runtime.ensure_configured()
    started = time.perf_counter()
    exp = prepare(data, control, covariate=config.covariate, max_pre_bins=config.pre_period_bins)
    if exp.has_covariate and config.method == "latent":
        raise InputError("the pre-period covariate ('pre_cv_count') is fitted on the collapsed path only: use "
                         "method 'collapsed', or fit without the covariate (--no-covariate)")
    conversion = config.metric_type == "conversion"
    if conversion:
        exp = exp.as_conversion()
    elif config.metric_type == "ratio" and not exp.has_exposure:
        raise InputError("a ratio metric needs each user's denominator events in column 'exposure' "
                         "(numerator events in 'cv_count'); the input has no 'exposure' column")
    users = exp.users_per_arm()
    srm, split_used = summaries.split_check(exp.variants, users, config.planned_split)

    level = config.ci_level
    # Divergent transitions: refit as a careful analyst would, with a higher target acceptance
    # (smaller steps) and a longer warmup, before any decision; only divergences that persist
    # through the last attempt make the decision 'invalid'.
    attempts = refit_settings(config.sampler)
    for attempt, sampler in enumerate(attempts, 1):
        try:
            posterior = sample(exp, config.with_(sampler=sampler))
        except FitTimeout:
            raise FitTimeout(f"sampling did not finish within its time limit of {sampler.time_limit_s:g} s "
                             f"({exp.num_arms} variants, {exp.n_cells} histogram cells, {sampler.num_chains} chains x "
                             f"{sampler.num_warmup + sampler.num_samples} iterations); it was stopped") from None
        summary_rows = summaries.posterior_summary(posterior.draws, posterior.variants, level)
        diag = summaries.sampler_diagnostics(posterior.stats, summary_rows, srm, posterior.draws)
        if diag.divergences <= config.decision.max_divergences:
            break
    beta0, beta = posterior.flat("beta0"), posterior.flat("beta")
    s = None if conversion else posterior.flat("s")
    failures = diag.failures(config.decision)
    observed_mean = exp.counts_per_arm() / users
    # the pre-period covariate: exp(beta) stays the ratio of marginal means, and the expected counts
    # average exp(gamma * pre + delta * no_history) over every user (beta0_marginal)
    covariate = (posterior.flat("gamma"), posterior.flat("delta")) if exp.has_covariate else None
    beta0_marginal = beta0 if covariate is None else beta0 + predictive.covariate_shift(exp, covariate)
    sd_ratio = None
    if covariate is not None:
        sd_ratio = covariate_gain.covariate_sd_ratio(exp, prior_arrays(config.priors, exp, config.metric_type),
                                                     posterior.draws)
    lift = summaries.lift_rows(
        beta0_marginal, beta, s, exp.variants, users, observed_mean, level, config.decision, failures,
        observed_rate=exp.counts_per_arm() / exp.exposure_per_arm(), metric_type=config.metric_type,
        tolerated_drop=config.tolerated_drop,
    )

    rng = np.random.default_rng(config.sampler.seed)
    ppc_rows, ppc_p = predictive.predictive_check(exp, beta0, beta, s, config.ppc_draws, level, rng, config.metric_type,
                                                  covariate)
    if conversion:
        rates = predictive.conversion_rates(exp, beta0, beta, rng)
    elif config.method == "collapsed":
        rates = predictive.collapsed_rates(exp, beta0, beta, s, rng, covariate)
    else:
        rates = predictive.latent_rates(exp, beta0, beta, s, posterior.r, rng)
    user_rows = predictive.user_estimate_rows(exp, rates, level)
    picture_rng = np.random.default_rng(config.sampler.seed + 1)

    sc = sampler  # the settings of the run kept
    diagnostics_row = {
        "method": config.method,
        "metric_type": config.metric_type,
        "prior_preset": config.priors.preset,
        "num_chains": sc.num_chains,
        "num_warmup": sc.num_warmup,
        "num_samples": sc.num_samples,
        "target_accept": sc.target_accept,
        "seed": sc.seed,
        "n_users": exp.n_users,
        "n_cells": exp.n_cells,
        "covariate": "pre_period" if exp.has_covariate else "none",
        "covariate_sd_ratio": sd_ratio,
        "fit_attempts": attempt,
        "divergences": diag.divergences,
        "stuck_chains": diag.stuck_chains,
        "max_r_hat": diag.max_r_hat,
        "min_ess_bulk": diag.min_ess_bulk,
        "min_ess_tail": diag.min_ess_tail,
        "min_bfmi": diag.min_bfmi,
        "srm_p_value": srm,
        "planned_split": json.dumps(split_used),
        "ppc_p_value": float(min(ppc_p)),
        "ppc_p_value_adjusted": float(min(1.0, min(ppc_p) * len(ppc_p))),
        "converged": not failures,
        "failure_reasons": "; ".join(failures) if failures else None,
        "sampling_seconds": posterior.seconds,
        "total_seconds": time.perf_counter() - started,
    }
    return FitResult(
        posterior_summary=frame("posterior_summary", summary_rows),
        lift=frame("lift", lift),
        diagnostics=frame("diagnostics", [diagnostics_row]),
        predictive_check=frame("predictive_check", ppc_rows),
        user_estimates=frame("user_estimates", user_rows),
        posterior_draws=frame("posterior_draws", pictures.trace_rows(posterior.draws, exp.variants)),
        user_predictive=frame("user_predictive", pictures.user_predictive_rows(exp, rates, picture_rng,
                                                                                  metric_type=config.metric_type)),
        rate_density=frame("rate_density", pictures.rate_density_rows(exp, rates, picture_rng)),
        posterior=posterior,
        data=exp,
        rates=rates,
        config=config,
    )
