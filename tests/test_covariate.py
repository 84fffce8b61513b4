"""The pre-period covariate: a user's count before the test narrows the effect's posterior, honestly."""
import json

import numpy as np
import polars as pl
import pytest

from glmm_model import FitConfig, InputError, SamplerConfig, fit, prepare
from glmm_model.data import pre_period_bins
from glmm_model.simulate import with_pre_period

from test_cli import SMALL_ARGS, run


def beta(result) -> dict:
    return result.posterior_summary.filter(pl.col("parameter") == "beta").row(0, named=True)


def test_the_covariate_narrows_beta_by_at_least_15_percent_and_keeps_the_marginal_lift(small_config):
    """The issue's population: 2,000 users, effect x1.1, s 0.8, the pre-period's rates moved by a drift of
    sd 0.3 (10% new users). Against the same users without the column, beta's posterior sd is >= 15%
    smaller; both posteriors hold the true effect; the reported Laplace ratio agrees with NUTS's."""
    data, truth = with_pre_period(2000, 3.0, [0.0, np.log(1.1)], 0.8, 0.3, seed=11, no_history_share=0.1,
                                  no_history_shift=-0.5)
    config = small_config.with_(sampler=SamplerConfig(num_chains=2, num_warmup=300, num_samples=500,
                                                      progress_bar=False))
    with_cov, without = fit(data, "v0", config), fit(data, "v0", config.with_(covariate=False))
    b_with, b_without = beta(with_cov), beta(without)
    ratio = b_with["sd"] / b_without["sd"]
    assert ratio <= 0.85, ratio
    for b in (b_with, b_without):
        assert abs(b["mean"] - truth["beta"][0]) < 3 * b["sd"], b
    d = with_cov.diagnostics.row(0, named=True)
    assert d["covariate"] == "pre_period" and without.diagnostics["covariate"][0] == "none"
    assert d["covariate_sd_ratio"] == pytest.approx(ratio, abs=0.06)
    assert without.diagnostics["covariate_sd_ratio"][0] is None
    params = set(with_cov.posterior_summary["parameter"])
    assert {"gamma", "delta"} <= params and not {"gamma", "delta"} & set(without.posterior_summary["parameter"])
    gamma = with_cov.posterior_summary.filter(pl.col("parameter") == "gamma")["mean"][0]
    assert gamma > 0.3  # a user's history predicts their count
    # the expected counts stay marginal (a random user of the arm), not those of an average-history user
    lift = with_cov.lift.row(0, named=True)
    assert lift["expected_count_control_mean"] == pytest.approx(lift["observed_mean_control"], rel=0.1)
    assert lift["expected_count_mean"] / lift["expected_count_control_mean"] - 1 == pytest.approx(
        lift["relative_lift_mean"], abs=0.02)
    # per-cell estimates name their pre-period bin; users with no history have none
    est = with_cov.user_estimates
    assert est["pre_cv_count_low"].null_count() == est.filter(pl.col("pre_cv_count_high").is_null()).height > 0
    assert (est["n_users"].sum()) == 2000


def test_pre_period_counts_are_binned_so_the_cells_stay_bounded():
    assert list(pre_period_bins(np.array([0, 1, 2, 5]), np.ones(4), 8)) == [0, 1, 2, 5]  # few: each its own
    counts = np.arange(0, 500)
    edges = pre_period_bins(counts, np.ones(500), 8)
    assert edges[0] == 0 and edges[1] == 1 and len(edges) <= 8  # 0 alone, positive counts by quantile
    data, _ = with_pre_period(3000, 20.0, [0.0, 0.1], 1.0, 0.3, seed=2)
    assert data["pre_cv_count"].n_unique() > 50
    binned, exact = prepare(data, "v0"), prepare(data, "v0", max_pre_bins=10**6)
    assert len(np.unique(binned.cell_pre)) <= 8 < len(np.unique(exact.cell_pre))
    assert binned.n_users == exact.n_users == 3000
    # a bin's value is its users' mean log1p(pre count), centred: the users' mean is 0
    w = binned.cell_users * (1 - binned.cell_no_history)
    assert abs((w * binned.cell_pre).sum() / w.sum()) < 1e-9
    assert binned.without_covariate().n_cells == prepare(data, "v0", covariate=False).n_cells


def test_bad_pre_period_columns_are_refused_by_name(small_config):
    base = {"variant": ["a", "a", "b", "b"], "cv_count": [1, 0, 2, 1]}
    with pytest.raises(InputError, match=r"'pre_cv_count' must be a non-negative whole count.*row 1 has -1"):
        prepare(pl.DataFrame({**base, "pre_cv_count": [0, -1, 2, 3]}), "a")
    with pytest.raises(InputError, match=r"'pre_cv_count' must be a non-negative whole count.*row 2 has 1.5"):
        prepare(pl.DataFrame({**base, "pre_cv_count": [0.0, 1.0, 1.5, 3.0]}), "a")
    with pytest.raises(InputError, match="'pre_cv_count' must be numeric"):
        prepare(pl.DataFrame({**base, "pre_cv_count": ["x", "1", "2", "3"]}), "a")
    with pytest.raises(InputError, match="NULL \\(no history\\) for every user"):
        prepare(pl.DataFrame({**base, "pre_cv_count": [None, None, None, None]}, schema_overrides={"pre_cv_count": pl.Int64}), "a")
    # NULL and NaN both mean "no history"; --no-covariate ignores even a bad column
    d = prepare(pl.DataFrame({**base, "pre_cv_count": pl.Series([None, float("nan"), 2.0, 3.0], dtype=pl.Float64, strict=False)}), "a")
    assert d.has_covariate and int((d.cell_users * d.cell_no_history).sum()) == 2
    assert not prepare(pl.DataFrame({**base, "pre_cv_count": [0, -1, 2, 3]}), "a", covariate=False).has_covariate
    with pytest.raises(InputError, match="collapsed path only"):
        fit(pl.DataFrame({**base, "pre_cv_count": [0, 1, 2, 3]}), "a", small_config.with_(method="latent"))
    with pytest.raises(ValueError, match="pre_period_bins must be >= 2"):
        FitConfig(pre_period_bins=1)


def test_fit_command_uses_pre_cv_count_unless_told_not_to(tmp_path):
    path = tmp_path / "with_history.csv"
    data, _ = with_pre_period(600, 2.0, [0.0, 0.2], 0.7, 0.3, seed=5, no_history_share=0.2)
    data.write_csv(path)
    out = run("fit", str(path), "--control", "v0", "--json", *SMALL_ARGS)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)["diagnostics"][0]
    assert d["covariate"] == "pre_period" and 0 < d["covariate_sd_ratio"] < 1
    from flows.cli import build_parser

    assert build_parser().parse_args(["fit", str(path), "--control", "v0", "--no-covariate"]).use_covariate is False
    assert build_parser().parse_args(["run", "--no-covariate"]).use_covariate is False


def test_laplace_sd_agrees_with_a_value_only_reference():
    """covariate_sd_ratio's Laplace sd (BFGS on the analytic gradient, Hessian from its differences)
    equals the same approximation built from log posterior values alone: a derivative-free mode
    (Nelder-Mead) and a Hessian of central value differences."""
    from scipy import optimize

    from glmm_model import covariate_gain
    from glmm_model.config import Priors
    from glmm_model.model_inputs import prior_arrays

    data, truth = with_pre_period(600, 3.0, [0.0, np.log(1.1)], 0.8, 0.3, seed=4, no_history_share=0.1,
                                  no_history_shift=-0.5)
    exp = prepare(data, "v0", covariate=True)
    prior = prior_arrays(Priors(), exp, "count")
    start = np.array([0.9, 0.05, np.log(0.7), 0.4, -0.3])  # a rough guess, not the mode
    scale = np.array([0.05, 0.07, 0.08, 0.05, 0.1])
    sd = covariate_gain.laplace_beta_sd(exp, prior, start, scale, True)

    def neg(theta):
        return -covariate_gain._log_posterior(theta, exp, prior, True)[0]

    mode = optimize.minimize(neg, start, method="Nelder-Mead",
                             options={"xatol": 1e-9, "fatol": 1e-11, "maxiter": 20_000, "maxfev": 20_000}).x
    d, step = len(mode), 0.1 * scale
    hessian = np.empty((d, d))
    for i in range(d):
        for j in range(d):
            total = 0.0
            for si, sj, sign in ((1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)):
                x = mode.copy()
                x[i] += si * step[i]
                x[j] += sj * step[j]
                total += sign * neg(x)
            hessian[i, j] = total / (4.0 * step[i] * step[j])
    reference = np.sqrt(np.linalg.inv(hessian)[1, 1])
    assert sd[0] == pytest.approx(reference, rel=2e-3)
    assert 0.01 < sd[0] < 0.2  # a real sd of a 600-user log rate ratio, not a degenerate one
