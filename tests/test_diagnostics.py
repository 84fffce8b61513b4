"""glmm_model.diagnostics gives ArviZ's numbers (ArviZ is the reference; we skip its 1.2 s import on the fit path)."""
import warnings

import numpy as np
import pytest

from glmm_model import diagnostics

warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")
az = pytest.importorskip("arviz")


def _ar1(rng, chains: int, draws: int, phi: float) -> np.ndarray:
    out = np.empty((chains, draws))
    out[:, 0] = rng.standard_normal(chains)
    for t in range(1, draws):
        out[:, t] = phi * out[:, t - 1] + np.sqrt(1 - phi**2) * rng.standard_normal(chains)
    return out


def _cases():
    rng = np.random.default_rng(7)
    stuck = _ar1(rng, 4, 400, 0.5)
    stuck[2] += 3.0  # one chain elsewhere: R-hat far above 1
    return {
        "healthy": _ar1(rng, 4, 1000, 0.3),
        "sticky": _ar1(rng, 4, 500, 0.95),
        "anticorrelated": _ar1(rng, 2, 600, -0.6),
        "stuck_chain": stuck,
        "ties": np.round(_ar1(rng, 3, 300, 0.4), 1),  # discrete values: average ranks matter
        "odd_draws": _ar1(rng, 4, 101, 0.2),
        "one_chain": _ar1(rng, 1, 400, 0.3),
        "constant": np.full((4, 50), 2.5),
        "three_draws": _ar1(rng, 4, 3, 0.1),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_matches_arviz(name):
    ary = _cases()[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = {
            "r_hat": float(az.rhat(ary)),
            "ess_bulk": float(az.ess(ary, method="bulk")),
            "ess_tail": float(az.ess(ary, method="tail")),
            "mcse_mean": float(az.mcse(ary, method="mean")),
        }
        got = {
            "r_hat": diagnostics.r_hat(ary),
            "ess_bulk": diagnostics.ess_bulk(ary),
            "ess_tail": diagnostics.ess_tail(ary),
            "mcse_mean": diagnostics.mcse_mean(ary),
        }
    for key, value in expected.items():
        if np.isnan(value):
            assert np.isnan(got[key]), (name, key, got[key])
        else:
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, key, got[key], value)


def test_stuck_chain_is_flagged():
    assert diagnostics.r_hat(_cases()["stuck_chain"]) > 1.5
    assert diagnostics.r_hat(_cases()["healthy"]) < 1.01


def test_bfmi_matches_arviz():
    rng = np.random.default_rng(3)
    energy = np.cumsum(rng.standard_normal((4, 500)), axis=1) * 0.1 + rng.standard_normal((4, 500))
    np.testing.assert_allclose(diagnostics.bfmi(energy), az.bfmi(energy), rtol=1e-12)


def test_fit_diagnostics_equal_arviz_on_its_draws(article_data, small_config):
    """The summary table's ESS, R-hat and MCSE are ArviZ's on the same posterior."""
    from glmm_model import fit

    article_fit = fit(article_data, "CG", small_config)
    idata = article_fit.idata
    summary = az.summary(idata, var_names=["beta0", "s"], kind="diagnostics", round_to="none")
    rows = {r["parameter"]: r for r in article_fit.posterior_summary.iter_rows(named=True)}
    for name in ("beta0", "s"):
        assert rows[name]["ess_bulk"] == pytest.approx(summary.loc[name, "ess_bulk"], rel=1e-9)
        assert rows[name]["ess_tail"] == pytest.approx(summary.loc[name, "ess_tail"], rel=1e-9)
        assert rows[name]["r_hat"] == pytest.approx(summary.loc[name, "r_hat"], rel=1e-9)
        assert rows[name]["mcse_mean"] == pytest.approx(summary.loc[name, "mcse_mean"], rel=1e-9)
    bfmi = float(np.min(az.bfmi(idata)))
    assert article_fit.diagnostics["min_bfmi"][0] == pytest.approx(bfmi, rel=1e-12)
