"""Fitting: the two paths agree, parameters are recovered across scales, edge cases fit, outputs keep their contract."""
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from glmm_model import DecisionRules, FitConfig, Priors, SamplerConfig, fit
from glmm_model.plots import write_plots
from glmm_model.schema import SCHEMAS
from glmm_model.simulate import from_model as simulate



def assert_recovered(result, truth, z=4.0):
    summary = result.posterior_summary
    for name, value in truth.items():
        rows = summary.filter(pl.col("parameter") == name)
        for row, true in zip(rows.iter_rows(named=True), np.atleast_1d(value)):
            assert abs(row["mean"] - true) < z * row["sd"], f"{name}{row['variant'] or ''}: {row['mean']:.4f} ± {row['sd']:.4f}, true {true:.4f}"


@pytest.mark.slow
def test_latent_and_collapsed_agree_on_the_article_data(article_data):
    sampler = SamplerConfig(num_chains=4, num_warmup=500, num_samples=1500, seed=7, progress_bar=False)
    config = FitConfig(priors=Priors.from_preset("article"), sampler=sampler)
    collapsed = fit(article_data, "CG", config).posterior_summary
    latent = fit(article_data, "CG", config.with_(method="latent")).posterior_summary
    for a, b in zip(collapsed.iter_rows(named=True), latent.iter_rows(named=True)):
        assert a["parameter"] == b["parameter"]
        sd = max(a["sd"], b["sd"])
        assert abs(a["mean"] - b["mean"]) < 0.15 * sd, f"{a['parameter']}: {a['mean']:.4f} vs {b['mean']:.4f} (sd {sd:.4f})"


@pytest.mark.slow
@pytest.mark.parametrize("mean, n_users", [(0.02, 60_000), (1.0, 4_000), (300.0, 2_000)])
def test_parameter_recovery_across_count_scales_with_three_arms(mean, n_users, small_config):
    data, truth = simulate(n_users, mean, [0.0, 0.15, -0.1], 0.6, seed=int(mean * 100) + 1)
    result = fit(data, "v0", small_config)
    assert_recovered(result, truth)
    # the default prior centres itself on the data: the baseline is not pulled toward 1 conversion per user
    control = result.lift.row(0, named=True)
    assert control["expected_count_control_low"] < mean < control["expected_count_control_high"] * 1.5


@pytest.mark.slow
def test_parameter_recovery_with_exposure_offsets(small_config):
    data, truth = simulate(5_000, 2.0, [0.0, 0.2], 0.4, seed=11, exposure=True)
    result = fit(data, "v0", small_config)
    assert_recovered(result, truth)
    # ignoring exposure would inflate s: users differ by exposure, not just by taste
    assert result.posterior_summary.filter(pl.col("parameter") == "s")["mean"][0] < 0.55
    # one unit beside the expected rates: counts per unit of exposure, not per user
    lift = result.lift.row(0, named=True)
    arm = data.filter(pl.col("variant") == lift["variant"])
    assert lift["observed_rate"] == pytest.approx(arm["cv_count"].sum() / arm["exposure"].sum())
    assert lift["observed_mean"] == pytest.approx(arm["cv_count"].mean())
    assert lift["observed_rate"] != pytest.approx(lift["observed_mean"], rel=0.05)  # exposures are not all 1
    assert lift["expected_count_low"] < lift["observed_rate"] < lift["expected_count_high"]


def test_outputs_follow_the_schema_and_are_consistent(article_data, small_config, tmp_path):
    result = fit(article_data, "CG", small_config)
    assert set(result.tables()) == set(SCHEMAS) - {"segment_lift"}
    for name, table in result.tables().items():
        assert dict(table.schema) == SCHEMAS[name], name
    assert result.posterior_summary["parameter"].to_list() == ["beta0", "beta", "s"]
    assert result.posterior_summary["variant"].to_list() == [None, "TG", None]
    lift = result.lift.row(0, named=True)
    assert lift["variant"] == "TG" and lift["control_variant"] == "CG"
    assert lift["n_users"] + lift["n_users_control"] == 200
    assert lift["relative_lift_low"] < lift["relative_lift_median"] < lift["relative_lift_high"]
    assert lift["decision"] == "ship"  # a 150% lift on 200 users is not subtle
    diag = result.diagnostics.row(0, named=True)
    assert diag["converged"] and diag["divergences"] == 0 and diag["n_users"] == 200
    # predictive check: shares per arm sum to one, observed counts add up to the arm's users
    for _, rows in result.predictive_check.group_by("variant"):
        assert rows["observed_share"].sum() == pytest.approx(1.0)
        assert rows["predicted_share_mean"].sum() == pytest.approx(1.0, abs=1e-6)
    assert result.predictive_check["observed_users"].sum() == 200
    assert 0.01 < diag["ppc_p_value"] <= 1.0  # the model fits data from its own family
    # per-user estimates: one row per cell, shrunk toward the arm mean, covering every user
    est = result.user_estimates
    assert est["n_users"].sum() == 200
    assert (est["rate_low"] <= est["rate_mean"]).all() and (est["rate_mean"] <= est["rate_high"]).all()
    by_user = result.user_estimates_by_user()
    assert by_user.height == 200 and by_user["user_id"][0] == "u000"
    assert by_user["cv_count"].to_list() == article_data["cv_count"].to_list()
    # the three pictures are drawn from the result tables alone (as the flow does, after its fits came back)
    plots = write_plots(result.tables(), tmp_path)
    assert sorted(plots) == ["rate_density", "trace", "user_predictive"]
    for path in plots.values():
        assert Path(path).parent == tmp_path and Path(path).stat().st_size > 10_000


def test_all_zero_arm_and_single_user_arm_still_fit(small_config):
    data = pl.DataFrame(
        {"variant": ["A"] * 50 + ["B"] * 50 + ["C"], "cv_count": list(np.arange(50) % 4) + [0] * 50 + [3]}
    )
    result = fit(data, "A", small_config.with_(decision=DecisionRules(min_ess_per_chain=25, srm_p_value=0.0)))
    lift = {r["variant"]: r for r in result.lift.iter_rows(named=True)}
    assert lift["B"]["relative_lift_high"] < 0  # no conversions at all: clearly worse
    assert lift["B"]["prob_beat_control"] < 0.05
    assert lift["C"]["relative_lift_high"] - lift["C"]["relative_lift_low"] > 1.0  # one user: wide posterior
    assert result.lift["relative_lift_mean"].is_finite().all()


def test_sample_ratio_mismatch_makes_the_decision_invalid(small_config):
    data, _ = simulate(3000, 2.0, [0.0, 0.5], 0.3, seed=5)
    skewed = pl.concat([data.filter(pl.col("variant") == "v0"), data.filter(pl.col("variant") == "v1").head(900)])
    result = fit(skewed, "v0", small_config)
    row = result.lift.row(0, named=True)
    assert row["prob_beat_control"] > 0.99
    assert row["decision"] == "invalid" and "sample ratio mismatch" in row["decision_reason"]


def test_same_seed_same_answer(article_data, small_config):
    a = fit(article_data, "CG", small_config).posterior_summary
    b = fit(article_data, "CG", small_config).posterior_summary
    assert a.equals(b)


def test_odd_chain_count_runs_uneven_groups_and_each_chain_is_its_own(article_data, small_config):
    """3 chains run as groups of 2 and 1 (two programs, two threads); every chain starts from its own key."""
    from dataclasses import replace

    config = small_config.with_(sampler=replace(small_config.sampler, num_chains=3))
    result = fit(article_data, "CG", config)
    draws = result.posterior.draws["beta0"]
    assert draws.shape == (3, config.sampler.num_samples)
    assert len({round(float(chain.mean()), 12) for chain in draws}) == 3
    assert result.diagnostics["max_r_hat"][0] < 1.05
    again = fit(article_data, "CG", config).posterior.draws["beta0"]
    assert (again == draws).all()  # threads do not make the result depend on timing


def test_picture_tables_hold_what_the_three_pictures_draw(article_data, small_config):
    result = fit(article_data, "CG", small_config)
    # trace: every chain of every parameter, thinned, and the same values as the posterior
    draws = result.posterior_draws
    assert draws.group_by("parameter", "variant", "chain").len()["len"].to_list() == [200] * 6
    beta0 = result.idata.posterior["beta0"].values
    first = draws.filter((pl.col("parameter") == "beta0") & (pl.col("chain") == 1)).row(0, named=True)
    assert first["value"] == beta0[1, first["draw"]]
    # per-user predictive: the first 10 users (per-user input), each a distribution around its count
    pred = result.user_predictive
    assert pred["user_label"].unique(maintain_order=True).to_list() == [f"u{i:03d}" for i in range(10)]
    for _, user in pred.group_by("sample_user"):
        assert user["probability"].sum() == pytest.approx(1.0)
        assert (user["count_low"] <= user["count_high"]).all()
        observed = user["observed_count"][0]
        assert user["count_low"].min() <= observed <= user["count_high"].max()
    # rate density: both arms on shared bins, integrating to ~1, TG to the right of CG as in the article
    dens = result.rate_density.with_columns(mass=pl.col("density") * (pl.col("rate_high") - pl.col("rate_low")))
    mass = dict(dens.group_by("variant").agg(pl.col("mass").sum()).iter_rows())
    assert mass["CG"] == pytest.approx(1.0, abs=0.01) and mass["TG"] == pytest.approx(1.0, abs=0.01)
    mean = dict(dens.with_columns(m=pl.col("mass") * (pl.col("rate_low") + pl.col("rate_high")) / 2)
                .group_by("variant").agg(pl.col("m").sum()).iter_rows())
    lift = result.lift.row(0, named=True)
    assert mean["TG"] / mean["CG"] - 1 == pytest.approx(lift["relative_lift_mean"], abs=0.25)
    assert dens.filter(pl.col("is_control"))["variant"].unique().to_list() == ["CG"]


def test_picture_tables_from_histogram_input_sample_users_at_count_quantiles(small_config):
    data = pl.DataFrame({"variant": ["A", "A", "A", "B", "B"], "cv_count": [0, 2, 9, 1, 5], "n_users": [50, 30, 20, 60, 40]})
    pred = fit(data, "A", small_config).user_predictive
    users = pred.unique("sample_user", maintain_order=True)
    assert users["variant"].to_list() == ["A"] * 5 + ["B"] * 5
    assert users["observed_count"].to_list() == [0, 0, 0, 2, 9, 1, 1, 1, 5, 5]
    assert users["user_label"][0] == "at count quantile 10%"
