"""Conversion and ratio metrics, and a guardrail's tolerance, through the engine and ``glmm-ab fit``."""
import json

import numpy as np
import polars as pl
import pytest

from glmm_model import FitConfig, InputError, fit

from test_cli import SMALL_ARGS, run


def conversion_frame(n: int, p_control: float, p_treatment: float, seed: int = 3) -> pl.DataFrame:
    """Per-user rows; a converted user's count is 1-3 (a conversion metric counts 'at least one')."""
    rng = np.random.default_rng(seed)
    arm = np.repeat([0, 1], n)
    converted = rng.random(2 * n) < np.where(arm == 1, p_treatment, p_control)
    return pl.DataFrame({"user_id": [f"u{i}" for i in range(2 * n)], "variant": np.where(arm == 1, "B", "A"),
                         "cv_count": converted * rng.integers(1, 4, 2 * n), "exposure": rng.uniform(1, 30, 2 * n)})


def test_a_conversion_metric_agrees_with_the_beta_binomial_posterior(small_config):
    """With 4,000 users per arm the prior hardly matters: the lift p_B / p_A - 1 and its interval match
    the Beta(1/2 + k, 1/2 + n - k) posteriors' ratio; counts above 1 and exposure change nothing."""
    data = conversion_frame(4000, 0.10, 0.12)
    result = fit(data, "A", small_config.with_(metric_type="conversion"))
    lift = result.lift.row(0, named=True)

    converted = data.with_columns(pl.col("cv_count") > 0).group_by("variant").agg(
        pl.col("cv_count").sum().alias("k"), pl.len().alias("n")).sort("variant")
    (k_a, k_b), (n_a, n_b) = converted["k"].to_list(), converted["n"].to_list()
    rng = np.random.default_rng(0)
    p_a, p_b = rng.beta(0.5 + k_a, 0.5 + n_a - k_a, 200_000), rng.beta(0.5 + k_b, 0.5 + n_b - k_b, 200_000)
    reference = p_b / p_a - 1
    assert lift["relative_lift_mean"] == pytest.approx(reference.mean(), abs=0.01)
    assert lift["relative_lift_low"] == pytest.approx(np.quantile(reference, 0.025), abs=0.015)
    assert lift["relative_lift_high"] == pytest.approx(np.quantile(reference, 0.975), abs=0.015)
    assert lift["expected_count_control_mean"] == pytest.approx(k_a / n_a, abs=0.005)  # P(convert), control
    assert lift["observed_mean"] == pytest.approx(k_b / n_b)
    assert lift["tolerated_drop"] is None and lift["prob_drop_beyond_tolerance"] is None  # not a guardrail

    assert result.diagnostics["metric_type"].to_list() == ["conversion"] and result.diagnostics["n_cells"][0] == 4
    assert result.posterior_summary["parameter"].to_list() == ["beta0", "beta"]  # no per-user spread s
    assert set(result.posterior_draws["parameter"]) == {"beta0", "beta"}
    users = result.user_estimates_by_user()
    assert set(users["cv_count"]) == {0, 1}  # the count read as converted or not
    assert result.user_predictive["count_high"].max() == 1  # replicated users convert or not
    check = result.predictive_check.filter(pl.col("variant") == "A")
    assert check["observed_users"].to_list() == [n_a - k_a, k_a]


def test_a_ratio_metric_is_the_count_model_with_the_denominator_as_exposure(small_config):
    """Purchases per cart: numerator ~ Poisson(rate_g x carts_i x e^(r_i)). The rate per denominator event
    and its ratio between arms are recovered; without a denominator there is no ratio to fit."""
    rng = np.random.default_rng(11)
    n = 1500
    arm = np.repeat([0, 1], n)
    carts = 1 + rng.poisson(3.0, 2 * n)
    rate = np.where(arm == 1, 0.5 * 1.3, 0.5)
    purchases = rng.poisson(rate * carts * np.exp(rng.normal(0.0, 0.3, 2 * n)))
    data = pl.DataFrame({"variant": np.where(arm == 1, "B", "A"), "cv_count": purchases, "exposure": carts})
    result = fit(data, "A", small_config.with_(metric_type="ratio"))
    lift = result.lift.row(0, named=True)
    assert lift["relative_lift_low"] < 0.3 < lift["relative_lift_high"]
    assert lift["relative_lift_mean"] == pytest.approx(0.3, abs=0.1)
    assert lift["observed_rate_control"] == pytest.approx(purchases[arm == 0].sum() / carts[arm == 0].sum())
    assert lift["expected_count_control_mean"] == pytest.approx(0.5, rel=0.1)  # per denominator event
    assert result.diagnostics["metric_type"][0] == "ratio"

    with pytest.raises(InputError, match="ratio metric needs each user's denominator events in column 'exposure'"):
        fit(data.drop("exposure"), "A", small_config.with_(metric_type="ratio"))


def test_a_guardrail_reports_the_chance_of_dropping_beyond_its_tolerance(small_config, article_data):
    result = fit(article_data, "CG", small_config.with_(tolerated_drop=0.05))
    lift = result.lift.row(0, named=True)
    drop = np.expm1(result.posterior.flat("beta")[:, 0])
    assert lift["tolerated_drop"] == 0.05
    assert lift["prob_drop_beyond_tolerance"] == pytest.approx(np.mean(drop < -0.05))

    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="tolerated_drop is a relative drop in"):
            FitConfig(tolerated_drop=bad)
    with pytest.raises(ValueError, match="metric_type must be one of count, conversion, ratio"):
        FitConfig(metric_type="revenue")


def test_fit_command_takes_the_metric_type_and_the_tolerated_drop(tmp_path):
    path = tmp_path / "conversions.csv"
    conversion_frame(300, 0.2, 0.3).write_csv(path)
    out = run("fit", str(path), "--control", "A", "--metric-type", "conversion", "--tolerated-drop", "0.02",
              "--json", *SMALL_ARGS)
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    assert payload["diagnostics"][0]["metric_type"] == "conversion"
    assert 0 <= payload["lift"][0]["prob_drop_beyond_tolerance"] <= 1 and payload["lift"][0]["tolerated_drop"] == 0.02
    out = run("fit", str(path), "--control", "A", "--metric-type", "revenue")
    assert out.returncode == 2 and "invalid choice: 'revenue'" in out.stderr
