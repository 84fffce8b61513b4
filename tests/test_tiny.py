"""Tiny experiments (10 users per arm) drawn from the model itself: no crash, no stuck chain, and a chain
that does not move is a named failure, never a NaN that slips through."""
import jax.numpy as jnp
import numpy as np
import polars as pl
import pytest

from glmm_model import DecisionRules, FitConfig, SamplerConfig, fit
from glmm_model.model import S_MAX, cell_log_likelihood
from glmm_model.summaries import Diagnostics, stuck_chains

# From the issue: drawn from the model; `glmm-ab fit --seed 101` crashed with "lam value too large" after
# two of four chains jumped to s ~ 8e8 early in warmup and never moved again.
CONTROL = [0, 0, 0, 0, 2, 3, 4, 3, 1, 1]
TREATMENT = [0, 0, 0, 1, 1, 1, 1, 2, 1, 1]


def tiny(control, treatment) -> pl.DataFrame:
    return pl.DataFrame({"variant": ["control"] * len(control) + ["treatment"] * len(treatment),
                         "cv_count": list(control) + list(treatment)})


def test_the_dataset_that_crashed_fits_with_every_chain_moving():
    result = fit(tiny(CONTROL, TREATMENT), "control", FitConfig(sampler=SamplerConfig(seed=101, progress_bar=False)))
    d = result.diagnostics.row(0, named=True)
    assert d["stuck_chains"] == 0 and d["divergences"] == 0, d
    assert np.isfinite(d["min_bfmi"]) and d["min_bfmi"] > 0.3
    s = result.posterior.draws["s"]
    assert (s.max(axis=1) < 5).all() and (np.ptp(s, axis=1) > 0).all()  # each chain explored, none ran away
    assert result.user_predictive.height > 0 and result.rate_density.height > 0


def test_many_tiny_experiments_drawn_from_the_model_fit_without_a_crash_or_a_stuck_chain_and_refit_divergences():
    rng = np.random.default_rng(2026)
    invalid = 0
    for k in range(12):
        base, spread, lift = rng.uniform(0.8, 2.6), rng.uniform(0.6, 1.1), rng.uniform(-0.3, 0.5)
        counts = [rng.poisson(base * np.exp(effect + spread * rng.normal(size=10) - spread**2 / 2)) for effect in (0.0, lift)]
        result = fit(tiny(*counts), "control", FitConfig(sampler=SamplerConfig(seed=k, progress_bar=False)))
        d = result.diagnostics.row(0, named=True)
        assert d["stuck_chains"] == 0, (k, d)
        assert d["fit_attempts"] in (1, 2, 3) and (d["fit_attempts"] == 1) == (d["target_accept"] == 0.9)
        assert result.posterior.draws["s"].max() <= S_MAX
        invalid += result.lift["decision"][0] == "invalid"
    # one try at target acceptance 0.9 left 7 of these 12 'invalid' (1 to 35 divergent transitions each);
    # refits with smaller steps and longer warmups leave 1
    assert invalid <= 1, f"{invalid} of 12 tiny experiments invalid"


def test_a_stuck_chain_is_counted_and_named():
    rng = np.random.default_rng(0)
    draws = {"beta0": rng.normal(size=(4, 50)), "s": rng.uniform(0.1, 1, (4, 50)), "beta": rng.normal(size=(4, 50, 1))}
    assert stuck_chains(draws) == 0
    for name in draws:
        draws[name][2] = draws[name][2, :1]  # chain 2 never moves
    draws["s"][3, 7] = np.nan  # chain 3 holds a non-finite value
    assert stuck_chains(draws) == 2
    d = Diagnostics(divergences=0, max_r_hat=1.0, min_ess_bulk=900, min_ess_tail=900, min_bfmi=0.9, srm_p_value=0.5,
                    stuck_chains=2)
    assert d.failures(DecisionRules()) == ["2 chain(s) did not move (stuck where warmup left them)"]


def test_a_cells_likelihood_is_never_more_than_certain_and_a_numerical_failure_is_impossible():
    log_p = jnp.array([-3.0, 1e-9, jnp.inf, jnp.nan, -jnp.inf, -2.0])
    weight = jnp.array([2.0, 1.0, 1.0, 1.0, 3.0, 0.0])
    out = cell_log_likelihood(log_p, weight)
    assert out.tolist() == [-6.0, 0.0, -float("inf"), -float("inf"), -float("inf"), 0.0]  # padding counts 0


def test_an_accepted_refit_agrees_with_a_long_reference_run():
    """The first of the tiny experiments above diverged at target acceptance 0.9 and 0.95 and was kept at
    0.99 with 4x the warmup; a run 5x as long at 0.99 gives the same posterior within a tenth of its sd."""
    rng = np.random.default_rng(2026)
    base, spread, lift = rng.uniform(0.8, 2.6), rng.uniform(0.6, 1.1), rng.uniform(-0.3, 0.5)
    data = tiny(*[rng.poisson(base * np.exp(effect + spread * rng.normal(size=10) - spread**2 / 2)) for effect in (0.0, lift)])
    kept = fit(data, "control", FitConfig(sampler=SamplerConfig(seed=0, progress_bar=False)))
    assert kept.diagnostics["fit_attempts"][0] == 3 and kept.diagnostics["divergences"][0] == 0
    long = fit(data, "control", FitConfig(sampler=SamplerConfig(seed=99, num_warmup=2000, num_samples=10000, target_accept=0.99,
                                                                 divergence_refits=(), progress_bar=False)))
    for name in ("beta0", "beta", "s"):
        a, b = kept.posterior.flat(name).ravel(), long.posterior.flat(name).ravel()
        assert abs(a.mean() - b.mean()) < 0.1 * b.std(), (name, a.mean(), b.mean(), b.std())
        assert abs(a.std() - b.std()) < 0.1 * b.std(), (name, a.std(), b.std())
