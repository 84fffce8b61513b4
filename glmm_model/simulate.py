"""Simulated experiments, for tests, benchmarks and the demo warehouse.

``from_model``: users drawn from the GLMM itself (lognormal-Poisson), with known
parameters to recover. ``article_counts``: the source article's data-generating
process (negative binomial with n=10 and intensity 1 + lift in the test group).
"""
from __future__ import annotations

import numpy as np
import polars as pl


def from_model(n_users: int, mean: float, betas, s: float, seed: int, exposure: bool = False, split=None,
               sizes=None):
    """Users of ``len(betas)`` arms named v0 (control), v1, ...; returns (frame, true parameters).

    Users are assigned at random with probabilities ``split`` (default equal), or, with
    ``sizes`` (users per arm, summing to ``n_users``), exactly that many to each arm.
    ``mean`` is the control's expected count per user, ``exp(beta0 + s²/2)``;
    ``betas`` starts with the control's 0. With ``exposure``, users get exposures
    uniform in [0.5, 3] (one decimal), entering as a log offset.
    """
    rng = np.random.default_rng(seed)
    betas = np.asarray(betas, dtype=float)
    if sizes is not None:
        if len(sizes) != len(betas) or sum(sizes) != n_users:
            raise ValueError(f"sizes {sizes} must give one count per arm summing to {n_users}")
        arm = np.repeat(np.arange(len(betas)), sizes)
    else:
        arm = rng.choice(len(betas), size=n_users, p=split)
    beta0 = float(np.log(mean) - s**2 / 2)
    expo = rng.uniform(0.5, 3.0, n_users).round(1) if exposure else np.ones(n_users)
    eta = beta0 + betas[arm] + np.log(expo) + rng.normal(0.0, s, n_users)
    data = {"variant": np.char.add("v", arm.astype(str)), "cv_count": rng.poisson(np.exp(eta))}
    if exposure:
        data["exposure"] = expo
    return pl.DataFrame(data), {"beta0": beta0, "beta": betas[1:], "s": s}


def article_counts(rng: np.random.Generator, n_users: int, intensity_lift) -> np.ndarray:
    """Counts as the article draws them: NegBin(n=10, p=1/(1+intensity)), intensity = 1 + lift."""
    intensity = 1.0 + np.asarray(intensity_lift, dtype=float) * np.ones(n_users)
    return rng.negative_binomial(n=10, p=1.0 / (1.0 + intensity), size=n_users)


def with_pre_period(n_users: int, mean: float, betas, s: float, drift: float, seed: int,
                    no_history_share: float = 0.0, no_history_shift: float = 0.0):
    """Users of ``len(betas)`` arms (v0 the control) with the same metric's count in a pre-period
    of equal length: each user's log-rate ``r_i ~ Normal(0, s)`` is shared by both periods, the
    pre-period's moved by ``drift_i ~ Normal(0, drift)`` (users change between the periods).
    A share ``no_history_share`` of users are new (``pre_cv_count`` NULL), their rate shifted by
    ``no_history_shift`` on the log scale. Returns (frame, true parameters)."""
    rng = np.random.default_rng(seed)
    betas = np.asarray(betas, dtype=float)
    arm = rng.choice(len(betas), size=n_users)
    beta0 = float(np.log(mean) - s**2 / 2)
    r = rng.normal(0.0, s, n_users)
    new = rng.random(n_users) < no_history_share
    r = r + np.where(new, no_history_shift, 0.0)
    pre = rng.poisson(np.exp(beta0 + r + rng.normal(0.0, drift, n_users))).astype(float)
    pre[new] = np.nan
    data = {"variant": np.char.add("v", arm.astype(str)), "cv_count": rng.poisson(np.exp(beta0 + betas[arm] + r)),
            "pre_cv_count": pre}
    return pl.DataFrame(data).with_columns(pl.col("pre_cv_count").fill_nan(None)), \
        {"beta0": beta0, "beta": betas[1:], "s": s}
